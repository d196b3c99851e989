r"""Instrument and sample profiles: from reflections to powder patterns on a 2theta grid.

A pattern is made from the reflections of :mod:`mdxrd.xrd.reflections` (computed at a
wavelength :math:`\lambda_0`) for one :class:`Instrument`, a named set of
instrument and sample conditions. Step by step, for each reflection of spacing
:math:`d`:

1. Source lines. A line :math:`j` has wavelength :math:`\lambda_j` and relative
   intensity :math:`w_j`: one line of weight 1, or a K-alpha doublet
   (:data:`KALPHA_DOUBLETS`, ``"CuKa12"``) of K-alpha1 (weight 1) and K-alpha2
   (weight :data:`KALPHA2_RATIO` = 1/2: the 2:1 ratio of the statistical weights of
   the 2p3/2 and 2p1/2 levels, Burger-Dorgelo rule; wavelengths of International
   Tables for Crystallography Vol. C, Table 4.2.2.1). Bragg's law puts the
   reflection at :math:`2\theta_j = 2\arcsin(\lambda_j / 2d)`; since :math:`|F|^2`
   depends on :math:`\sin\theta/\lambda = 1/2d` only, its intensity is
   :math:`I_j = w_j I_0\, LP(\theta_j) / LP(\theta_0)` (LP, optionally with a
   monochromator: :func:`mdxrd.xrd.reflections.lorentz_polarization`).
2. Widths (FWHM, degrees :math:`2\theta`) at :math:`\theta_j`:

   * instrument Gaussian: constant :math:`2\sqrt{2\ln 2}\,\sigma`, or Caglioti's
     :math:`H_G^2 = U\tan^2\theta + V\tan\theta + W` (Caglioti, Paoletti & Ricci,
     Nucl. Instrum. 3, 223 (1958); FWHM squared, degrees squared. GSAS-II's U, V, W
     are the Gaussian *variance* in centidegrees squared: theirs = ours
     :math:`\times 10^4 / (8 \ln 2)`);
   * instrument Lorentzian: :math:`X/\cos\theta + Y\tan\theta` (Thompson, Cox &
     Hastings, J. Appl. Cryst. 20, 79 (1987); GSAS-II's X, Y, here in degrees), or a
     fixed mixing :math:`\eta` of the instrument profile instead;
   * crystallite size (Scherrer, Nachr. Ges. Wiss. Goettingen 1918, 98; Langford &
     Wilson, J. Appl. Cryst. 11, 102 (1978)): :math:`K\lambda_j / (L\cos\theta)`;
   * microstrain (Stokes & Wilson, Proc. Phys. Soc. 56, 174 (1944)):
     :math:`4\varepsilon\tan\theta`, :math:`\varepsilon = \Delta d/d`.

   Size and strain broadening are Lorentzian and add linearly, as in the
   Williamson-Hall analysis (Acta Metall. 1, 22 (1953)) and GSAS-II's default
   (size and mustrain mixing 1).
3. Profile: the Voigt function of :math:`H_G` and :math:`H_L` (the sum of the
   Lorentzian widths) as the Thompson-Cox-Hastings pseudo-Voigt,
   :math:`(1-\eta)\,G(H) + \eta\, L(H)` with
   :math:`H = (H_G^5 + 2.69269 H_G^4 H_L + 2.42843 H_G^3 H_L^2 + 4.47163 H_G^2 H_L^3
   + 0.07842 H_G H_L^4 + H_L^5)^{1/5}` and :math:`\eta = 1.36603\,q - 0.47719\,q^2
   + 0.11116\,q^3`, :math:`q = H_L/H` (TCH 1987). With a fixed instrument mixing
   :math:`\eta_i` the instrument profile :math:`(1-\eta_i)G(H_G) + \eta_i L(H_G)`
   convolved with the sample Lorentzian :math:`H_s` is
   :math:`(1-\eta_i)\,\mathrm{TCH}(H_G, H_s) + \eta_i\, L(H_G + H_s)`
   (Lorentzians convolve by adding widths). Every Gaussian and Lorentzian has unit
   area on the grid (:func:`broaden_components`), so every profile keeps the
   reflection's intensity.
4. Position: :math:`2\theta_{obs} = 2\theta_j + Z - (2 s\cos\theta / R)\,(180/\pi)`,
   zero shift :math:`Z` and specimen displacement :math:`s` on a goniometer of radius
   :math:`R` (Klug & Alexander, *X-ray Diffraction Procedures*, 2nd ed., 1974,
   sec. 5-2; positive :math:`s` moves peaks to lower angles).
5. Thermal diffuse scattering of a supercell's diffuse reflections: for each line
   the smooth continuum of :func:`diffuse_continuum`, then the same profile, as
   one pseudo-peak per grid point.
6. Background: :math:`y_{max}\sum_k c_k T_k(x)`, :math:`x = 2(2\theta - 2\theta_{min})
   /(2\theta_{max} - 2\theta_{min}) - 1`, Chebyshev polynomials of the first kind
   (GSAS-II's and TOPAS's background function), :math:`y_{max}` the pattern's
   maximum before background.
7. Counting noise: :math:`y_{obs} = \mathrm{Poisson}(y\,s)/s`, :math:`s = N/\max y`:
   the pattern's maximum is :math:`N` counts. The random stream is seeded by the
   condition's seed and a hash of the pattern without noise, so the same seed and
   the same pattern give the same noise, and two patterns never share it.

Steps 1-5 make a pattern per snapshot (:func:`powder_pattern`); the run's average is
their mean; 6 and 7 are applied to each pattern written (:func:`observed_pattern`):
noise on the average is the noise of one measurement of the time-averaged crystal.

The thermal diffuse scattering as a continuum (:func:`diffuse_continuum`). A
supercell of volume :math:`V` samples the diffuse intensity, a continuous function of
:math:`\mathbf G`, only on its own reciprocal lattice: one point per reciprocal cell of
volume :math:`1/V`. Drawn as sharp reflections those samples look like superlattice
peaks that no measured pattern has. A powder sees the spherical average of the
diffuse intensity at each :math:`q = |\mathbf G|`; it is estimated as a smooth function
of :math:`q` by kernel regression of the samples (mean intensity per point, LP factor
taken out) with a Gaussian kernel as wide as the radius :math:`r = (3/(4\pi V))^{1/3}`
of the sphere of one point's reciprocal volume (Debye's equal-volume sphere; Debye,
Ann. Phys. 344, 789 (1912)), multiplied by the number of diffuse points per unit
:math:`q`, :math:`4\pi q^2 V(1 - f_B)`, and by LP(q). Its integral equals the samples'
summed intensity. Bragg reflections stay sharp (instrument and sample profile only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdxrd.xrd.reflections import WAVELENGTHS, Reflections, lorentz_polarization, resolve_wavelength

#: Intensity of K-alpha2 relative to K-alpha1 (2p1/2 : 2p3/2 statistical weights, 1 : 2).
KALPHA2_RATIO: float = 0.5

#: K-alpha1 + K-alpha2 doublets by name: ((lambda_Ka1, 1.0), (lambda_Ka2, 0.5)), Angstrom.
KALPHA_DOUBLETS: dict[str, tuple[tuple[float, float], ...]] = {
    f"{el}Ka12": ((WAVELENGTHS[f"{el}Ka1"], 1.0), (WAVELENGTHS[f"{el}Ka2"], KALPHA2_RATIO))
    for el in ("Cu", "Mo", "Co", "Fe", "Cr", "Ag")
}

#: Names a condition's ``wavelength`` accepts (single lines and doublets).
SOURCE_NAMES: tuple[str, ...] = (*WAVELENGTHS, *KALPHA_DOUBLETS)

FWHM_PER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Half reach of a Lorentzian profile, in FWHM: it is integrated over +-50 FWHM and
#: renormalized to unit area (the tails beyond hold 0.64 % of a Lorentzian's area).
LORENTZ_REACH_FWHM: float = 50.0

#: Half reach of a Gaussian profile, in standard deviations.
GAUSS_REACH_SIGMA: float = 6.0


def line_spectrum(wavelength: float | str) -> tuple[tuple[float, float], ...]:
    """Source lines of a wavelength setting: ((lambda_A, relative intensity), ...).

    Args:
        wavelength: A number in Angstrom, a name of :data:`mdxrd.xrd.reflections.WAVELENGTHS`
            (one line) or of :data:`KALPHA_DOUBLETS` (K-alpha1 weight 1, K-alpha2 weight 1/2).

    Raises:
        ValueError: unknown name or non-positive value (the message lists the names).
    """
    if isinstance(wavelength, str) and wavelength in KALPHA_DOUBLETS:
        return KALPHA_DOUBLETS[wavelength]
    try:
        return ((resolve_wavelength(wavelength), 1.0),)
    except ValueError:
        raise ValueError(f"unknown wavelength {wavelength!r}: give a number in Angstrom or one of "
                         f"{', '.join(SOURCE_NAMES)}") from None


def tch_pseudo_voigt(fwhm_gauss: np.ndarray, fwhm_lorentz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FWHM and Lorentzian fraction of the pseudo-Voigt that approximates a Voigt function.

    Thompson, Cox & Hastings, J. Appl. Cryst. 20, 79 (1987) (module docstring, step 3); the
    FWHM is the Voigt function's to better than 1 % (Ida, Ando & Toraya, J. Appl. Cryst. 33,
    1311 (2000)). Both components of the result have unit area (the Rietveld convention, as
    GSAS-II and FullProf; xrayutilities' ``PseudoVoigt1d`` mixes unit-height ones instead).

    Args:
        fwhm_gauss, fwhm_lorentz: (n,) FWHM of the Gaussian and Lorentzian, >= 0, same units.

    Returns:
        (fwhm, eta): (n,) float64; eta = 0 for a pure Gaussian, 1 for a pure Lorentzian.
    """
    g = np.asarray(fwhm_gauss, dtype=np.float64)
    lor = np.asarray(fwhm_lorentz, dtype=np.float64)
    h = (g**5 + 2.69269 * g**4 * lor + 2.42843 * g**3 * lor**2 + 4.47163 * g**2 * lor**3
         + 0.07842 * g * lor**4 + lor**5) ** 0.2
    q = np.divide(lor, h, out=np.zeros_like(h), where=h > 0)
    return h, np.clip(1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3, 0.0, 1.0)


