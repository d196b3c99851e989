"""Per-run thermal figures (B_iso, tau_int, energy drift), the 0 K reference (E(V), static pattern) and the QC."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mdxrd.qc import b_at, crystal_qc, expansion_coefficient
from mdxrd.reference import birch_murnaghan, lattice_deviation, static_pattern
from mdxrd.snapshots import b_iso, b_iso_standard_error, displacements, energy_drift, integrated_autocorrelation_time


def _gaussian_frames(n_frames=40, sigmas=None, scales=None, seed=0):
    """NaCl 2x2x2 snapshots with Gaussian displacements of rms sigma[el] per direction, cells scaled per frame."""
    from ase.build import bulk

    sigmas = sigmas or {"Na": 0.12, "Cl": 0.08}
    ref = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    sym = np.array(ref.get_chemical_symbols())
    width = np.array([sigmas[s] for s in sym])[:, None]
    frames = []
    for i in range(n_frames):
        f = ref.copy()
        s = 1.0 if scales is None else scales[i]
        f.set_cell(ref.cell * s, scale_atoms=True)  # an NPT cell: the sites scale with it
        f.positions += rng.normal(0.0, 1.0, f.positions.shape) * width + 0.7  # a rigid shift is removed
        f.wrap()
        frames.append(f)
    return frames, sigmas


def test_b_iso_per_element_of_gaussian_displacements():
    frames, sigmas = _gaussian_frames()
    b = b_iso(frames)
    assert set(b) == {"Na", "Cl"}
    err = b_iso_standard_error(frames)
    for el, s in sigmas.items():
        assert b[el] == pytest.approx(8 * math.pi**2 * s**2, rel=0.06)
        # independent frames: the spread of the per-frame B gives the error of the mean (32 atoms x 3 directions
        # per element and frame: relative error of one frame sqrt(2/96), of the mean that over sqrt(40))
        assert err[el] == pytest.approx(b[el] * math.sqrt(2 / 96) / math.sqrt(40), rel=0.35)


def test_b_iso_unchanged_by_a_barostat_scaling_the_cell():
    scales = 1.0 + 0.01 * np.sin(np.arange(40))  # +-1 % lattice breathing, as in NPT
    fixed, _ = _gaussian_frames()
    npt, _ = _gaussian_frames(scales=scales)
    for el in ("Na", "Cl"):
        assert b_iso(npt)[el] == pytest.approx(b_iso(fixed)[el], rel=0.03)
    # about mean positions unwrapped in the scaled cell: a site is never a full cell away
    assert np.abs(displacements(npt)).max() < 1.0


def test_integrated_autocorrelation_time_of_ar1():
    phi = 0.8
    rng = np.random.default_rng(1)
    x = np.zeros(100_000)
    for i in range(1, x.size):
        x[i] = phi * x[i - 1] + rng.normal()
    assert integrated_autocorrelation_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)
    assert integrated_autocorrelation_time(rng.normal(size=5000)) == pytest.approx(1.0, abs=0.15)


def test_energy_drift_is_the_slope_per_atom():
    t = np.arange(0.0, 1000.0)  # fs
    noise = np.random.default_rng(2).normal(0.0, 0.01, t.size)
    th = pd.DataFrame({"time_fs": t, "E_tot_eV": -100.0 + 2e-4 * t + noise})  # 0.2 eV/ps on 64 atoms
    assert energy_drift(th, 64) == pytest.approx(0.2e3 / 64, rel=0.02)


def _bm_energy(v, e0, v0, b0_eVA3, b1):
    eta = (v0 / v) ** (2.0 / 3.0)
    return e0 + 9.0 * v0 * b0_eVA3 / 16.0 * ((eta - 1) ** 3 * b1 + (eta - 1) ** 2 * (6 - 4 * eta))


def test_birch_murnaghan_fit_recovers_the_parameters():
    from ase import units

    v0, b0_gpa, b1 = 40.0, 140.0, 4.8
    v = v0 * np.linspace(0.94, 1.06, 9)
    fit = birch_murnaghan(v, _bm_energy(v, -3.7, v0, b0_gpa * units.GPa, b1))
    assert fit["V0_A3"] == pytest.approx(v0, rel=1e-4)
    assert fit["B0_GPa"] == pytest.approx(b0_gpa, rel=1e-3)
    assert fit["B0_prime"] == pytest.approx(b1, rel=1e-2)
    with pytest.raises(ValueError, match="outside the scanned volumes"):
        birch_murnaghan(v * 0.9 - 2.0, _bm_energy(v * 0.9 - 2.0, 0.0, v0 * 1.2, 1.0, 4.0))


def test_eos_scan_of_emt_copper_matches_its_finite_difference_bulk_modulus():
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from mdxrd.md import model_bulk_modulus
    from mdxrd.reference import ReferenceParams, eos_scan

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = EMT()
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4, steps=200)
    v, e = eos_scan(atoms, EMT(), ReferenceParams(eos_volume_range=0.04, eos_points=9))
    fit = birch_murnaghan(v, e)
    assert fit["V0_A3"] == pytest.approx(atoms.get_volume(), rel=2e-3)
    assert fit["B0_GPa"] == pytest.approx(model_bulk_modulus(atoms, EMT()), rel=0.03)


def test_static_pattern_peaks_at_bragg_angles_and_conserves_intensity():
    from ase.build import bulk

    from mdxrd.xrd import diffract_structure, two_theta_grid

    a = 3.615
    cu = bulk("Cu", "fcc", a=a, cubic=True)
    grid = two_theta_grid(30.0, 80.0, 0.01)
    observed, clean = static_pattern(cu, grid, [{"name": "g", "wavelength": "CuKa1", "sigma_deg": 0.1},
                                                {"name": "bg", "sigma_deg": 0.1, "background": [0.1]}])
    assert observed.shape == clean.shape == (2, grid.size)
    np.testing.assert_array_equal(observed[0], clean[0])
    np.testing.assert_allclose(observed[1] - clean[1], 0.1 * clean[1].max())  # a flat background
    y = clean[0]
    peak = grid[np.argmax(y)]
    assert peak == pytest.approx(2 * np.degrees(np.arcsin(1.5406 * np.sqrt(3) / (2 * a))), abs=0.01)  # (111)
    refl = diffract_structure(cu, wavelength="CuKa1", two_theta_range=(30.0, 80.0))
    assert y.sum() * 0.01 == pytest.approx(refl.intensity.sum(), rel=1e-3)


def test_lattice_deviation_in_percent():
    from pymatgen.core import Lattice, Structure

    x = Structure(Lattice.cubic(5.0), ["Si"], [[0, 0, 0]])
    r = Structure(Lattice.tetragonal(5.05, 4.95), ["Si"], [[0, 0, 0]])
    dev = lattice_deviation(r, x)
    assert dev["a_pct"] == pytest.approx(1.0) and dev["c_pct"] == pytest.approx(-1.0)
    assert dev["volume_pct"] == pytest.approx(100 * (5.05**2 * 4.95 / 125 - 1))


def test_expansion_coefficient_and_classical_b():
    alpha = 2e-5
    t = np.array([300.0, 600.0, 900.0])
    v = 40.0 * (1 + alpha * (t - 300.0)) ** 3
    got, _ = expansion_coefficient(t, v)
    assert got == pytest.approx(alpha / (1 + alpha * 300), rel=1e-2)
    with pytest.raises(ValueError):
        expansion_coefficient(np.array([300.0, 300.0]), np.array([40.0, 40.1]))
    assert b_at(t, 0.002 * t, 293.0) == pytest.approx(0.586)


def _runs(b_per_K, volume_per_K, equilibrated=True, n_ind=8.0, lindemann=0.08):
    runs = []
    for ens in ("nvt_langevin", "npt_berendsen"):
        for t in (300.0, 600.0):
            v = 45.0 + volume_per_K * t if ens.startswith("npt") else 45.0
            runs.append({"ensemble": ens, "temperature_K": t, "replica": 0,
                         "lattice": {"a": v ** (1 / 3), "b": v ** (1 / 3), "c": v ** (1 / 3)}, "volume_parent_A3": v,
                         "summary": {"equilibrated": equilibrated, "misses": [], "window_T_K": t, "window_T_sem_K": 5.0,
                                     "n_independent_snapshots": n_ind, "n_snapshots": 8, "tau_int_E_pot_fs": 20.0,
                                     "sample_interval_fs": 50.0, "lindemann_ratio": lindemann,
                                     "melted": lindemann > 0.2, "B_iso_A2": {"Cu": b_per_K * t}}})
    return runs


def _reference():
    return {"relax_converged": True, "relaxed": True, "lattice_deviation_pct": {"a_pct": 0.5, "b_pct": 0.5,
                                                                                  "c_pct": 0.5, "volume_pct": 1.5},
            "relaxed_lattice": {"a": 3.63, "b": 3.63, "c": 3.63}, "cif_lattice": {"a": 3.615, "b": 3.615, "c": 3.615},
            "eos": {"V0_A3": 47.8, "E0_eV": -16.0, "B0_GPa": 120.0, "B0_prime": 5.0, "fit_rms_meV": 0.1}}


TOL = {"min_independent_snapshots": 4, "lattice_tolerance": 0.01, "alpha_tolerance": 0.3,
       "bulk_modulus_tolerance": 0.2, "B_iso_tolerance": 0.2}


def test_crystal_qc_compares_with_experiment_and_flags():
    crystal = {"name": "Cu", "reference_T_K": 293.0,
               "B_exp_A2": {"value": {"Cu": 0.55}, "source": "Peng et al. 1996"},
               "bulk_modulus_exp_GPa": {"value": 140.0, "source": "Kittel"},
               "alpha_exp_per_K": {"value": 16.5e-6, "source": "CRC"},
               "a_exp_A": {"value": 3.615, "T_K": 293.0, "source": "NBS"}}
    runs = _runs(b_per_K=0.55 / 293.0 * 1.1, volume_per_K=0.0025)
    fig, rows = crystal_qc(crystal, _reference(), runs, TOL)
    status = {(r["scope"], r["check"]): r["status"] for r in rows}
    by_check = {r["check"]: r for r in rows if r["scope"] == "crystal"}
    assert fig["B_at_reference_A2"]["Cu"] == pytest.approx(0.605)
    assert by_check["B_iso_Cu_vs_experiment"]["deviation"] == pytest.approx(0.1) and \
        by_check["B_iso_Cu_vs_experiment"]["status"] == "pass"
    assert by_check["bulk_modulus_vs_experiment"]["status"] == "pass"  # -14 % within 20 %
    alpha = 0.0025 / (3 * (45.0 + 0.0025 * 450.0))
    assert fig["alpha_L_per_K"] == pytest.approx(alpha)
    assert by_check["alpha_L_vs_experiment"]["status"] == "pass"  # 18e-6 vs 16.5e-6
    a_model = (45.0 + 0.0025 * 293.0) ** (1 / 3)  # line through the NPT a(T), close to the cube root
    assert by_check["lattice_constant_vs_experiment"]["value"] == pytest.approx(a_model, rel=1e-4)
    assert by_check["lattice_constant_vs_experiment"]["status"] == "warn"  # 3.58 vs 3.615: -1.1 %
    assert all(v == "pass" for (scope, check), v in status.items() if scope != "crystal")
    assert all(r["deviation"] is None for r in rows if r["scope"] != "crystal")  # flags, not comparisons

    _, rows = crystal_qc(crystal, _reference(), _runs(0.002, 0.0025, equilibrated=False, n_ind=2.0,
                                                       lindemann=0.3), TOL)
    warned = {r["check"] for r in rows if r["status"] == "warn" and r["scope"] != "crystal"}
    assert warned == {"equilibrated", "independent_snapshots", "not_melted"}


def test_crystal_qc_without_experiment_or_npt_has_no_comparison_rows():
    runs = [r for r in _runs(0.002, 0.0) if r["ensemble"] == "nvt_langevin"]
    fig, rows = crystal_qc({"name": "Cu"}, _reference(), runs, TOL)
    assert fig["alpha_L_per_K"] is None and fig["B_reference_runs"] == "all"
    assert not [r for r in rows if r["check"].endswith("_vs_experiment")]
    assert fig["B_at_reference_A2"]["Cu"] == pytest.approx(0.002 * 293.0)
