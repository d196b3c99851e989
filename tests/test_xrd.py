"""Tests of mdxrd.xrd: the diffraction kernel against pymatgen, the physics of
supercells and thermal motion, broadening, the workflow stage and the CLI."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.diffraction.xrd import WAVELENGTHS as PMG_WAVELENGTHS
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Lattice, Structure

from mdxrd import xrd
from mdxrd.xrd import (
    Reflections,
    broaden,
    diffract,
    diffract_structure,
    resolve_wavelength,
    scattering_factor,
    two_theta_grid,
)

LAMBDA = 1.5406
RANGE = (10.0, 90.0)
TOL = 1e-5  # pymatgen's TWO_THETA_TOL


# --------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------


def si() -> Structure:
    return _si().copy()


@functools.cache
def _si() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.4307), ["Si"], [[0, 0, 0]])


def nacl() -> Structure:
    return _nacl().copy()


@functools.cache
def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6401), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cu() -> Structure:
    return _cu().copy()


@functools.cache
def _cu() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.6150), ["Cu"], [[0, 0, 0]])


def rutile() -> Structure:
    return _rutile().copy()


@functools.cache
def _rutile() -> Structure:
    return Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]
    )


def wurtzite() -> Structure:
    return _wurtzite().copy()


@functools.cache
def _wurtzite() -> Structure:
    return Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.2495, 5.2069), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.3819]]
    )


def displaced(s: Structure, sigma: float, seed: int, strain: np.ndarray | None = None) -> Structure:
    """P1 copy of ``s`` with Gaussian Cartesian displacements (and an optional strain)."""
    rng = np.random.default_rng(seed)
    frac = s.frac_coords + rng.normal(0.0, sigma, (len(s), 3)) @ np.linalg.inv(s.lattice.matrix)
    matrix = s.lattice.matrix if strain is None else s.lattice.matrix @ (np.eye(3) + strain)
    return Structure(Lattice(matrix), s.species, frac)


def arrays(s: Structure) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return s.lattice.matrix.copy(), s.frac_coords.copy(), [site.specie.symbol for site in s]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def merge_by_angle(r: Reflections) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge reflections whose 2theta agree within TOL regardless of the Bragg
    flag (what pymatgen does): (two_theta, intensity, multiplicity, d_spacing)."""
    order = np.argsort(r.two_theta, kind="stable")
    tt = r.two_theta[order]
    new = np.concatenate([[True], np.diff(tt) > TOL])
    starts = np.flatnonzero(new)
    return (
        tt[starts],
        np.add.reduceat(r.intensity[order], starts),
        np.add.reduceat(r.multiplicity[order], starts),
        r.d_spacing[order][starts],
    )


def assert_matches_pymatgen(s: Structure, r: Reflections, scale: float = 1.0, b_iso: dict | None = None) -> None:
    """``r`` (times ``scale``) equals pymatgen's unscaled pattern of ``s``."""
    calc = XRDCalculator(wavelength=LAMBDA, symprec=0, debye_waller_factors=b_iso)
    pat = calc.get_pattern(s, scaled=False, two_theta_range=RANGE)
    tt, inten, mult, d = merge_by_angle(r)
    inten = inten * scale
    keep = inten / inten.max() * 100 > 1e-3  # pymatgen's SCALED_INTENSITY_TOL
    tt, inten, mult, d = tt[keep], inten[keep], mult[keep], d[keep]
    assert len(tt) == len(pat.x), (len(tt), len(pat.x))
    np.testing.assert_allclose(tt, pat.x, rtol=0, atol=1e-8)
    np.testing.assert_allclose(inten, pat.y, rtol=1e-6, atol=0)
    pmg_mult = [sum(fam["multiplicity"] for fam in fams) for fams in pat.hkls]
    np.testing.assert_array_equal(mult, pmg_mult)
    np.testing.assert_allclose(d, pat.d_hkls, rtol=1e-10)


CASES = {
    "Si": lambda: si(),
    "NaCl": lambda: nacl(),
    "Cu": lambda: cu(),
    "rutile": lambda: rutile(),
    "wurtzite": lambda: wurtzite(),
    "Si222_displaced": lambda: displaced(si() * (2, 2, 2), 0.07, seed=1),
    "NaCl222_displaced": lambda: displaced(nacl() * (2, 2, 2), 0.1, seed=2),
    "rutile221_displaced_triclinic": lambda: displaced(
        rutile() * (2, 2, 1), 0.08, seed=3, strain=np.array([[0.01, 0.02, -0.01], [0.0, -0.015, 0.03], [0.0, 0.0, 0.02]])
    ),
}