def _number(name: str, field: str, value: Any, *, low: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"instrument {name!r}: {field} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or (low is not None and (x <= low if strict else x < low)):
        bound = f" {'>' if strict else '>='} {low:g}" if low is not None else ""
        raise ValueError(f"instrument {name!r}: {field} must be a finite number{bound}, got {value!r}")
    return x


def _numbers(name: str, field: str, value: Any, n: int | None) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
        what = f"a list of {n} numbers" if n is not None else "a list of numbers"
        raise ValueError(f"instrument {name!r}: {field} must be {what}, got {value!r}")
    return tuple(_number(name, field, v) for v in value)


@dataclass(frozen=True)
class Instrument:
    """One instrument and sample condition (module docstring). Angles in degrees 2theta.

    Attributes:
        name: Label of the condition (the dataset's ``instrument`` column).
        wavelength: Angstrom, a line name (``"CuKa1"``) or a doublet (``"CuKa12"``).
        sigma_deg: Constant Gaussian standard deviation, degrees; None when ``caglioti`` is given.
        caglioti: (U, V, W), degrees^2: Gaussian FWHM^2 = U tan^2 theta + V tan theta + W.
        lorentzian: (X, Y), degrees: instrument Lorentzian FWHM = X / cos theta + Y tan theta.
        eta: Fixed Lorentzian fraction of the instrument profile, in [0, 1] (instead of ``lorentzian``).
        size_nm: Crystallite size L, nm (Scherrer); None: no size broadening.
        scherrer_k: Scherrer constant K (0.9 for spherical crystallites, FWHM; Langford & Wilson 1978).
        strain: Microstrain epsilon = Delta d / d (dimensionless).
        zero_shift_deg: Zero shift Z, degrees.
        displacement_mm: Specimen displacement s, mm (positive: peaks move to lower angles).
        goniometer_radius_mm: Goniometer radius R, mm.
        background: Chebyshev coefficients c_0, c_1, ..., as fractions of the pattern's maximum.
        noise_counts: Poisson noise with the pattern's maximum at this many counts; None: no noise.
        noise_seed: Seed of the noise.
        monochromator_two_theta_deg: 2theta_M of a diffracted-beam monochromator; None: none.
    """

    name: str = "default"
    wavelength: float | str = "CuKa1"
    sigma_deg: float | None = 0.3
    caglioti: tuple[float, float, float] | None = None
    lorentzian: tuple[float, float] | None = None
    eta: float | None = None
    size_nm: float | None = None
    scherrer_k: float = 0.9
    strain: float = 0.0
    zero_shift_deg: float = 0.0
    displacement_mm: float = 0.0
    goniometer_radius_mm: float = 240.0
    background: tuple[float, ...] = ()
    noise_counts: float | None = None
    noise_seed: int = 0
    monochromator_two_theta_deg: float | None = None

    def __post_init__(self) -> None:
        n = self.name
        if not isinstance(n, str) or not n:
            raise ValueError(f"instrument name must be a non-empty string, got {n!r}")
        line_spectrum(self.wavelength)  # raises for unknown names
        if (self.sigma_deg is None) == (self.caglioti is None):
            raise ValueError(f"instrument {n!r}: give either sigma_deg or caglioti (U, V, W), not both")
        if self.sigma_deg is not None:
            _number(n, "sigma_deg", self.sigma_deg, low=0.0, strict=True)
        if self.caglioti is not None:
            object.__setattr__(self, "caglioti", _numbers(n, "caglioti", self.caglioti, 3))
        if self.lorentzian is not None:
            object.__setattr__(self, "lorentzian", _numbers(n, "lorentzian", self.lorentzian, 2))
            if self.eta is not None:
                raise ValueError(f"instrument {n!r}: give either eta or lorentzian (X, Y), not both")
        if self.eta is not None and not 0.0 <= _number(n, "eta", self.eta) <= 1.0:
            raise ValueError(f"instrument {n!r}: eta must be in [0, 1], got {self.eta!r}")
        if self.size_nm is not None:
            _number(n, "size_nm", self.size_nm, low=0.0, strict=True)
        _number(n, "scherrer_k", self.scherrer_k, low=0.0, strict=True)
        _number(n, "strain", self.strain, low=0.0)
        _number(n, "zero_shift_deg", self.zero_shift_deg)
        _number(n, "displacement_mm", self.displacement_mm)
        _number(n, "goniometer_radius_mm", self.goniometer_radius_mm, low=0.0, strict=True)
        object.__setattr__(self, "background", _numbers(n, "background", list(self.background), None))
        if self.noise_counts is not None:
            _number(n, "noise_counts", self.noise_counts, low=0.0, strict=True)
        if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, (int, np.integer)) or self.noise_seed < 0:
            raise ValueError(f"instrument {n!r}: noise_seed must be an integer >= 0, got {self.noise_seed!r}")
        if self.monochromator_two_theta_deg is not None:
            m = _number(n, "monochromator_two_theta_deg", self.monochromator_two_theta_deg)
            if not 0.0 <= m < 180.0:
                raise ValueError(f"instrument {n!r}: monochromator_two_theta_deg must be in [0, 180), got {m!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> Instrument:
        """Build a condition from a config entry; ``defaults`` (e.g. ``wavelength``, ``sigma_deg``)
        fill the keys the entry leaves out (``sigma_deg`` only when it gives no ``caglioti``).

        Raises:
            ValueError: unknown keys (named, with the allowed ones) or bad values (named).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"instrument {spec.get('name', '?')!r}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(fields))}")
        values = {**(defaults or {}), **spec}
        if "caglioti" in spec and "sigma_deg" not in spec:
            values["sigma_deg"] = None
        for key in ("caglioti", "lorentzian", "background"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**{k: v for k, v in values.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        """The condition as plain JSON values (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @property
    def lines(self) -> tuple[tuple[float, float], ...]:
        """((lambda_A, relative intensity), ...) of the source (:func:`line_spectrum`)."""
        return line_spectrum(self.wavelength)

    def fwhm_deg(self, two_theta_deg: np.ndarray, wavelength_A: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FWHM parts at the given angles for one source line, degrees 2theta.

        Returns:
            (gauss, lorentz_instrument, lorentz_sample): (n,) float64 each (module docstring, step 2).

        Raises:
            ValueError: a Caglioti FWHM^2 <= 0 at one of the angles.
        """
        theta = np.radians(np.asarray(two_theta_deg, dtype=np.float64) / 2.0)
        tan_t, cos_t = np.tan(theta), np.cos(theta)
        if self.caglioti is not None:
            u, v, w = self.caglioti
            fwhm2 = u * tan_t**2 + v * tan_t + w
            if np.any(~(fwhm2 > 0)):
                bad = float(np.asarray(two_theta_deg).ravel()[np.flatnonzero(~(fwhm2.ravel() > 0))[0]])
                raise ValueError(f"instrument {self.name!r}: Caglioti FWHM^2 = U tan^2 + V tan + W is <= 0 "
                                 f"at 2theta = {bad:.2f} deg")
            gauss = np.sqrt(fwhm2)
        else:
            gauss = np.full(theta.shape, FWHM_PER_SIGMA * float(self.sigma_deg))  # type: ignore[arg-type]
        lor_i = np.zeros(theta.shape)
        if self.lorentzian is not None:
            x, y = self.lorentzian
            lor_i = x / cos_t + y * tan_t
        lor_s = np.degrees(4.0 * self.strain * tan_t)
        if self.size_nm is not None:
            lor_s = lor_s + np.degrees(self.scherrer_k * wavelength_A / (10.0 * self.size_nm * cos_t))
        return gauss, lor_i, lor_s

    def components(self, two_theta_deg: np.ndarray, wavelength_A: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Profile of each peak as a sum of unit-area Gaussians and Lorentzians (module docstring, step 3).

        Returns:
            [(kind, fwhm_deg, weight), ...]: kind ``"gauss"`` or ``"lorentz"``, (n,) arrays; the
            weights of a peak sum to 1.
        """
        gauss, lor_i, lor_s = self.fwhm_deg(two_theta_deg, wavelength_A)
        if self.eta is None:
            h, eta = tch_pseudo_voigt(gauss, lor_i + lor_s)
            return [("gauss", h, 1.0 - eta), ("lorentz", h, eta)]
        h, eta = tch_pseudo_voigt(gauss, lor_s)
        e = float(self.eta)
        return [("gauss", h, (1.0 - e) * (1.0 - eta)), ("lorentz", h, (1.0 - e) * eta),
                ("lorentz", gauss + lor_s, np.full(h.shape, e))]

    def shift_deg(self, two_theta_deg: np.ndarray) -> np.ndarray:
        """Peak shift, degrees: zero shift plus specimen displacement (module docstring, step 4)."""
        theta = np.radians(np.asarray(two_theta_deg, dtype=np.float64) / 2.0)
        return self.zero_shift_deg - np.degrees(2.0 * self.displacement_mm * np.cos(theta) / self.goniometer_radius_mm)

    def reach_deg(self, two_theta_range: Sequence[float], wavelength_A: float) -> float:
        """How far (degrees) a peak outside ``two_theta_range`` can reach into it: its profile's
        half reach (6 sigma of a Gaussian, 50 FWHM of a Lorentzian) plus its shift."""
        lo, hi = (float(v) for v in two_theta_range)
        tt = np.linspace(max(lo, 0.01), min(hi, 179.0), 181)
        reach = 0.0
        for kind, fwhm, weight in self.components(tt, wavelength_A):
            if np.any(weight > 0):
                per = GAUSS_REACH_SIGMA / FWHM_PER_SIGMA if kind == "gauss" else LORENTZ_REACH_FWHM
                reach = max(reach, per * float(fwhm[weight > 0].max()))
        return reach + float(np.abs(self.shift_deg(tt)).max())

    def check(self, two_theta_range: Sequence[float]) -> None:
        """Raise ValueError (naming the condition) when a width is not positive inside the range or the
        background is negative."""
        lo, hi = (float(v) for v in two_theta_range)
        for lam, _ in self.lines:
            self.fwhm_deg(np.linspace(max(lo, 0.01), min(hi, 179.9), 721), lam)
        if self.background and np.polynomial.chebyshev.chebval(np.linspace(-1.0, 1.0, 2001), self.background).min() < 0:
            raise ValueError(f"instrument {self.name!r}: the Chebyshev background {list(self.background)} is "
                             "negative somewhere in the 2theta range")


#: The method's default condition: Cu K-alpha1, Gaussian sigma 0.3 degrees (METHOD.md step 6).
DEFAULT_INSTRUMENT = Instrument()


def as_instrument(spec: Instrument | Mapping[str, Any]) -> Instrument:
    """An :class:`Instrument` from itself or from a mapping (:meth:`Instrument.from_dict`)."""
    return spec if isinstance(spec, Instrument) else Instrument.from_dict(spec)


def kernel_settings(instruments: Sequence[Instrument], two_theta_range: Sequence[float],
                    q_margin_per_A: float = 0.0) -> tuple[float, tuple[float, float]]:
    """Wavelength and 2theta range at which to compute reflections for several conditions.

    The reflections must reach every line's pattern range widened by the profile's reach
    (:meth:`Instrument.reach_deg`) and by ``q_margin_per_A`` in |G| (the diffuse kernel's
    reach). The shortest wavelength of all lines covers the union in |G|.

    Returns:
        (wavelength_A, (two_theta_min, two_theta_max)) for :func:`mdxrd.xrd.reflections.diffract`.
    """
    lo, hi = (float(v) for v in two_theta_range)
    g_lo, g_hi, lam_k = math.inf, 0.0, math.inf
    for inst in instruments:
        for lam, _ in inst.lines:
            reach = inst.reach_deg((lo, hi), lam)
            e_lo, e_hi = max(0.0, lo - reach), min(180.0, hi + reach)
            g_lo = min(g_lo, max(0.0, float(_g_of(e_lo, lam)) - q_margin_per_A))
            g_hi = max(g_hi, float(_g_of(e_hi, lam)) + q_margin_per_A)
            lam_k = min(lam_k, lam)
    t_lo = float(_two_theta_of(g_lo, lam_k))
    t_hi = 180.0 if g_hi * lam_k >= 2.0 else float(_two_theta_of(g_hi, lam_k))
    return lam_k, (t_lo, t_hi)


def _line_reflections(inst: Instrument, lam: float, weight: float, d_spacing: np.ndarray, intensity: np.ndarray,
                      wavelength0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, two_theta_j, intensity_j) of reflections seen by line j (module docstring, step 1)."""
    x = lam / (2.0 * d_spacing)
    seen = x < 1.0
    theta_j = np.arcsin(x[seen])
    lp0 = lorentz_polarization(np.arcsin(wavelength0 / (2.0 * d_spacing[seen])))  # where the kernel put them
    ratio = weight * lorentz_polarization(theta_j, inst.monochromator_two_theta_deg) / lp0
    return seen, np.degrees(2.0 * theta_j), intensity[..., seen] * ratio


def powder_pattern(
    reflections: Reflections,
    intensity: np.ndarray,
    grid: np.ndarray,
    wavelength: float,
    instrument: Instrument = DEFAULT_INSTRUMENT,
    *,
    volume_A3: float | None = None,
    bragg_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pattern of reflections for one condition, steps 1-5 of the module docstring (no background, no noise).

    Bragg reflections get the condition's profile; diffuse ones (``is_bragg`` False) become
    :func:`diffuse_continuum` (on a grid padded by the profile's reach) and then get the
    same profile. Intensity per degree 2theta: ``sum(y) * step`` is the summed intensity
    of the lines' reflections inside the grid.

    Args:
        reflections: positions (computed at ``wavelength``), spacings, multiplicities and
            flags shared by the patterns.
        intensity: (n,) or (m, n) intensities on those reflections (LP at ``wavelength``).
        grid: (n_grid,) uniform ascending 2theta grid, degrees.
        wavelength: Angstrom, the wavelength the reflections were computed at.
        instrument: The condition.
        volume_A3: Simulation cell volume, Angstrom^3; needed when there are diffuse reflections.
        bragg_fraction: 1 / (primitive parent cells in the supercell).

    Returns:
        (total, bragg): (n_grid,) or (m, n_grid) float64; total = Bragg + diffuse.

    Raises:
        ValueError: bad grid or shapes, a width <= 0 (Caglioti), diffuse reflections without volume.
    """
    weights = np.asarray(intensity, dtype=np.float64)
    grid = _check_grid(grid)
    step = (grid[-1] - grid[0]) / (grid.size - 1)
    is_bragg = np.asarray(reflections.is_bragg, dtype=bool)
    d = np.asarray(reflections.d_spacing, dtype=np.float64)
    out_shape = weights.shape[:-1] + (grid.size,)
    bragg, diffuse = np.zeros(out_shape), np.zeros(out_shape)
    have_diffuse = bool((~is_bragg).any())
    if have_diffuse and volume_A3 is None:
        raise ValueError("powder_pattern: diffuse reflections need volume_A3")
    for lam, w in instrument.lines:
        seen, tt, inten = _line_reflections(instrument, lam, w, d, weights, wavelength)
        b = is_bragg[seen]
        if b.any():
            bragg += broaden_components(tt[b] + instrument.shift_deg(tt[b]), inten[..., b], grid,
                                        instrument.components(tt[b], lam))
        if have_diffuse and (~b).any():
            pad = int(math.ceil(instrument.reach_deg((grid[0], grid[-1]), lam) / step)) + 1
            padded = grid[0] + step * np.arange(-pad, grid.size + pad)
            padded = padded[(padded > 0.0) & (padded < 180.0)]
            cont = diffuse_continuum(tt[~b], inten[..., ~b], reflections.multiplicity[seen][~b], padded, lam,
                                     float(volume_A3), bragg_fraction,  # type: ignore[arg-type]
                                     monochromator_two_theta_deg=instrument.monochromator_two_theta_deg)
            cont2 = np.atleast_2d(cont)
            keep = cont2.max(axis=0) > 0.0
            if keep.any():
                centers = padded[keep]
                diffuse += broaden_components(centers + instrument.shift_deg(centers), cont[..., keep] * step,
                                              grid, instrument.components(centers, lam))
    return bragg + diffuse, bragg


def observed_pattern(instrument: Instrument, pattern: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Add the condition's background and counting noise to patterns (module docstring, steps 6-7).

    Args:
        instrument: The condition.
        pattern: (n_grid,) or (m, n_grid) patterns without background or noise, >= 0.
        grid: (n_grid,) the 2theta grid, degrees.

    Returns:
        Same shape, float64; the input itself when the condition has neither.

    Raises:
        ValueError: the background is negative somewhere on the grid.
    """
    y = np.asarray(pattern, dtype=np.float64)
    if not instrument.background and instrument.noise_counts is None:
        return y
    out = np.array(y, dtype=np.float64, ndmin=2, copy=True)
    if instrument.background:
        x = 2.0 * (grid - grid[0]) / (grid[-1] - grid[0]) - 1.0
        shape = np.polynomial.chebyshev.chebval(x, instrument.background)
        if shape.min() < 0.0:
            raise ValueError(f"instrument {instrument.name!r}: the Chebyshev background is negative at "
                             f"2theta = {grid[int(np.argmin(shape))]:.2f} deg")
        out += out.max(axis=1, keepdims=True) * shape
    if instrument.noise_counts is not None:
        for row in out:
            top = row.max()
            if top <= 0.0:
                continue
            scale = float(instrument.noise_counts) / top
            digest = hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=8).digest()
            rng = np.random.default_rng([int(instrument.noise_seed), int.from_bytes(digest, "little")])
            row[:] = rng.poisson(np.maximum(row, 0.0) * scale) / scale
    return out.reshape(y.shape)


def _check_grid(grid: np.ndarray) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError("grid must be a 1-D array of at least two points")
    step = (grid[-1] - grid[0]) / (grid.size - 1)
    if not step > 0 or np.max(np.abs(np.diff(grid) - step)) > 1e-6 * step:
        raise ValueError("grid must be uniform and ascending")
    return grid


def broaden_components(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    grid: np.ndarray,
    components: Sequence[tuple[str, np.ndarray, np.ndarray | float]],
) -> np.ndarray:
    """Sum of one unit-area profile per peak, scaled by its intensity; the profile a weighted
    sum of Gaussians and Lorentzians.

    A Gaussian (standard deviation = FWHM / 2 sqrt(2 ln 2)) of at least 2.5 grid steps is
    evaluated at the grid points within +-6 sigma (area exact to ~1e-9); a narrower one is
    integrated over each grid bin [x - step/2, x + step/2] (erf differences / step), so
    its area is exact wherever it sits between grid points. A Lorentzian is integrated
    over bins within +-50 FWHM and renormalized to unit area there. ``sum(y) * step``
    therefore equals ``sum(intensity)`` for peaks whose window lies inside the grid.

    Args:
        two_theta: (n,) peak positions, degrees.
        intensity: (n,) peak areas, or (m, n) for m patterns sharing positions.
        grid: (n_grid,) uniform, ascending 2theta grid, degrees.
        components: [(kind, fwhm_deg, weight)]: kind ``"gauss"`` or ``"lorentz"``, FWHM
            (n,) degrees (> 0 where weight > 0), weight (n,) or a number.

    Returns:
        (n_grid,) float64, or (m, n_grid) for 2-D ``intensity``.

    Raises:
        ValueError: non-uniform or too short grid, shape mismatch, unknown kind, FWHM <= 0.
    """
    tt = np.asarray(two_theta, dtype=np.float64).ravel()
    weights = np.asarray(intensity, dtype=np.float64)
    grid = _check_grid(grid)
    if weights.ndim not in (1, 2) or weights.shape[-1] != tt.size:
        raise ValueError(f"intensity must have shape ({tt.size},) or (m, {tt.size}), got {weights.shape}")
    step = (grid[-1] - grid[0]) / (grid.size - 1)
    n_grid = grid.size
    out = np.zeros((n_grid,) if weights.ndim == 1 else (weights.shape[0], n_grid))
    if tt.size == 0:
        return out
    x0 = float(grid[0])
    for kind, fwhm_in, weight_in in components:
        if kind not in ("gauss", "lorentz"):
            raise ValueError(f"profile component must be 'gauss' or 'lorentz', got {kind!r}")
        fwhm = np.broadcast_to(np.asarray(fwhm_in, dtype=np.float64), tt.shape)
        scale = np.broadcast_to(np.asarray(weight_in, dtype=np.float64), tt.shape)
        active = scale > 0.0
        if np.any(~(fwhm[active] > 0.0)) or not np.isfinite(fwhm[active]).all():
            raise ValueError("every profile FWHM must be finite and > 0")
        if kind == "gauss":
            width = fwhm / FWHM_PER_SIGMA
            sampled = width >= 2.5 * step
            groups = [("sampled", np.flatnonzero(active & sampled)), ("binned", np.flatnonzero(active & ~sampled))]
        else:
            width = fwhm / 2.0
            groups = [("lorentz", np.flatnonzero(active))]
        for sub_kind, members in groups:
            if members.size == 0:
                continue
            # Blocks of peaks of similar width, a few MB of work arrays each.
            members = members[np.argsort(width[members], kind="stable")]
            reach = 2.0 * LORENTZ_REACH_FWHM if sub_kind == "lorentz" else GAUSS_REACH_SIGMA
            n_win = 2.0 * reach * float(width[members].max()) / step + 3.0
            block = max(1, int(2**19 // n_win))
            for start in range(0, members.size, block):
                peaks = members[start : start + block]
                idx, val = _profile_block(sub_kind, tt[peaks], width[peaks], x0, step, n_grid)
                val *= scale[peaks][:, None]
                if weights.ndim == 1:
                    val *= weights[peaks][:, None]
                    out += np.bincount(idx.ravel(), weights=val.ravel(), minlength=n_grid)
                else:
                    from scipy.sparse import csr_matrix  # lazy: scipy.sparse 0.20 s; loaded at Snakefile parse

                    cols = np.repeat(np.arange(peaks.size), idx.shape[1])
                    kernel = csr_matrix((val.ravel(), (idx.ravel(), cols)), shape=(n_grid, peaks.size))
                    out += (kernel @ weights[:, peaks].T).T
    return out


def broaden(two_theta: np.ndarray, intensity: np.ndarray, grid: np.ndarray, sigma_deg: float = 0.3) -> np.ndarray:
    """Gaussian broadening of standard deviation ``sigma_deg`` (degrees 2theta), area preserved.

    :func:`broaden_components` with one Gaussian of FWHM 2 sqrt(2 ln 2) sigma.

    Args:
        two_theta: (n,) peak positions, degrees.
        intensity: (n,) peak areas, or (m, n) for m patterns sharing positions.
        grid: (n_grid,) uniform, ascending 2theta grid, degrees (:func:`two_theta_grid`).
        sigma_deg: Gaussian standard deviation, degrees 2theta.

    Returns:
        (n_grid,) float64, or (m, n_grid) for 2-D ``intensity``.

    Raises:
        ValueError: sigma not positive, or any error of :func:`broaden_components`.
    """
    if not (sigma_deg > 0 and math.isfinite(sigma_deg)):
        raise ValueError(f"sigma_deg must be > 0, got {sigma_deg!r}")
    n = np.asarray(two_theta).size
    return broaden_components(two_theta, intensity, grid, [("gauss", np.full(n, FWHM_PER_SIGMA * sigma_deg), 1.0)])


# --------------------------------------------------------------------------
# Grids and the thermal diffuse continuum
# --------------------------------------------------------------------------


def two_theta_grid(start: float = 10.0, stop: float = 90.0, step: float = 0.02) -> np.ndarray:
    """Uniform 2theta grid start, start + step, ..., stop (inclusive), degrees.

    ``stop`` is included when (stop - start) / step is an integer up to float
    rounding (1e-9 relative); otherwise the grid ends at the last point below it.

    Raises:
        ValueError: step <= 0 or stop < start.
    """
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step must be > 0, got {step!r}")
    if not (stop >= start):
        raise ValueError(f"stop ({stop}) must be >= start ({start})")
    n = int(math.floor((stop - start) / step * (1.0 + 1e-12) + 1e-9)) + 1
    return start + step * np.arange(n, dtype=np.float64)


def _g_of(two_theta_deg: Any, wavelength: float) -> Any:
    """|G| = 2 sin(theta)/lambda, 1/Angstrom, of 2theta in degrees."""
    return 2.0 * np.sin(np.radians(np.asarray(two_theta_deg, dtype=np.float64) / 2.0)) / wavelength


def _two_theta_of(g: Any, wavelength: float) -> Any:
    """2theta in degrees of |G| (1/Angstrom), clipped at 180."""
    return np.degrees(2.0 * np.arcsin(np.minimum(np.asarray(g, dtype=np.float64) * wavelength / 2.0, 1.0)))


def debye_sphere_radius(volume_A3: float) -> float:
    """Radius of the sphere of volume 1/V in reciprocal space, 1/Angstrom: (3 / (4 pi V))^(1/3).

    ``volume_A3`` is the simulation cell (supercell) volume, Angstrom^3; its reciprocal cell,
    the reciprocal-space volume one diffuse sample stands for, has volume 1/V (Debye's
    equal-volume sphere, see the module docstring).

    Raises:
        ValueError: volume not positive.
    """
    if not volume_A3 > 0:
        raise ValueError(f"volume_A3 must be > 0, got {volume_A3!r}")
    return (3.0 / (4.0 * math.pi * float(volume_A3))) ** (1.0 / 3.0)


def diffuse_continuum(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    multiplicity: np.ndarray,
    grid: np.ndarray,
    wavelength: float,
    volume_A3: float,
    bragg_fraction: float,
    *,
    monochromator_two_theta_deg: float | None = None,
) -> np.ndarray:
    """Thermal diffuse scattering of a supercell's samples as a smooth function of |G|, on a 2theta grid.

    The diffuse reflections are samples of a continuous intensity at the supercell's
    reciprocal lattice points (module docstring). Their mean per point, with the
    Lorentz-polarization factor and the q^2 of one-phonon scattering taken out (first-order
    thermal diffuse scattering grows as |G|^2 f^2 kT / (m omega^2); Warren, *X-Ray
    Diffraction*, 1969, ch. 11), is estimated as a smooth function of q = |G| =
    2 sin(theta)/lambda by Nadaraya-Watson kernel regression (Nadaraya, Theory Probab.
    Appl. 9, 141 (1964); Watson, Sankhya A 26, 359 (1964)) with a Gaussian kernel of
    standard deviation r = :func:`debye_sphere_radius` (the reach of one sample):

        z(q) = sum_i (I_i / (LP_i q_i^2)) K(q - q_i) / sum_i m_i K(q - q_i),

    I_i the intensity and m_i the multiplicity (points) of reflection i; taking out q^2
    removes most of the bias a kernel average has where the points thin out towards q = 0.
    The diffuse pattern is then z(q) q^2 times the number of diffuse points per unit |G|,
    4 pi q^2 V (1 - f_B) (V the cell volume; a fraction f_B of the points is Bragg), times
    LP(q), converted to intensity per degree 2theta (dq/d2theta = cos(theta) pi / (180 lambda)).
    Unlike drawing each sample as a sharp reflection (false superlattice peaks) or
    spreading it over a sphere around itself (ripples where the lattice's shells crowd,
    holes at the Bragg points, whose own diffuse share no sample measures), the
    estimate has neither. Below the first sample the denominator is held at its value
    there, so the estimate fades with the kernel instead of extrapolating to 2theta = 0.
    Above the last sample it is zero (compute samples beyond the grid: :func:`kernel_settings`).
    A final factor per pattern (a few %: the kernel averages the steep LP(q) and the
    fade) makes the integral over |G| equal the samples' summed intensity, so the diffuse
    intensity is kept (to the grid's interpolation, ~1e-3) and only redistributed in |G|.

    Args:
        two_theta: (n,) diffuse reflection positions, degrees.
        intensity: (n,) or (m, n) intensities (per parent cell, LP included).
        multiplicity: (n,) points per reflection.
        grid: (n_grid,) uniform ascending 2theta grid, degrees.
        wavelength: Angstrom.
        volume_A3: simulation cell volume, Angstrom^3.
        bragg_fraction: fraction of the supercell's reciprocal lattice points that are
            Bragg points: 1 / (primitive parent cells in the supercell).
        monochromator_two_theta_deg: the LP factor's monochromator angle (as in the intensities).

    Returns:
        (n_grid,) or (m, n_grid) float64, intensity per degree 2theta.

    Raises:
        ValueError: shape mismatch, volume not positive, bragg_fraction outside [0, 1).
    """
    from scipy.ndimage import gaussian_filter1d  # lazy: scipy.ndimage 0.28 s; loaded at Snakefile parse

    tt = np.asarray(two_theta, dtype=np.float64).ravel()
    weights = np.asarray(intensity, dtype=np.float64)
    mult = np.asarray(multiplicity, dtype=np.float64).ravel()
    grid = np.asarray(grid, dtype=np.float64)
    if weights.ndim not in (1, 2) or weights.shape[-1] != tt.size or mult.size != tt.size:
        raise ValueError(f"intensity must have shape ({tt.size},) or (m, {tt.size}) and multiplicity ({tt.size},)")
    if not 0.0 <= bragg_fraction < 1.0:
        raise ValueError(f"bragg_fraction must be in [0, 1), got {bragg_fraction!r}")
    radius = debye_sphere_radius(volume_A3)
    out = np.zeros(weights.shape[:-1] + (grid.size,))
    if tt.size == 0:
        return out
    g = _g_of(tt, wavelength)
    lp = lorentz_polarization(np.radians(tt / 2.0), monochromator_two_theta_deg)
    # Kernel sums on a fine uniform |G| mesh (binning then Gaussian filtering).
    dq = radius / 40.0
    g_grid = _g_of(np.clip(grid, 1e-6, 180.0), wavelength)
    n_mesh = int(math.ceil(max(g.max(), g_grid.max()) / dq)) + 2
    pos = g / dq
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    def mesh(values: np.ndarray) -> np.ndarray:  # linear binning, then the Gaussian kernel
        flat = np.atleast_2d(values)
        res = np.zeros((flat.shape[0], n_mesh + 1))
        for row, v in enumerate(flat):
            res[row] = np.bincount(lo, v * (1.0 - frac), minlength=n_mesh + 1) + np.bincount(
                lo + 1, v * frac, minlength=n_mesh + 1)
        return gaussian_filter1d(res, radius / dq, axis=-1, mode="constant", truncate=6.0)

    mesh_g = dq * np.arange(n_mesh + 1)
    counts = mesh(mult)[0]
    # Below the first sample, hold the denominator at its value there: the estimate
    # then fades with the kernel's tail instead of extrapolating a plateau to 2theta = 0.
    first = min(int(round(g.min() / dq)), n_mesh)
    counts[:first] = counts[first]
    continuum = mesh(weights / (lp * g * g)) / np.maximum(counts, 1e-300)  # mean per point / (LP q^2)
    mesh_theta = np.arcsin(np.clip(mesh_g * wavelength / 2.0, 1e-9, 1.0 - 1e-12))
    continuum *= 4.0 * math.pi * mesh_g**4 * float(volume_A3) * (1.0 - bragg_fraction) * lorentz_polarization(
        mesh_theta, monochromator_two_theta_deg)  # intensity per unit |G|
    continuum[:, mesh_g > g.max()] = 0.0  # no sample beyond the last one
    # One factor per pattern makes the estimate keep the samples' intensity exactly.
    total = continuum.sum(axis=1) * dq
    continuum *= (np.atleast_2d(weights).sum(axis=1) / np.where(total > 0, total, 1.0))[:, None]
    theta_grid = np.radians(np.clip(grid, 0.0, 180.0) / 2.0)
    per_degree = np.cos(theta_grid) * math.pi / (180.0 * wavelength)  # d|G| / d(2theta)
    result = np.stack([np.interp(g_grid, mesh_g, row) for row in continuum]) * per_degree
    return result.reshape(out.shape)


def _profile_block(
    kind: str, center: np.ndarray, width: np.ndarray, x0: float, step: float, n_grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-area profiles of a block of peaks on the grid, in 1/degree.

    ``kind``: ``"sampled"`` (Gaussian of std ``width`` at the grid points,
    +-6 sigma), ``"binned"`` (the same Gaussian integrated over each grid bin,
    erf differences), ``"lorentz"`` (Lorentzian of half width ``width``
    integrated over bins, +-:data:`LORENTZ_REACH_FWHM` FWHM, renormalized to unit area).

    Returns (idx, val), both (n_peaks, W): grid index (clipped into the grid)
    and value (0 where the window leaves the grid). All peaks of the block get
    the widest window of the block, W points from their first one.
    """
    if kind == "lorentz":
        half, pad = 2.0 * LORENTZ_REACH_FWHM * width, 0.5 * step
    else:
        half, pad = GAUSS_REACH_SIGMA * width, (0.0 if kind == "sampled" else 0.5 * step)
    lo = np.ceil((center - half - pad - x0) / step).astype(np.int64)
    hi = np.floor((center + half + pad - x0) / step).astype(np.int64)
    n_win = int((hi - lo).max()) + 1
    offsets = np.arange(n_win + (0 if kind == "sampled" else 1), dtype=np.int64)
    c = center[:, None]
    w = width[:, None]
    if kind == "sampled":
        idx = lo[:, None] + offsets
        z = (x0 + idx * step - c) / w
        val = np.exp(-0.5 * z * z) / (w * math.sqrt(2.0 * math.pi))
    else:
        edges = x0 + (lo[:, None] + offsets - 0.5) * step  # n_win + 1 bin edges
        if kind == "binned":
            from scipy.special import ndtr  # lazy: scipy.special 0.22 s; loaded at Snakefile parse

            cdf = ndtr((edges - c) / w)
            val = np.diff(cdf, axis=1) / step
        else:
            cdf = np.arctan((edges - c) / w)
            val = np.diff(cdf, axis=1) / ((cdf[:, -1:] - cdf[:, :1]) * step)
        idx = lo[:, None] + offsets[:-1]
    outside = (idx < 0) | (idx >= n_grid)
    if outside.any():
        val[outside] = 0.0
        np.clip(idx, 0, n_grid - 1, out=idx)
    return idx, val
