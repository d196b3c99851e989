"""Instrument and sample profiles (mdxrd.xrd.patterns) against the physics: Caglioti and Scherrer
widths, K-alpha2 positions and intensities from Bragg's law, area preservation, shifts,
background, noise, and one pattern against xrayutilities' pseudo-Voigt."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mdxrd.xrd import Instrument, Reflections, lorentz_polarization, powder_pattern, two_theta_grid
from mdxrd.xrd.patterns import KALPHA_DOUBLETS, kernel_settings, observed_pattern, tch_pseudo_voigt

LAMBDA = 1.5406


def sticks(two_theta: np.ndarray, wavelength: float = LAMBDA) -> Reflections:
    """Bragg reflections of unit intensity at the given angles (degrees), computed at ``wavelength``."""
    tt = np.asarray(two_theta, dtype=np.float64)
    n = tt.size
    return Reflections(two_theta=tt, d_spacing=wavelength / (2.0 * np.sin(np.radians(tt / 2.0))),
                       hkl=np.zeros((n, 3), dtype=np.int64), multiplicity=np.ones(n, dtype=np.int64),
                       intensity=np.ones(n), is_bragg=np.ones(n, dtype=bool))


def measured_fwhm(grid: np.ndarray, y: np.ndarray, center: float, half_window: float) -> float:
    """FWHM of the peak near ``center``: linear interpolation of the half-maximum crossings."""
    sel = np.flatnonzero(np.abs(grid - center) < half_window)
    x, v = grid[sel], y[sel]
    top = int(np.argmax(v))
    half = v[top] / 2.0
    left = top - int(np.argmax(v[top::-1] < half))
    right = top + int(np.argmax(v[top:] < half))
    x_left = np.interp(half, [v[left], v[left + 1]], [x[left], x[left + 1]])
    x_right = np.interp(half, [v[right], v[right - 1]], [x[right], x[right - 1]])
    return float(x_right - x_left)


def area(grid: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    sel = (grid >= lo) & (grid <= hi)
    return float(y[sel].sum() * (grid[1] - grid[0]))


POSITIONS = np.arange(15.0, 140.0, 12.5)  # 15 ... 137.5 degrees


def test_fwhm_follows_caglioti() -> None:
    u, v, w = 0.02, -0.01, 0.005  # deg^2
    inst = Instrument(sigma_deg=None, caglioti=(u, v, w))
    grid = two_theta_grid(8.0, 145.0, 0.001)
    y, _ = powder_pattern(sticks(POSITIONS), np.ones(POSITIONS.size), grid, LAMBDA, inst)
    for tt in POSITIONS:
        t = math.tan(math.radians(tt / 2))
        expected = math.sqrt(u * t * t + v * t + w)
        assert measured_fwhm(grid, y, tt, 3.0) == pytest.approx(expected, rel=2e-3), tt
    # the widths really grow: 137.5 deg is > 5x wider than 15 deg
    assert measured_fwhm(grid, y, 137.5, 3) > 5 * measured_fwhm(grid, y, 15.0, 3)


@pytest.mark.parametrize("strain", [0.0, 0.002])
def test_fwhm_follows_scherrer_and_williamson_hall(strain: float) -> None:
    size_nm, k = 20.0, 0.9
    inst = Instrument(sigma_deg=1e-4, size_nm=size_nm, scherrer_k=k, strain=strain)
    grid = two_theta_grid(2.0, 160.0, 0.002)
    for tt in POSITIONS:  # one peak at a time: Lorentzian tails of neighbours would lift the half maximum
        y, _ = powder_pattern(sticks(np.array([tt])), np.ones(1), grid, LAMBDA, inst)
        theta = math.radians(tt / 2)
        scherrer = math.degrees(k * LAMBDA / (size_nm * 10.0 * math.cos(theta)))  # K lambda / (L cos theta)
        expected = scherrer + math.degrees(4 * strain * math.tan(theta))
        assert measured_fwhm(grid, y, tt, 5.0) == pytest.approx(expected, rel=3e-3), tt


def test_tch_pseudo_voigt_limits_and_voigt_width() -> None:
    from scipy.special import voigt_profile

    h, eta = tch_pseudo_voigt(np.array([0.2, 0.0, 0.2]), np.array([0.0, 0.3, 0.1]))
    np.testing.assert_allclose(h[:2], [0.2, 0.3], rtol=1e-12)
    np.testing.assert_allclose(eta[:2], [0.0, 1.0], atol=1e-4)
    # the FWHM of the true Voigt function of H_G = 0.2, H_L = 0.1, to the TCH approximation's accuracy
    # (< 1 %; Ida, Ando & Toraya, J. Appl. Cryst. 33, 1311 (2000))
    x = np.linspace(-1, 1, 200001)
    v = voigt_profile(x, 0.2 / (2 * math.sqrt(2 * math.log(2))), 0.05)
    above = x[v >= v.max() / 2]
    assert h[2] == pytest.approx(above[-1] - above[0], rel=1e-2)


def test_kalpha2_sits_where_bragg_puts_it_with_half_intensity() -> None:
    lam1, lam2 = (line for line, _ in KALPHA_DOUBLETS["CuKa12"])
    assert (lam1, lam2) == (1.5406, 1.54439)
    inst = Instrument(wavelength="CuKa12", sigma_deg=0.004)
    positions = np.array([20.0, 45.0, 70.0, 95.0, 120.0, 140.0])
    refl = sticks(positions, lam1)
    grid = two_theta_grid(10.0, 150.0, 0.002)
    y, _ = powder_pattern(refl, np.ones(positions.size), grid, lam1, inst)
    for tt1, d in zip(positions, refl.d_spacing):
        tt2 = math.degrees(2 * math.asin(lam2 / (2 * d)))  # Bragg's law for K-alpha2
        assert tt2 - tt1 > 0.05 * math.tan(math.radians(tt1 / 2))  # resolved
        half = min(0.5 * (tt2 - tt1), 0.03)  # >= 6 sigma: the other line's tail is not in the window
        a1, a2 = area(grid, y, tt1 - half, tt1 + half), area(grid, y, tt2 - half, tt2 + half)
        sel2 = np.abs(grid - tt2) < half
        centroid2 = float((grid[sel2] * y[sel2]).sum() / y[sel2].sum())
        assert centroid2 == pytest.approx(tt2, abs=2e-4)
        lp = lorentz_polarization(np.radians(np.array([tt1, tt2]) / 2))
        assert a1 == pytest.approx(1.0, rel=1e-3)  # K-alpha1 keeps the reflection's intensity
        assert a2 / a1 == pytest.approx(0.5 * lp[1] / lp[0], rel=2e-3)  # half, times LP at its own angle
        assert a2 / a1 == pytest.approx(0.5, rel=0.03)  # LP differs by up to 2.3 % between the lines (140 deg)


CONDITIONS = {
    "gauss": Instrument(sigma_deg=0.05),
    "narrow": Instrument(sigma_deg=0.004),
    "caglioti_tch": Instrument(sigma_deg=None, caglioti=(0.01, -0.005, 0.004), lorentzian=(0.02, 0.01)),
    "eta": Instrument(sigma_deg=None, caglioti=(0.0, 0.0, 0.01), eta=0.6, size_nm=50.0),
    "size_strain_doublet": Instrument(wavelength="CuKa12", sigma_deg=0.02, size_nm=30.0, strain=0.001),
    "mono_doublet": Instrument(wavelength="MoKa12", sigma_deg=0.02, monochromator_two_theta_deg=26.6),
}


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_integrated_intensity_is_preserved(name: str) -> None:
    inst = CONDITIONS[name]
    positions = np.array([60.0, 73.3, 81.7, 95.0])
    lam0 = min(line for line, _ in inst.lines)
    refl = sticks(positions, lam0)
    inten = np.array([1.0, 2.0, 0.5, 3.0])
    grid = two_theta_grid(0.5, 179.5, 0.01)
    y, bragg = powder_pattern(refl, inten, grid, lam0, inst)
    np.testing.assert_array_equal(y, bragg)  # no diffuse reflections
    lp0 = lorentz_polarization(np.radians(positions / 2))
    expected = 0.0
    for lam, w in inst.lines:
        theta = np.arcsin(lam / (2 * refl.d_spacing))
        expected += float((w * inten * lorentz_polarization(theta, inst.monochromator_two_theta_deg) / lp0).sum())
    assert y.sum() * 0.01 == pytest.approx(expected, rel=1e-6)
    assert (y >= 0).all()


def test_zero_shift_and_specimen_displacement() -> None:
    z, s, r = 0.05, 0.1, 200.0
    inst = Instrument(sigma_deg=0.05, zero_shift_deg=z, displacement_mm=s, goniometer_radius_mm=r)
    positions = np.array([30.0, 90.0, 130.0])
    grid = two_theta_grid(20.0, 140.0, 0.002)
    y, _ = powder_pattern(sticks(positions), np.ones(3), grid, LAMBDA, inst)
    for tt in positions:
        shift = z - math.degrees(2 * s * math.cos(math.radians(tt / 2)) / r)  # Klug & Alexander
        sel = np.abs(grid - tt) < 1.0
        assert float((grid[sel] * y[sel]).sum() / y[sel].sum()) == pytest.approx(tt + shift, abs=1e-5)


def test_background_is_chebyshev_of_the_maximum() -> None:
    grid = two_theta_grid(10.0, 90.0, 0.02)
    y, _ = powder_pattern(sticks(np.array([30.0, 60.0])), np.ones(2), grid, LAMBDA, Instrument(sigma_deg=0.1))
    coeff = (0.05, -0.02, 0.01)
    out = observed_pattern(Instrument(sigma_deg=0.1, background=coeff), y, grid)
    x = 2 * (grid - 10.0) / 80.0 - 1
    expected = y.max() * (0.05 - 0.02 * x + 0.01 * (2 * x * x - 1))  # T0, T1, T2
    np.testing.assert_allclose(out - y, expected, rtol=1e-12, atol=1e-12 * y.max())
    with pytest.raises(ValueError, match="negative"):
        Instrument(background=(0.01, 0.05)).check((10.0, 90.0))


def test_noise_is_poisson_and_reproducible_by_seed() -> None:
    grid = two_theta_grid(10.0, 90.0, 0.02)
    y = np.full(grid.size, 2.0)
    y[2000] = 4.0
    inst = Instrument(noise_counts=10000.0, noise_seed=7)
    a, b = observed_pattern(inst, y, grid), observed_pattern(inst, y, grid)
    np.testing.assert_array_equal(a, b)  # same seed, same pattern: same noise
    other = observed_pattern(Instrument(noise_counts=10000.0, noise_seed=8), y, grid)
    assert not np.array_equal(a, other)
    # counts = y * 10000 / 4 = 5000 on the flat part: relative sd 1 / sqrt(5000)
    rel = a[:1900] / 2.0 - 1.0
    assert abs(rel.mean()) < 4 / math.sqrt(5000 * 1900)
    assert rel.std() == pytest.approx(1 / math.sqrt(5000), rel=0.1)
    # two rows of one call get different noise
    two = observed_pattern(inst, np.stack([y, y * (1 + 1e-9)]), grid)
    assert not np.array_equal(two[0] - y, two[1] - y)


def test_pattern_agrees_with_xrayutilities_pseudo_voigt() -> None:
    xu_functions = pytest.importorskip("xrayutilities.math.functions")
    from pymatgen.core import Lattice, Structure

    from mdxrd.xrd import diffract_structure

    u, v, w, eta = 0.004, -0.002, 0.003, 0.5
    inst = Instrument(sigma_deg=None, caglioti=(u, v, w), eta=eta)
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.4307), ["Si"], [[0, 0, 0]])
    grid = two_theta_grid(10.0, 140.0, 0.005)
    lam, ext = kernel_settings([inst], (10.0, 140.0))
    refl = diffract_structure(si, wavelength=lam, two_theta_range=ext)
    ours, _ = powder_pattern(refl, refl.intensity, grid, lam, inst)
    # Conventions: our eta (as TCH's, GSAS-II's, FullProf's) weighs unit-AREA Gaussian and Lorentzian;
    # xrayutilities' ETA weighs unit-HEIGHT ones. Same FWHM: the Lorentzian's area fraction is
    # ETA A_L / (ETA A_L + (1 - ETA) A_G), A_L / A_G = sqrt(pi ln 2), so ETA = eta / (eta + (1 - eta) r).
    r = math.sqrt(math.pi * math.log(2))
    eta_xu = eta / (eta + (1 - eta) * r)
    theirs = np.zeros_like(grid)
    for tt, inten in zip(refl.two_theta, refl.intensity):
        t = math.tan(math.radians(tt / 2))
        fwhm = math.sqrt(u * t * t + v * t + w)
        unit = xu_functions.PseudoVoigt1dArea(tt, fwhm, 1.0, 0.0, eta_xu)  # area of amplitude 1
        theirs += xu_functions.PseudoVoigt1d(grid, tt, fwhm, inten / unit, 0.0, eta_xu)
    # Our Lorentzian is integrated over +-50 FWHM and renormalized (tails beyond: 0.64 % of its area),
    # and bin-averaged; xrayutilities' is evaluated at the points, with infinite tails.
    top = theirs.max()
    assert np.abs(ours - theirs).max() < 5e-3 * top
    for tt in refl.two_theta[refl.intensity > 1e-3 * refl.intensity.max()]:
        if 12.0 < tt < 138.0:
            sel = np.abs(grid - tt) < 0.3
            assert ours[sel].max() == pytest.approx(theirs[sel].max(), rel=5e-3)
    assert ours.sum() == pytest.approx(theirs.sum(), rel=5e-3)


def test_kernel_settings_cover_every_line() -> None:
    cu = Instrument(wavelength="CuKa12", sigma_deg=0.1)
    mo = Instrument(name="mo", wavelength="MoKa1", sigma_deg=0.1)
    lam, (lo, hi) = kernel_settings([cu, mo], (10.0, 90.0))
    assert lam == 0.70930  # the shortest line
    g = lambda tt, wl: 2 * math.sin(math.radians(tt / 2)) / wl  # noqa: E731
    assert g(lo, lam) <= g(10.0 - 0.6, 0.70930) and g(hi, lam) >= g(90.0, 1.54439)
    assert g(hi, lam) >= g(90.0 + 0.5, 0.70930)


def test_bad_conditions_are_named() -> None:
    with pytest.raises(ValueError, match="'x'.*caglioti"):
        Instrument(name="x", caglioti=(1.0, 2.0))
    with pytest.raises(ValueError, match="either sigma_deg or caglioti"):
        Instrument(name="x", sigma_deg=0.1, caglioti=(0.0, 0.0, 0.01))
    with pytest.raises(ValueError, match="CuKa12"):
        Instrument(wavelength="CuKalpha12")
    with pytest.raises(ValueError, match="unknown key.*sigma.*allowed"):
        Instrument.from_dict({"name": "x", "sigma": 0.1})
    with pytest.raises(ValueError, match="<= 0 at 2theta"):
        Instrument(sigma_deg=None, caglioti=(0.0, -0.1, 0.001)).check((10.0, 90.0))
    assert Instrument.from_dict({"name": "c", "caglioti": [0, 0, 0.01]}, {"sigma_deg": 0.3}).sigma_deg is None


def test_monochromator_polarization() -> None:
    theta = np.radians(np.array([10.0, 30.0, 55.0]))
    plain = lorentz_polarization(theta)
    np.testing.assert_allclose(lorentz_polarization(theta, 0.0), plain, rtol=1e-14)  # 2theta_M = 0: unpolarized
    # 2theta_M = 90 deg: cos^2 2theta_M = 0, the polarization term is constant (2 in this normalization)
    np.testing.assert_allclose(lorentz_polarization(theta, 90.0), 2 / (np.sin(theta) ** 2 * np.cos(theta)), rtol=1e-12)
    m = math.cos(math.radians(26.6)) ** 2  # graphite (002), Cu K-alpha (Azaroff 1955)
    expected = 2 * (1 + m * np.cos(2 * theta) ** 2) / (1 + m) / (np.sin(theta) ** 2 * np.cos(theta))
    np.testing.assert_allclose(lorentz_polarization(theta, 26.6), expected, rtol=1e-12)
