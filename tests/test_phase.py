"""The phase check (mdxrd.displacements.phase_check): the time-averaged crystal keeps every symmetry operation of
the input when only thermal noise moves it, and loses some when it tilts, shears or melts.

Synthetic trajectories of cubic SrTiO3 (Pm-3m): noise alone; octahedra tilted in opposite senses in neighbouring
cells about c (Glazer a0a0c-, I4/mcm, the antiferrodistortive transition at 105 K), which a sublattice mean cannot
see; a tetragonally strained cell (P4/mmm). Then real EMT Cu MD through the snapshots stage: Fm-3m kept at 300 K,
not at 6000 K (melted: a 32-atom cell superheats, Lindemann 0.19 at 4000 K).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from conftest import cu_fcc
from mdxrd.displacements import phase_check

A = 3.905  # SrTiO3, Angstrom
SIGMA_STEP = 0.08  # per-step thermal displacement per direction, Angstrom
N_T = 200


def _srtio3_supercell():
    from ase import Atoms

    cell = Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                 cell=[A, A, A], pbc=True)
    return cell.repeat((2, 2, 2))


def _trajectory(sites, static=None, cell_scale=(1.0, 1.0, 1.0), seed=0):
    """n_t steps of i.i.d. Gaussian displacements (SIGMA_STEP) about sites + ``static`` (N, 3), in a scaled cell."""
    rng = np.random.default_rng(seed)
    cell = sites.cell.array * np.asarray(cell_scale)[:, None]
    frac = sites.get_scaled_positions()
    base = frac @ cell + (0.0 if static is None else static)
    positions = base[None] + rng.normal(0.0, SIGMA_STEP, (N_T, len(sites), 3))
    positions -= positions.mean(axis=1, keepdims=True) - base.mean(axis=0)  # the centre of mass fixed
    return positions, np.repeat(cell[None], N_T, axis=0)


def _check(sites, positions, cells, melted=False):
    # i.i.d. steps: tau_int = dt / 2 = 0.5 fs, window N_T fs -> noise of a mean position SIGMA_STEP / sqrt(N_T)
    return phase_check(positions, cells, sites, SIGMA_STEP**2, 0.5, float(N_T), melted)


def _tilt(sites, angle_deg):
    """Glazer a0a0c-: the TiO6 octahedra rotate about c by +-angle, alternating in every neighbouring cell."""
    static = np.zeros((len(sites), 3))
    frac = sites.get_scaled_positions() * 2  # parent-cell coordinates in the 2x2x2 cell
    ti = [i for i, s in enumerate(sites.get_chemical_symbols()) if s == "Ti"]
    shift = A * np.tan(np.radians(angle_deg)) / 2
    for i, s in enumerate(sites.get_chemical_symbols()):
        if s != "O" or abs(frac[i, 2] % 1) < 0.25:  # the apical O (z = 0) lies on the rotation axis
            continue
        centre = min(ti, key=lambda j: np.linalg.norm(((frac[i] - frac[j] + 1) % 2) - 1))
        sense = (-1) ** int(np.floor(frac[centre, 0]) + np.floor(frac[centre, 1]) + np.floor(frac[centre, 2]))
        r = ((frac[i] - frac[centre] + 1) % 2 - 1) * A  # O relative to its octahedron's Ti
        static[i, :2] = sense * shift * np.array([-r[1], r[0]]) / (A / 2)
    return static


def test_noise_alone_keeps_the_phase():
    sites = _srtio3_supercell()
    result = _check(sites, *_trajectory(sites))
    assert result["space_group_input"] == "Pm-3m" and result["space_group_input_number"] == 221
    assert result["phase_kept"] and result["space_group_mean_number"] == 221
    assert result["phase_broken_operations"] == 0


@pytest.mark.parametrize("angle_deg", [1.0, 4.0])
def test_octahedral_tilt_breaks_the_cubic_phase(angle_deg):
    sites = _srtio3_supercell()
    static = _tilt(sites, angle_deg)  # O moved by 0.14 A at 4 degrees, like SrTiO3 well below 105 K
    result = _check(sites, *_trajectory(sites, static))
    assert not result["phase_kept"]
    assert result["space_group_mean"] == "I4/mcm" and result["space_group_mean_number"] == 140
    # the operations of Pm-3m (384 in the 2x2x2 cell) not in I4/mcm (64), however small the tilt
    assert result["phase_broken_operations"] == 320
    assert result["phase_distortion_A"] > 0.02


def test_tilt_below_the_tolerance_keeps_the_phase():
    sites = _srtio3_supercell()  # 0.7 degrees: O moved by 0.024 A, rms excess per atom 0.018 A < 0.02 A
    result = _check(sites, *_trajectory(sites, _tilt(sites, 0.7)))
    assert result["phase_kept"] and result["space_group_mean_number"] == 221


def test_strained_cell_breaks_the_cubic_phase():
    sites = _srtio3_supercell()
    result = _check(sites, *_trajectory(sites, cell_scale=(1.0, 1.0, 1.03)))
    assert not result["phase_kept"] and result["space_group_mean_number"] == 123  # P4/mmm


def test_melted_run_does_not_keep_its_phase():
    sites = _srtio3_supercell()
    assert not _check(sites, *_trajectory(sites), melted=True)["phase_kept"]


def _emt_cu_summary(tmp_path, temperature_K):
    from ase.io import write
    from mdxrd.md import MDParams, run_md
    from mdxrd.snapshots import run_stage

    md = {"n_steps": 800, "n_equil": 400, "n_interval": 100, "timestep_fs": 2.0}
    sites = cu_fcc(a=3.59, repeat=2)
    run_md(sites, MDParams(ensemble="nvt_langevin", temperature_K=temperature_K, seed=11, friction_per_fs=0.05, **md),
           tmp_path / "md", calc=EMT(), stamp="test")
    write(tmp_path / "supercell.traj", sites)
    d = tmp_path / "md"
    return run_stage(d / "trajectory.traj", d / "velocities.npy", d / "thermo.csv", tmp_path / "snapshots.traj",
                     tmp_path / "summary.json", run_info=d / "run.json", positions=d / "positions.npz",
                     sites=tmp_path / "supercell.traj", **md)


@pytest.mark.parametrize("temperature_K, kept", [(300.0, True), (6000.0, False)])
def test_emt_copper_keeps_fcc_when_solid_and_loses_it_when_molten(tmp_path, temperature_K, kept):
    summary = _emt_cu_summary(tmp_path, temperature_K)
    assert summary["space_group_input"] == "Fm-3m"
    assert summary["phase_kept"] is kept
    assert summary["melted"] is (not kept)
    if kept:
        assert summary["space_group_mean_number"] == 225 and summary["phase_broken_operations"] == 0
    else:
        assert summary["space_group_mean"] is None  # a liquid has no space group
    # the QC row: a warning exactly when the phase was lost, with the Lindemann ratio beside it
    from mdxrd.dataset import COLUMNS
    from mdxrd.qc import _run_rows

    run = {"ensemble": "nvt_langevin", "temperature_K": temperature_K, "replica": 0, "summary": summary}
    rows = _run_rows("Cu", [run], {"min_independent_snapshots": 0, "B_iso_pattern_tolerance": 0.15})
    row = next(r for r in rows if r["check"] == "phase_kept")
    assert row["status"] == ("pass" if kept else "warn")
    assert f"Lindemann ratio {summary['lindemann_ratio']:.3f}" in row["detail"]
    assert ("none (melted)" in row["detail"]) is (not kept)
    assert {"space_group_mean", "space_group_mean_number", "phase_kept"} <= {c[0] for c in COLUMNS}

