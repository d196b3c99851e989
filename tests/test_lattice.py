"""Anchored lattices (config lattice: experiment, mdxrd.lattice): the targets of each method, the lattice-system
ties between axes, the missing fields named at parse time, and, end to end through the post stage, Bragg peaks
at experiment's lattice with the fractional coordinates (and so the thermal motion) kept."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from ase.calculators.emt import EMT

from conftest import cu_fcc
from mdxrd import xrd
from mdxrd.lattice import anchor, missing_fields, scale_cell

CUBIC = {"a": 5.50, "b": 5.50, "c": 5.50}
HEX = {"a": 3.21, "b": 3.21, "c": 5.21}


def _exp(value, T_K=None):
    return {"value": value, "source": "test", **({"T_K": T_K} if T_K is not None else {})}


def test_alpha_exp_target_ties_cubic_axes():
    crystal = {"a_exp_A": _exp(5.431, 295.0), "alpha_exp_per_K": _exp(2.6e-6)}
    out = anchor(crystal, 600.0, {"a": 5.52, "b": 5.52, "c": 5.52}, CUBIC)
    target = 5.431 * (1 + 2.6e-6 * (600.0 - 295.0))
    assert out["method"] == "alpha_exp"
    for x in "abc":
        assert out["target_A"][x] == pytest.approx(target, rel=1e-14)
        assert out["scale"][x] == pytest.approx(target / 5.52, rel=1e-14)


def test_per_axis_alpha_and_reference_temperature_default():
    crystal = {"reference_T_K": 300.0, "a_exp_A": _exp(3.209), "c_exp_A": _exp(5.211, 290.0),
               "alpha_a_exp_per_K": _exp(25e-6), "alpha_c_exp_per_K": _exp(27e-6)}
    out = anchor(crystal, 500.0, {"a": 3.25, "b": 3.25, "c": 5.30}, HEX)
    assert out["method"] == "alpha_exp"
    a_t, c_t = 3.209 * (1 + 25e-6 * 200.0), 5.211 * (1 + 27e-6 * 210.0)
    assert out["target_A"] == pytest.approx({"a": a_t, "b": a_t, "c": c_t}, rel=1e-14)
    assert out["scale"]["c"] == pytest.approx(c_t / 5.30, rel=1e-14)


def test_npt_fit_uses_the_potentials_expansion():
    # the potential's a(T) = 5.50 (1 + 4e-6 T): anchored at 293 K to 5.431, its relative expansion kept
    npt = [(t, {x: 5.50 * (1 + 4e-6 * t) for x in "abc"}) for t in (300.0, 600.0, 900.0)]
    crystal = {"a_exp_A": _exp(5.431, 293.0)}
    out = anchor(crystal, 600.0, {x: 5.50 for x in "abc"}, CUBIC, npt)  # an NVT run at the 0 K cell
    assert out["method"] == "npt_fit"
    assert out["target_A"]["a"] == pytest.approx(5.431 * (1 + 4e-6 * 600) / (1 + 4e-6 * 293), rel=1e-12)


def test_reference_without_expansion_and_missing_fields_keep_the_potential():
    out = anchor({"a_exp_A": _exp(5.431)}, 600.0, {x: 5.52 for x in "abc"}, CUBIC, [(600.0, CUBIC)])
    assert out["method"] == "reference" and out["target_A"]["c"] == 5.431  # one NPT temperature: no line
    hexagonal = {"a_exp_A": _exp(3.209), "alpha_exp_per_K": _exp(25e-6)}
    assert missing_fields(hexagonal, HEX) == ["c_exp_A"]
    kept = anchor(hexagonal, 300.0, {"a": 3.25, "b": 3.25, "c": 5.30}, HEX)
    assert kept["method"] is None and kept["scale"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_scale_cell_keeps_angles_and_fractional_coordinates():
    from ase.build import bulk

    atoms = bulk("Mg", "hcp", a=3.21, c=5.21)
    atoms.rattle(0.05, seed=1)
    out = scale_cell(atoms, {"a": 0.99, "b": 0.99, "c": 1.02})
    np.testing.assert_allclose(out.cell.angles(), atoms.cell.angles(), atol=1e-12)
    np.testing.assert_allclose(out.cell.lengths(), atoms.cell.lengths() * [0.99, 0.99, 1.02], rtol=1e-14)
    np.testing.assert_allclose(out.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-14)


def test_parse_time_warning_lists_crystals_without_experimental_lattice(monkeypatch, caplog):
    from pathlib import Path

    import yaml

    from mdxrd.config import ConfigError, validate_config
    from mdxrd.crystals import read_sheet

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    raw = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    raw["crystals"] = read_sheet(repo / "config" / "crystals.tsv")
    raw["crystals"][1].pop("a_exp_A")
    raw["crystals"][1].pop("a_exp_A_source", None)
    raw["lattice"] = "experiment"
    with caplog.at_level(logging.WARNING, logger="mdxrd.config"):
        validate_config(raw)
    name = raw["crystals"][1]["name"]
    assert f"{name}: a_exp_A" in caplog.text and "keep the potential's lattice" in caplog.text
    assert raw["crystals"][0]["name"] + ":" not in caplog.text
    raw["lattice"] = "cif"
    with pytest.raises(ConfigError, match=r"lattice: 'cif' is not one of \['potential', 'experiment'\]"):
        validate_config(raw)


LAMBDA = 1.5406


def _post(tmp_path, lattice):
    """EMT Cu (a = 3.59 A, 2x2x2) NVT at 300 K through the post stage, with ``lattice`` the job's experiment entry
    (None: lattice: potential)."""
    from ase.io import write

    from mdxrd.io import read_json, write_json
    from mdxrd.md import MDParams, run_md
    from mdxrd.post import process_run

    md = dict(n_steps=120, n_equil=60, n_interval=20, timestep_fs=2.0)
    sites = cu_fcc(a=3.59, repeat=2)
    run_md(sites, MDParams(ensemble="nvt_langevin", temperature_K=300.0, seed=3, **md), tmp_path / "md", calc=EMT(),
           stamp="test")
    write(tmp_path / "supercell.traj", sites)
    write_json(tmp_path / "structure.json",
               {"centring_translations": xrd.centring_translations(cu_fcc(a=3.59, repeat=1))})
    job = {"run": {"unit": "Cu", "ensemble": "nvt_langevin", "temperature_K": 300.0, "replica": 0,
                   "supercell": [2, 2, 2]},
           "params": {"snapshots": {**md, "lindemann_threshold": 0.2},
                      "xrd": dict(two_theta_range=(40.0, 46.0), two_theta_step=0.02,
                                  instrument=[{"name": "g", "wavelength": LAMBDA, "sigma_deg": 0.1}])},
           "md_dir": str(tmp_path / "md"), "snapshots_dir": str(tmp_path / "snap"), "xrd_dir": str(tmp_path / "xrd"),
           "sites": str(tmp_path / "supercell.traj"), "structure_info": str(tmp_path / "structure.json"),
           "lattice": lattice, "npt_lengths": []}
    process_run(job)
    refl = pq.read_table(tmp_path / "xrd" / "reflections.parquet").to_pandas()
    bragg = refl[refl["is_bragg"] & (refl["h"].abs() == refl["k"].abs()) & (refl["k"].abs() == refl["l"].abs())]
    return read_json(tmp_path / "snap" / "summary.json"), bragg


def _two_theta_111(a):
    return 2 * math.degrees(math.asin(LAMBDA * math.sqrt(3) / (2 * a)))


def test_post_stage_puts_bragg_peaks_at_the_experimental_lattice(tmp_path):
    crystal = {"a_exp_A": _exp(3.6149, 293.0), "alpha_exp_per_K": _exp(16.5e-6)}
    a_t = 3.6149 * (1 + 16.5e-6 * 7.0)
    summary, bragg = _post(tmp_path / "exp", crystal)
    assert summary["lattice_anchor"]["method"] == "alpha_exp"
    assert summary["lattice_anchor"]["scale"]["a"] == pytest.approx(a_t / 3.59, rel=1e-12)
    # the (111) Bragg peak of every snapshot at Bragg's law for the anchored a (NVT: the cell is fixed)
    np.testing.assert_allclose(bragg["two_theta"], _two_theta_111(a_t), atol=1e-9)
    plain, bragg_pot = _post(tmp_path / "pot", None)
    assert "lattice_anchor" not in plain
    np.testing.assert_allclose(bragg_pot["two_theta"], _two_theta_111(3.59), atol=1e-9)
    # the thermal motion is the potential's: same B, and the Bragg intensities differ only by f(s) and LP
    assert summary["B_iso_A2"] == plain["B_iso_A2"]
    assert abs(_two_theta_111(a_t) - _two_theta_111(3.59)) > 0.2  # the shift the test names: 0.31 deg


def test_dataset_rows_carry_the_patterns_lattice_and_the_scale(tmp_path):
    from pathlib import Path

    from mdxrd.dataset import _run_rows, instrument_columns

    crystal = {"a_exp_A": _exp(3.6149, 293.0), "alpha_exp_per_K": _exp(16.5e-6)}
    summary, _ = _post(tmp_path, crystal)
    scale = summary["lattice_anchor"]["scale"]["a"]
    inst = [{"name": "g", "wavelength": LAMBDA, "sigma_deg": 0.1}]
    key = {"ensemble": "nvt_langevin", "temperature_K": 300.0, "replica": 0, "supercell": [2, 2, 2],
           **{k: Path(tmp_path / d) for k, d in (("md", "md"), ("snapshots", "snap"), ("xrd", "xrd"))}}
    grid = np.load(tmp_path / "xrd" / "average.npz")["two_theta"]
    rows = _run_rows({"conditions": [instrument_columns(i) for i in inst]}, key, summary, grid)
    for row in rows:
        assert row["lattice_anchor"] == "alpha_exp"
        assert row["lattice_scale_a"] == row["lattice_scale_c"] == pytest.approx(scale, rel=1e-14)
        assert row["a"] == pytest.approx(3.6149 * (1 + 16.5e-6 * 7.0), rel=1e-12)  # the patterns' cell
        assert row["volume_A3"] == pytest.approx(row["a"] ** 3, rel=1e-12)
