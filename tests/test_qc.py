"""Per-run figures (energy drift), the 0 K reference (E(V), static pattern) and the QC (B_iso: test_displacements.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mdxrd.qc import b_at, crystal_qc, expansion_coefficient
from mdxrd.reference import birch_murnaghan, lattice_deviation, static_pattern
from mdxrd.snapshots import energy_drift


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
                                     "tau_int_u_fs": 30.0, "tau_int_msd_fs": 40.0,
                                     "sample_interval_fs": 50.0, "lindemann_ratio": lindemann,
                                     "melted": lindemann > 0.2, "B_iso_A2": {"Cu": b_per_K * t}}})
    return runs


def _reference():
    return {"relax_converged": True, "relaxed": True, "lattice_deviation_pct": {"a_pct": 0.5, "b_pct": 0.5,
                                                                                  "c_pct": 0.5, "volume_pct": 1.5},
            "relaxed_lattice": {"a": 3.63, "b": 3.63, "c": 3.63}, "cif_lattice": {"a": 3.615, "b": 3.615, "c": 3.615},
            "eos": {"V0_A3": 47.8, "E0_eV": -16.0, "B0_GPa": 120.0, "B0_prime": 5.0, "fit_rms_meV": 0.1}}


TOL = {"min_independent_snapshots": 4, "lattice_tolerance": 0.01, "alpha_tolerance": 0.3,
       "bulk_modulus_tolerance": 0.2, "B_iso_tolerance": 0.2, "B_iso_pattern_tolerance": 0.15}


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


def test_crystal_qc_per_axis_expansion_of_a_hexagonal_crystal():
    # a(T) = a0 (1 + 25e-6 T), c(T) = c0 (1 + 10e-6 T): alpha_a and alpha_c apart, alpha_L their mean
    a0, c0 = 3.2, 5.2
    runs = _runs(0.002, 0.0)
    for r in runs:
        t = r["temperature_K"]
        a, c = a0 * (1 + 25e-6 * t), c0 * (1 + 10e-6 * t)
        r["lattice"] = {"a": a, "b": a, "c": c}
        r["volume_parent_A3"] = np.sqrt(3) / 2 * a * a * c
    reference = {**_reference(), "relaxed_lattice": {"a": a0, "b": a0, "c": c0},
                 "cif_lattice": {"a": a0, "b": a0, "c": c0}}
    crystal = {"name": "Mg", "reference_T_K": 293.0,
               "c_exp_A": {"value": c0 * (1 + 10e-6 * 293.0) * 1.02, "source": "test"},
               "alpha_a_exp_per_K": {"value": 25e-6, "source": "test"},
               "alpha_c_exp_per_K": {"value": 20e-6, "source": "test"}}
    fig, rows = crystal_qc(crystal, reference, runs, TOL)
    assert fig["axes"] == ["a", "c"]
    assert fig["alpha_axes_per_K"]["a"] == pytest.approx(25e-6 / (1 + 25e-6 * 450), rel=1e-6)
    assert fig["alpha_axes_per_K"]["c"] == pytest.approx(10e-6 / (1 + 10e-6 * 450), rel=1e-6)
    assert fig["alpha_L_per_K"] == pytest.approx((2 * 25e-6 + 10e-6) / 3, rel=0.02)  # (1/3) dlnV/dT
    assert fig["lattice_at_reference_A"]["c"] == pytest.approx(c0 * (1 + 10e-6 * 293.0), rel=1e-9)
    by_check = {r["check"]: r for r in rows if r["scope"] == "crystal"}
    assert by_check["alpha_a_vs_experiment"]["status"] == "pass"
    assert by_check["alpha_c_vs_experiment"]["deviation"] == pytest.approx(-0.5, abs=0.01)
    assert by_check["alpha_c_vs_experiment"]["status"] == "warn"
    assert by_check["lattice_c_vs_experiment"]["deviation"] == pytest.approx(1 / 1.02 - 1, rel=1e-6)
    assert "alpha_b_vs_experiment" not in by_check  # no reference, no row


def test_crystal_qc_b_iso_against_the_runs_own_pattern():
    runs = _runs(0.002, 0.0025)
    runs[0]["pattern_debye_waller"] = {"scale": 1.05, "B_pattern_A2": {"Cu": 0.63}, "n_reflections": 30,
                                       "s2_max_per_A2": 1.5}
    runs[1]["pattern_debye_waller"] = {"scale": 0.7, "B_pattern_A2": {"Cu": 0.84}, "n_reflections": 30,
                                       "s2_max_per_A2": 1.5}
    _, rows = crystal_qc({"name": "Cu"}, _reference(), runs, TOL)
    pattern = [r for r in rows if r["check"] == "B_iso_vs_pattern"]
    assert [(r["scope"], r["status"]) for r in pattern] == [("nvt_langevin/300K/r0", "pass"),
                                                            ("nvt_langevin/600K/r0", "warn")]
    assert pattern[1]["deviation"] == pytest.approx(-0.3)