# --------------------------------------------------------------------------
# Against pymatgen
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_matches_pymatgen(name: str) -> None:
    s = CASES[name]()
    r = diffract_structure(s, wavelength=LAMBDA, two_theta_range=RANGE)
    assert r.is_bragg.all()  # supercell (1, 1, 1): every point is a Bragg point
    assert np.all(np.diff(r.two_theta) > TOL)
    assert r.hkl.dtype == np.int64 and r.multiplicity.dtype == np.int64
    assert_matches_pymatgen(s, r)


@pytest.mark.parametrize("name", ["Si222_displaced", "NaCl222_displaced"])
def test_supercell_flag_keeps_pymatgen_totals(name: str) -> None:
    """With supercell=(2, 2, 2) intensities are per parent cell (1/64) and Bragg
    and diffuse points of equal 2theta stay apart; merged, they are pymatgen's."""
    s = CASES[name]()
    r = diffract_structure(s, wavelength=LAMBDA, two_theta_range=RANGE, supercell=(2, 2, 2))
    assert not r.is_bragg.all() and r.is_bragg.any()
    assert_matches_pymatgen(s, r, scale=64.0)


def test_representative_hkl_and_d() -> None:
    everything = diffract_structure(si(), wavelength=LAMBDA, two_theta_range=(10.0, 120.0))
    # Every point is kept, the extinct ones too (|F| ~ 1e-15): 100, 110, 200, ...
    np.testing.assert_array_equal(everything.hkl[:3], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    assert everything.intensity[0] < 1e-20 * everything.intensity.max()
    r = everything.select(everything.intensity > 1e-8 * everything.intensity.max())
    # Si: 111, 220, 311, 400, 331, 422, 511/333 (merged: same d), ...
    np.testing.assert_array_equal(r.hkl[:4], [[1, 1, 1], [2, 2, 0], [3, 1, 1], [4, 0, 0]])
    np.testing.assert_array_equal(r.multiplicity[:4], [8, 12, 24, 6])
    a = 5.4307
    np.testing.assert_allclose(r.d_spacing, a / np.sqrt((r.hkl**2).sum(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(r.two_theta, 2 * np.degrees(np.arcsin(LAMBDA / (2 * r.d_spacing))), atol=1e-10)
    i511 = int(np.flatnonzero((r.hkl == [5, 1, 1]).all(axis=1))[0])
    assert r.multiplicity[i511] == 24 + 8  # {511} and {333} share d


def test_batch_equals_single_and_shapes() -> None:
    structs = [displaced(si() * (2, 2, 2), 0.07, seed=k) for k in range(3)]
    cells = np.stack([s.lattice.matrix for s in structs])
    frac = np.stack([s.frac_coords for s in structs])
    cells[2] *= 1.01  # a different cell inside the batch
    batch = diffract(cells, frac, ["Si"] * 64, supercell=(2, 2, 2))
    assert len(batch) == 3
    for k in range(3):
        single = diffract(cells[k], frac[k], ["Si"] * 64, supercell=(2, 2, 2))
        assert isinstance(single, list) and len(single) == 1
        for field in ("two_theta", "d_spacing", "hkl", "multiplicity", "is_bragg"):
            np.testing.assert_array_equal(getattr(batch[k], field), getattr(single[0], field))
        np.testing.assert_allclose(batch[k].intensity, single[0].intensity, rtol=1e-12)
    assert batch[0].two_theta is batch[1].two_theta  # shared geometry, same cell
    assert batch[2].two_theta[0] < batch[0].two_theta[0]  # larger cell, smaller angles
    table = batch[0].to_table()
    assert table.column_names == list(xrd.REFLECTION_COLUMNS)
    assert set(batch[0].to_dict()) == set(xrd.REFLECTION_COLUMNS)


def test_ase_atoms_and_wrapping() -> None:
    from pymatgen.io.ase import AseAtomsAdaptor

    s = displaced(nacl() * (2, 1, 1), 0.05, seed=5)
    r_pmg = diffract_structure(s)
    r_ase = diffract_structure(AseAtomsAdaptor.get_atoms(s))
    np.testing.assert_allclose(r_ase.intensity, r_pmg.intensity, rtol=1e-10)
    cell, frac, species = arrays(s)
    shifted = diffract(cell, frac + np.array([1, -2, 3]), species)[0]  # integer shifts: same crystal
    np.testing.assert_allclose(shifted.intensity, r_pmg.intensity, rtol=1e-9)


def test_errors() -> None:
    cell, frac, species = arrays(nacl())
    with pytest.raises(ValueError, match="Xx"):
        diffract(cell, frac, ["Xx"] + species[1:])
    with pytest.raises(ValueError, match="species"):
        diffract(cell, frac, species[:-1])
    with pytest.raises(ValueError, match="two_theta_range"):
        diffract(cell, frac, species, two_theta_range=(90, 10))
    with pytest.raises(ValueError, match="supercell"):
        diffract(cell, frac, species, supercell=(0, 1, 1))
    s = nacl()
    s.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    with pytest.raises(ValueError, match="partial occupanc"):
        diffract_structure(s)


def test_empty_range() -> None:
    cell, frac, species = arrays(cu())
    r = diffract(cell, frac, species, two_theta_range=(10.0, 20.0))[0]  # Cu 111 is at 43 deg
    assert len(r) == 0 and r.hkl.shape == (0, 3)


# --------------------------------------------------------------------------
# Wavelengths
# --------------------------------------------------------------------------


def test_wavelengths() -> None:
    for name, value in xrd.WAVELENGTHS.items():
        if name in PMG_WAVELENGTHS and name != "CuKa1":
            assert value == PMG_WAVELENGTHS[name], name
        assert resolve_wavelength(name) == value
    assert resolve_wavelength("CuKa") == pytest.approx(1.54184)  # K-alpha average, not K-alpha1
    assert resolve_wavelength("CuKa1") == 1.5406  # METHOD.md; pymatgen lists 1.54056
    assert PMG_WAVELENGTHS["CuKa1"] == pytest.approx(1.5406, abs=5e-5)
    assert resolve_wavelength(1.5406) == 1.5406
    assert resolve_wavelength("0.7093") == 0.7093
    with pytest.raises(ValueError, match="CuKa1"):
        resolve_wavelength("CuKalpha")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            resolve_wavelength(bad)
    cell, frac, species = arrays(cu())
    a = diffract(cell, frac, species, wavelength="MoKa1")[0]
    b = diffract(cell, frac, species, wavelength=0.70930)[0]
    np.testing.assert_array_equal(a.two_theta, b.two_theta)


# --------------------------------------------------------------------------
# Supercells, Bragg flag, thermal motion
# --------------------------------------------------------------------------


def test_static_supercell_gives_parent_intensities() -> None:
    parent = diffract_structure(si())
    parent = parent.select(parent.intensity > 1e-10 * parent.intensity.max())
    sc = diffract_structure(si() * (2, 2, 2), supercell=(2, 2, 2))
    strong = sc.intensity > 1e-10 * sc.intensity.max()
    assert sc.is_bragg[strong].all()  # a perfect supercell scatters only at Bragg points
    bragg = sc.select(sc.is_bragg & strong)
    np.testing.assert_allclose(bragg.two_theta, parent.two_theta, atol=1e-9)
    np.testing.assert_allclose(bragg.intensity, parent.intensity, rtol=1e-9)
    np.testing.assert_array_equal(bragg.multiplicity, parent.multiplicity)
    np.testing.assert_array_equal(bragg.hkl // 2, parent.hkl)  # supercell indices
    assert (bragg.hkl % 2 == 0).all()


def test_bragg_flag_and_coincident_diffuse_reflection() -> None:
    s = displaced(cu() * (3, 3, 3), 0.08, seed=7)
    r = diffract_structure(s, supercell=(3, 3, 3))
    np.testing.assert_array_equal(r.is_bragg, (r.hkl % 3 == 0).all(axis=1))
    # Bragg (333) (parent 111) and diffuse (511) share h^2 + k^2 + l^2 = 27.
    i333 = int(np.flatnonzero((r.hkl == [3, 3, 3]).all(axis=1))[0])
    i511 = int(np.flatnonzero((r.hkl == [5, 1, 1]).all(axis=1))[0])
    assert r.is_bragg[i333] and not r.is_bragg[i511]
    assert abs(r.two_theta[i333] - r.two_theta[i511]) < 1e-10
    assert (r.multiplicity[i333], r.multiplicity[i511]) == (8, 24)
    assert abs(i511 - i333) == 1
    assert r.intensity[i333] > 100 * r.intensity[i511] > 0


def test_debye_waller_from_random_displacements() -> None:
    """<I> over snapshots with u ~ N(0, sigma^2) per Cartesian component:
    <|F|^2> = |F0|^2 D + N f^2 (1 - D), D = exp(-2 B s^2), B = 8 pi^2 sigma^2."""
    n, n_snap, sigma, tt_range = 3, 200, 0.1, (10.0, 140.0)
    sc = cu() * (n, n, n)
    cell, frac0, species = arrays(sc)
    rng = np.random.default_rng(11)
    u = rng.normal(0.0, sigma, (n_snap, len(sc), 3))
    frac = frac0[None] + u @ np.linalg.inv(cell)
    cells = np.broadcast_to(cell, (n_snap, 3, 3))
    snaps = diffract(cells, frac, species, supercell=(n, n, n), two_theta_range=tt_range)
    static = diffract(cell, frac0, species, supercell=(n, n, n), two_theta_range=tt_range)[0]
    mean = np.mean([r.intensity for r in snaps], axis=0)
    r0 = snaps[0]
    np.testing.assert_array_equal(r0.two_theta, static.two_theta)
    bragg = r0.is_bragg & (static.intensity > 1e-6 * static.intensity.max())
    assert bragg.sum() == 7  # 111 200 220 311 222 400 331
    s = 1.0 / (2.0 * r0.d_spacing)
    b_factor = 8 * math.pi**2 * sigma**2
    damping = np.exp(-2 * b_factor * s**2)
    theta = np.radians(r0.two_theta / 2)
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    laue = r0.multiplicity * len(sc) * scattering_factor("Cu", s) ** 2 * (1 - damping) * lp / n**6
    ratio = (mean - laue)[bragg] / static.intensity[bragg]
    np.testing.assert_allclose(ratio, damping[bragg], rtol=5e-3)
    assert damping[bragg].min() < 0.6  # the test sees a real decay
    # Uncorrected, the finite-cell Laue term is visible but small at Bragg points.
    np.testing.assert_allclose(mean[bragg] / static.intensity[bragg], damping[bragg], rtol=0.05)
    # The diffuse reflections carry the Laue term N f^2 (1 - D) on average.
    diffuse = ~r0.is_bragg
    np.testing.assert_allclose(mean[diffuse].sum() / laue[diffuse].sum(), 1.0, rtol=0.05)


def test_b_iso_matches_pymatgen_debye_waller() -> None:
    b_iso = {"Na": 1.2, "Cl": 0.8}
    s = nacl()
    r = diffract_structure(s, b_iso=b_iso)
    assert_matches_pymatgen(s, r, b_iso=b_iso)
    plain = diffract_structure(s)
    even = (plain.hkl % 2 == 0).all(axis=1) & (plain.intensity > 1e-8 * plain.intensity.max())
    assert even.sum() >= 4 and (r.intensity[even] < plain.intensity[even]).all()  # f_Na + f_Cl damped


# --------------------------------------------------------------------------
# Broadening
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.3, 0.02])
def test_broaden_preserves_area_and_position(sigma: float) -> None:
    step = 0.02
    grid = two_theta_grid(10.0, 90.0, step)
    rng = np.random.default_rng(3)
    tt = rng.uniform(20.0, 80.0, 40)
    inten = rng.uniform(0.5, 2.0, 40)
    y = broaden(tt, inten, grid, sigma)
    assert y.shape == grid.shape
    np.testing.assert_allclose(y.sum() * step, inten.sum(), rtol=1e-6)
    for t in tt[:10]:  # single peaks anywhere between grid points
        yi = broaden(np.array([t]), np.array([1.0]), grid, sigma)
        assert yi.sum() * step == pytest.approx(1.0, rel=1e-6)
        assert (yi * grid).sum() / yi.sum() == pytest.approx(t, abs=1e-6)  # centroid
        assert abs(grid[np.argmax(yi)] - t) <= step / 2 + 1e-9  # maximum at the nearest grid point
        assert np.count_nonzero(yi) >= 3  # not a stick binned to one point
    batch = broaden(tt, np.stack([inten, 2 * inten]), grid, sigma)
    assert batch.shape == (2, grid.size)
    np.testing.assert_allclose(batch[0], y, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(batch[1], 2 * y, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sigma", [0.3, 0.02])
def test_broaden_on_grid_point_is_symmetric(sigma: float) -> None:
    grid = two_theta_grid(10.0, 90.0, 0.02)
    i0 = 2000
    y = broaden(grid[[i0]], np.array([3.0]), grid, sigma)
    half = 40
    np.testing.assert_allclose(y[i0 - half : i0][::-1], y[i0 + 1 : i0 + half + 1], rtol=1e-12, atol=1e-12 * y.max())
    assert y[i0 - 1] > 0
    assert np.argmax(y) == i0


def test_broaden_midway_narrow_peak_is_split_evenly() -> None:
    grid = two_theta_grid(10.0, 90.0, 0.02)
    t = 0.5 * (grid[1000] + grid[1001])
    y = broaden(np.array([t]), np.array([1.0]), grid, 0.005)
    assert y[1000] == pytest.approx(y[1001], rel=1e-9)
    # bin [x - step/2, x + step/2] holds the mass between -4 sigma and the center
    assert y[1000] == pytest.approx((0.5 - 0.5 * math.erfc(4 / math.sqrt(2))) / 0.02, rel=1e-9)


def test_grid_and_kernel_range() -> None:
    g = two_theta_grid(10.0, 90.0, 0.02)
    assert g.size == 4001 and g[0] == 10.0 and g[-1] == pytest.approx(90.0, abs=1e-9)
    assert two_theta_grid(0.0, 1.0, 0.1).size == 11
    assert two_theta_grid(0.0, 1.05, 0.1).size == 11
    # a Gaussian reaches 6 sigma beyond the grid
    assert xrd.kernel_settings([xrd.Instrument(sigma_deg=0.3)], (10.0, 90.0)) == (1.5406, pytest.approx((8.2, 91.8)))
    assert xrd.kernel_settings([xrd.Instrument(sigma_deg=0.3)], (0.5, 179.0))[1] == (0.0, 180.0)


# --------------------------------------------------------------------------
# Workflow stage and CLI
# --------------------------------------------------------------------------


SIGMA = 0.2
PARAMS = {
    "two_theta_range": [20.0, 60.0],
    "two_theta_step": 0.05,
    "supercell": [2, 2, 2],
    "instrument": [{"name": "default", "wavelength": "CuKa1", "sigma_deg": SIGMA}],
}


def write_trajectory(path: Path, n_frames: int = 3) -> list:
    import ase.io
    from ase.build import bulk

    base = bulk("Si", "diamond", a=5.4307, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(0)
    frames = []
    for k in range(n_frames):
        atoms = base.copy()
        if k == 2:  # NPT: a cell of its own
            atoms.set_cell(atoms.cell * 1.005, scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.info["step"] = 10 * k
        atoms.info["time_fs"] = 5.0 * k
        frames.append(atoms)
    ase.io.write(path, frames)
    return frames


def check_stage_outputs(refl_path: Path, pat_path: Path, n_frames: int) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(refl_path)
    assert table.column_names == ["snapshot", "step", *xrd.REFLECTION_COLUMNS]
    assert str(table.schema.field("snapshot").type) == "int32"
    df = table.to_pandas()
    assert sorted(df["snapshot"].unique()) == list(range(n_frames))
    assert sorted(df["step"].unique()) == [0, 10, 20]
    radius = xrd.debye_sphere_radius((2 * 5.4307) ** 3)  # the frames' smallest cell
    lo, hi = xrd.kernel_settings([xrd.Instrument(sigma_deg=SIGMA)], PARAMS["two_theta_range"], 3 * radius)[1]
    assert df["two_theta"].min() >= lo and df["two_theta"].max() <= hi
    assert df["two_theta"].max() > PARAMS["two_theta_range"][1]  # edge peaks kept
    with np.load(pat_path) as npz:
        grid, inten, bragg, step = npz["two_theta"], npz["intensity"], npz["intensity_bragg"], npz["step"]
    assert grid.shape == (801,) and grid[0] == 20.0
    assert inten.shape == bragg.shape == (1, n_frames, grid.size)
    inten, bragg = inten[0], bragg[0]
    np.testing.assert_array_equal(step, [0, 10, 20])
    assert (bragg <= inten + 1e-9 * inten.max()).all() and (inten > bragg).any()
    # The diffuse part is a continuum: no sharp reflection survives in intensity - intensity_bragg.
    diffuse = inten - bragg
    assert (diffuse >= -1e-9 * inten.max()).all()
    assert np.abs(np.diff(diffuse, 2, axis=1)).max() < 1e-3 * diffuse.max()
    sub = df[df["is_bragg"]]
    mean_b = broaden(sub["two_theta"].to_numpy(), sub["intensity"].to_numpy() / n_frames, grid, SIGMA)
    np.testing.assert_allclose(bragg.mean(axis=0), mean_b, rtol=1e-9, atol=1e-12 * mean_b.max())


def test_run_stage(tmp_path: Path) -> None:
    frames = write_trajectory(tmp_path / "snaps.traj")
    refl_path, pat_path = tmp_path / "out" / "refl.parquet", tmp_path / "out" / "pat.npz"
    xrd.run_stage(tmp_path / "snaps.traj", refl_path, pat_path, **PARAMS)
    check_stage_outputs(refl_path, pat_path, len(frames))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pat.npz", "refl.parquet"]
    # Snapshot 1 equals the kernel on that frame.
    import pyarrow.parquet as pq

    df = pq.read_table(refl_path).to_pandas()
    r1 = diffract_structure(frames[1], wavelength="CuKa1", two_theta_range=(df["two_theta"].min() - 1e-9,
                            df["two_theta"].max() + 1e-9), supercell=(2, 2, 2))
    np.testing.assert_allclose(df[df["snapshot"] == 1]["intensity"].to_numpy(), r1.intensity, rtol=1e-12)


def test_cli_stage_commands_refuse_bad_parameter_files(tmp_path: Path) -> None:
    from mdxrd.cli import main

    templates = ["--md-dir", "m", "--structure-dir", "s", "--snapshots-dir", "n", "--xrd-dir", "x"]
    assert main(["post", "--params", "{", *templates, "--manifest", str(tmp_path / "m.json")]) == 2
    assert main(["md", "--params", str(tmp_path / "none.json"), "--supercell", "s", "--run-dir", "r",
                 "--manifest", str(tmp_path / "m.json")]) == 2
    assert not (tmp_path / "m.json").exists()


def test_cli_xrd_on_cif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd
    from pymatgen.io.cif import CifWriter

    from mdxrd.cli import main

    cif = tmp_path / "NaCl.cif"
    CifWriter(nacl()).write_file(cif)
    out, pattern = tmp_path / "peaks.csv", tmp_path / "pattern.csv"
    rc = main(["xrd", str(cif), "--wavelength", "CuKa1", "-o", str(out), "--pattern", str(pattern), "--sigma", "0.1"])
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns) == list(xrd.REFLECTION_COLUMNS)
    api = diffract_structure(Structure.from_file(cif), wavelength="CuKa1", two_theta_range=(10.0, 90.0))
    np.testing.assert_allclose(df["two_theta"], api.two_theta, rtol=1e-12)
    np.testing.assert_allclose(df["intensity"], api.intensity, rtol=1e-12)
    np.testing.assert_array_equal(df[["h", "k", "l"]].to_numpy(), api.hkl)
    assert df["is_bragg"].all()
    pat = pd.read_csv(pattern)
    assert list(pat.columns) == ["two_theta", "intensity"] and len(pat) == 4001
    assert pat["intensity"].sum() * 0.02 == pytest.approx(api.intensity.sum(), rel=1e-3)

    parquet = tmp_path / "peaks.parquet"
    assert main(["xrd", str(cif), "--wavelength", "1.5406", "-o", str(parquet), "--supercell", "1", "1", "1"]) == 0
    np.testing.assert_allclose(pd.read_parquet(parquet)["intensity"], df["intensity"], rtol=1e-12)

    # a laboratory condition, as in the README: the pattern alone, K-alpha doublet (1 + ~0.5 of the area)
    lab = tmp_path / "lab.csv"
    assert main(["xrd", str(cif), "--wavelength", "CuKa12", "--caglioti", "0.004", "-0.002", "0.003", "--eta", "0.5",
                 "--size-nm", "20", "--strain", "0.001", "--pattern", str(lab), "--two-theta-min", "20",
                 "--two-theta-max", "80"]) == 0
    y = pd.read_csv(lab)
    inside = (api.two_theta > 22) & (api.two_theta < 78)  # peaks well inside: their profiles' area is in the grid
    assert y["intensity"].sum() * 0.02 == pytest.approx(1.5 * api.intensity[inside].sum(), rel=0.03)
    assert y["intensity"].max() < 0.5 * pat["intensity"].max()  # broader than sigma 0.1

    capsys.readouterr()
    assert main(["xrd", str(cif), "--eta", "1.5", "--pattern", str(lab)]) == 2
    assert "eta must be in [0, 1]" in capsys.readouterr().err
    assert main(["xrd", str(cif)]) == 2
    assert "-o/--output" in capsys.readouterr().err
    assert main(["xrd", str(cif), "--wavelength", "CuKalpha", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CuKa1" in err


# --------------------------------------------------------------------------
# Bragg peaks of the primitive lattice; thermal diffuse scattering as a continuum
# --------------------------------------------------------------------------


def _c_centred() -> Structure:
    return Structure.from_spacegroup("Cmcm", Lattice.orthorhombic(3.1, 4.3, 5.2), ["Cu"], [[0, 0.13, 0.25]])


def _rhombohedral_hex() -> Structure:
    return Structure.from_spacegroup("R-3m", Lattice.hexagonal(3.0, 11.0), ["Bi"], [[0, 0, 0.23]])


def _bcc_fe() -> Structure:
    return Structure.from_spacegroup("Im-3m", Lattice.cubic(2.8665), ["Fe"], [[0, 0, 0]])


# name -> (structure, the lattice's reflection condition on parent-cell hkl)
LATTICES = {
    "F": (cu, lambda h, k, l: ((h % 2 == k % 2) & (k % 2 == l % 2))),
    "I": (_bcc_fe, lambda h, k, l: (h + k + l) % 2 == 0),
    "C": (_c_centred, lambda h, k, l: (h + k) % 2 == 0),
    "R": (_rhombohedral_hex, lambda h, k, l: (-h + k + l) % 3 == 0),
    "P": (lambda: Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]), lambda h, k, l: np.ones_like(h, bool)),
}


def test_centring_translations() -> None:
    assert xrd.centring_translations(cu()) == [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    assert xrd.centring_translations(_bcc_fe()) == [[0.5, 0.5, 0.5]]
    assert xrd.centring_translations(_c_centred()) == [[0.5, 0.5, 0.0]]
    r = xrd.centring_translations(_rhombohedral_hex())
    np.testing.assert_allclose(r, [[1 / 3, 2 / 3, 2 / 3], [2 / 3, 1 / 3, 1 / 3]], atol=1e-12)
    assert xrd.centring_translations(si()) == xrd.centring_translations(cu())  # the basis is no centring
    assert xrd.centring_translations(LATTICES["P"][0]()) == []


@pytest.mark.parametrize("name", list(LATTICES))
def test_bragg_flag_follows_the_primitive_lattice(name: str) -> None:
    make, allowed = LATTICES[name]
    parent = make()
    centring = xrd.centring_translations(parent)
    n = 2
    s = displaced(parent * (n, n, n), 0.05, seed=3)
    r = diffract_structure(s, supercell=(n, n, n), centring=centring)
    h, k, l = r.hkl.T
    integer = (r.hkl % n == 0).all(axis=1)
    expected = integer & allowed(h // n, k // n, l // n)
    np.testing.assert_array_equal(r.is_bragg, expected)
    # lattice-forbidden integer points exist (zone boundary) and are diffuse, except for P
    assert (integer & ~expected).any() == (name != "P")


def test_basis_extinctions_stay_bragg() -> None:
    # diamond (200) and (222): allowed by the F lattice, extinct by the two-atom basis only
    r = diffract_structure(si() * (2, 2, 2), supercell=(2, 2, 2), centring=xrd.centring_translations(si()))
    for hkl in ([4, 0, 0], [4, 4, 4]):
        i = int(np.flatnonzero((r.hkl == hkl).all(axis=1))[0])
        assert r.is_bragg[i] and r.intensity[i] < 1e-20


def _laue_frames(parent: Structure, n: int, n_snap: int, sigma: float, seed: int = 0):
    """Snapshots of a supercell with independent Gaussian displacements (Einstein solid)."""
    sc = parent * (n, n, n)
    cell, frac0, species = arrays(sc)
    rng = np.random.default_rng(seed)
    frac = frac0[None] + rng.normal(0.0, sigma, (n_snap, len(sc), 3)) @ np.linalg.inv(cell)
    return np.broadcast_to(cell, (n_snap, 3, 3)), frac, species


def test_diffuse_continuum_matches_laue_scattering() -> None:
    # Independent displacements <u_x^2> = sigma^2 give the Laue diffuse intensity N f^2 (1 - exp(-2 B s^2)),
    # B = 8 pi^2 sigma^2, the same at every non-Bragg point: per unit |G| a smooth
    # 4 pi G^2 V_p n_p (1 - f_B) f^2 (1 - e^{-2Bs^2}) LP. The continuum must follow it; drawn as
    # sharp supercell reflections it would show a false peak at every supercell shell.
    n, n_snap, sigma = 3, 24, 0.1
    cells, frac, species = _laue_frames(cu(), n, n_snap, sigma)
    centring = xrd.centring_translations(cu())
    volume = abs(np.linalg.det(cells[0]))
    grid = two_theta_grid(20.0, 85.0, 0.02)
    ext = xrd.kernel_settings([xrd.Instrument(sigma_deg=0.3)], (20.0, 85.0), 3 * xrd.debye_sphere_radius(volume))[1]
    refl = diffract(cells, frac, species, supercell=(n, n, n), two_theta_range=ext, centring=centring)
    weights = np.stack([r.intensity for r in refl])
    f_bragg = 1.0 / (n**3 * 4)
    total, bragg = xrd.powder_pattern(refl[0], weights, grid, LAMBDA, xrd.Instrument(sigma_deg=0.3),
                                      volume_A3=volume, bragg_fraction=f_bragg)
    diffuse = (total - bragg).mean(axis=0)
    theta = np.radians(grid / 2)
    s = np.sin(theta) / LAMBDA
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    b_factor = 8 * math.pi**2 * sigma**2
    laue = (4 * math.pi * (2 * s) ** 2 * cu().volume * 4 * (1 - f_bragg) * scattering_factor("Cu", s) ** 2
            * (1 - np.exp(-2 * b_factor * s**2)) * lp * np.cos(theta) * math.pi / (180 * LAMBDA))
    np.testing.assert_allclose(diffuse, laue, rtol=0.06)
    # the sticks it replaces had sharp maxima at the supercell shells
    sticks = broaden(refl[0].two_theta[~refl[0].is_bragg], weights[:, ~refl[0].is_bragg].mean(axis=0), grid, 0.3)
    assert np.abs(sticks / laue - 1).max() > 0.5


def test_diffuse_continuum_keeps_intensity() -> None:
    cells, frac, species = _laue_frames(si(), 2, 4, 0.1, seed=2)
    volume = abs(np.linalg.det(cells[0]))
    refl = diffract(cells, frac, species, supercell=(2, 2, 2), two_theta_range=(5.0, 120.0),
                    centring=xrd.centring_translations(si()))
    d = ~refl[0].is_bragg
    weights = np.stack([r.intensity[d] for r in refl])
    wide = two_theta_grid(0.01, 179.99, 0.01)
    cont = xrd.diffuse_continuum(refl[0].two_theta[d], weights, refl[0].multiplicity[d], wide, LAMBDA, volume, 1 / 32)
    np.testing.assert_allclose(cont.sum(axis=1) * 0.01, weights.sum(axis=1), rtol=1e-3)
    assert (cont >= 0).all()
    # nothing above the last sample, and it fades below the first one
    last = refl[0].two_theta[d].max()
    assert (cont[:, wide > last + 0.5] == 0).all()  # the |G| mesh reaches ~0.25 deg past it
    assert (cont[:, wide < 1.0] < 1e-3 * cont.max()).all()
    with pytest.raises(ValueError):
        xrd.diffuse_continuum(refl[0].two_theta[d], weights, refl[0].multiplicity[d], wide, LAMBDA, volume, 1.0)


def test_stage_bragg_pattern_is_zero_at_fcc_forbidden_positions(tmp_path: Path) -> None:
    import ase.io
    from ase.build import bulk

    base = bulk("Cu", "fcc", a=3.615, cubic=True)
    frames = []
    rng = np.random.default_rng(4)
    for k in range(4):
        atoms = base.repeat(2)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.info.update(step=10 * k, time_fs=10.0 * k)
        frames.append(atoms)
    ase.io.write(tmp_path / "s.traj", frames)
    params = {**PARAMS, "two_theta_range": [10.0, 60.0], "instrument": [{"name": "g", "sigma_deg": 0.3}]}
    xrd.run_stage(tmp_path / "s.traj", tmp_path / "r.parquet", tmp_path / "p.npz",
                  centring=xrd.centring_translations(base), **params)
    with np.load(tmp_path / "p.npz") as npz:
        grid, bragg, total = npz["two_theta"], npz["intensity_bragg"][0], npz["intensity"][0]
    for forbidden in (24.61, 35.08):  # Cu (100), (110): X and zone-boundary points of fcc
        near = np.abs(grid - forbidden) < 1.0
        assert (bragg[:, near] == 0.0).all()
        assert (total[:, near] > 0.0).all()  # diffuse scattering is there
    assert bragg[:, np.abs(grid - 43.3) < 0.3].min() > 0  # (111)
