"""Configuration: the schema and the checks beyond it reject bad input with a message naming the field."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdxrd.config import ConfigError, load_config, validate_config
from mdxrd.grid import md_batches, md_job_mem_mb, runs, shard_runs, shards
from mdxrd.params import md_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_raw() -> dict:
    """The default config with its crystal sheet read into the list form (the tests edit entries)."""
    from mdxrd.crystals import read_sheet

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert raw["crystals"] == "config/crystals.tsv"
    raw["crystals"] = read_sheet(REPO / "config" / "crystals.tsv")
    return raw


def _with(raw: dict, path: str, value) -> dict:
    cfg = copy.deepcopy(raw)
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    return cfg


def test_default_config_is_valid_and_resolves_defaults(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["md"]["timestep_fs"] == 1.0 and cfg["md"]["n_steps"] == 500
    assert cfg["xrd"]["sigma_deg"] == 0.3 and cfg["xrd"]["wavelength"] == "CuKa1"
    assert len(runs(cfg)) == 3 * 3 * 2


def test_defaults_filled_from_schema(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = validate_config({"crystals": [{"name": "Si", "cif": "config/structures/Si.cif"}]})
    assert cfg["md"] == {**cfg["md"], "timestep_fs": 1.0, "n_steps": 500, "n_equil": 100, "n_interval": 50,
                         "friction_per_fs": 0.01, "taut_fs": 100.0, "taup_fs": 1000.0}
    assert cfg["crystals"][0]["supercell"] == [2, 2, 2]
    assert cfg["ensembles"] == ["nvt_langevin", "nvt_berendsen", "npt_berendsen"]
    p = md_params(cfg, runs(cfg)[0])
    assert p["pressure_GPa"] == pytest.approx(1.01325e-4) and p["compressibility_per_GPa"] == 0.01


@pytest.mark.parametrize(("path", "value", "expect"), [
    ("md.timestep_fs", 10.0, "md.timestep_fs: 10.0 is greater than the maximum of 5.0"),
    ("md.timestep_fs", 0.05, "md.timestep_fs: 0.05 is less than the minimum of 0.1"),
    ("temperatures_K", [0], "temperatures_K[0]: 0 is less than or equal to the minimum of 0"),
    ("temperatures_K", [-5], "temperatures_K[0]"),
    ("ensembles", ["nve"], "ensembles[0]: 'nve' is not one of ["),
    ("crystals.0.supercell", [0, 2, 2], "crystals[0].supercell[0]: 0 is less than the minimum of 1"),
    ("xrd.sigma_deg", 0.0, "xrd.sigma_deg: 0.0 is less than or equal to the minimum of 0"),
    ("md.n_interval", 0, "md.n_interval: 0 is less than the minimum of 1"),
    ("md.n_equil", 500, "md.n_equil: 500 must be smaller than md.n_steps = 500"),
    ("md.n_interval", 450, "md.n_interval: 450 yields no snapshot; allowed: 1 to md.n_steps - md.n_equil = 400"),
    ("md.thermostat", 1, "Additional properties are not allowed"),
    ("xrd.wavelength", "CuKb", "xrd.wavelength"),
    ("xrd.two_theta_min", 95.0, "xrd.two_theta_min: 95.0 must be below xrd.two_theta_max = 90.0"),
    ("crystals.0.a_exp_A", {"value": 5.43}, "crystals[0].a_exp_A: 'source' is a required property"),
    ("crystals.0.alpha_exp_per_K", 2.6e-6, "crystals[0].alpha_exp_per_K: 2.6e-06 is not of type 'object'"),
    ("crystals.0.B_exp_A2", {"value": {"Si": -0.4}, "source": "x"}, "crystals[0].B_exp_A2.value.Si: -0.4"),
    ("qc.min_independent_snapshots", -1, "qc.min_independent_snapshots: -1 is less than the minimum of 0"),
    ("reference.eos_points", 3, "reference.eos_points: 3 is less than the minimum of 5"),
    ("md.runs_per_job", 0, "md.runs_per_job: 0 is not valid under any of the given schemas (allowed: an integer >= 1"
                           " or one of auto)"),
    ("md.runs_per_job", "all", "md.runs_per_job: 'all' is not valid"),
])
def test_bad_values_rejected_with_field(default_raw, monkeypatch, path, value, expect):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as err:
        validate_config(_with(default_raw, path, value), "my.yaml")
    assert str(err.value).startswith("my.yaml: ")
    assert expect in str(err.value)


def test_experimental_b_of_an_element_not_in_the_crystal(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    raw = _with(default_raw, "crystals.1.B_exp_A2", {"value": {"Na": 1.6, "K": 1.0}, "source": "x"})
    with pytest.raises(ConfigError, match=r"crystals\[1\] \(NaCl\)\.B_exp_A2\.value: element\(s\) K are not in "
                                          r"config/structures/NaCl\.cif \(allowed: Cl, Na\)"):
        validate_config(raw, "c.yaml")


def test_duplicate_crystal_names(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    raw = copy.deepcopy(default_raw)
    raw["crystals"][1]["name"] = "Si"
    with pytest.raises(ConfigError, match="names must be unique, Si appears more than once"):
        validate_config(raw, "c.yaml")


def test_instrument_conditions_resolved_and_checked(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    raw = copy.deepcopy(default_raw)
    raw["xrd"] = {**raw.get("xrd", {}), "wavelength": "MoKa1", "sigma_deg": 0.1}
    raw["instrument"] = [{"name": "a"}, {"name": "b", "caglioti": [0.0, 0.0, 0.01], "noise_counts": 1000}]
    cfg = validate_config(raw, "c.yaml")
    assert cfg["instrument"][0] == {"name": "a", "wavelength": "MoKa1", "sigma_deg": 0.1, "scherrer_k": 0.9,
                                    "strain": 0.0, "zero_shift_deg": 0.0, "displacement_mm": 0.0,
                                    "goniometer_radius_mm": 240.0, "background": [], "noise_seed": 0}
    assert "sigma_deg" not in cfg["instrument"][1] and cfg["instrument"][1]["caglioti"] == [0.0, 0.0, 0.01]
    raw["instrument"] = [{"name": "a"}, {"name": "a", "eta": 0.5}]
    with pytest.raises(ConfigError, match="instrument: names must be unique, a appears more than once"):
        validate_config(raw, "c.yaml")
    raw["instrument"] = [{"name": "a", "background": [0.01, 0.05]}]
    with pytest.raises(ConfigError, match=r"instrument\[0\] \(a\): .*Chebyshev background .* is negative"):
        validate_config(raw, "c.yaml")


def test_missing_cif_named(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"crystals\[0\] \(Si\)\.cif: nope\.cif: file not found"):
        validate_config(_with(default_raw, "crystals.0.cif", "nope.cif"), "c.yaml")


def test_supercell_too_large(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    raw = _with(default_raw, "crystals.0.supercell", [5, 5, 5])
    with pytest.raises(ConfigError, match="would have 1000 atoms, more than structure.max_atoms = 512"):
        validate_config(raw, "c.yaml")


def test_wavelength_outside_range(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    raw = _with(default_raw, "xrd.wavelength", 12.0)  # 2 sin(45 deg)/12 A < 1/d_max for Si, NaCl, Cu
    with pytest.raises(ConfigError, match="puts every reflection"):
        validate_config(raw, "c.yaml")


def test_check_cli_exit_codes(tmp_path):
    # in a directory of its own (its checked records go to tmp_path/results, not the repository's)
    (tmp_path / "config").symlink_to(REPO / "config")
    good = subprocess.run([sys.executable, "-m", "mdxrd", "check", "config/config.yaml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "18 MD run(s)" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "config" / "config.yaml").read_text().replace("timestep_fs: 1.0", "timestep_fs: 9.0"))
    res = subprocess.run([sys.executable, "-m", "mdxrd", "check", str(bad)], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert "md.timestep_fs: 9.0 is greater than the maximum of 5.0" in res.stderr
    assert "Traceback" not in res.stderr


def test_shards_and_md_batches(default_raw, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = validate_config(default_raw)
    assert shards(cfg) == {"s000000": ["Si"], "s000001": ["NaCl"], "s000002": ["Cu"]}  # default: a crystal each
    grid = [(e, t) for e in ("nvt_langevin", "nvt_berendsen", "npt_berendsen") for t in (300.0, 600.0)]

    def split(c, shard="s000000"):
        return [[(r.ensemble, r.temperature_K) for r in batch] for batch in md_batches(c, shard)]

    assert split(cfg) == [grid]  # auto: the 6 runs of a crystal in one batch
    assert split(_with(cfg, "md.runs_per_job", 4)) == [grid[:4], grid[4:]]
    assert split(_with(cfg, "md.runs_per_job", 1)) == [[g] for g in grid]
    # auto under a memory cap: a 64-atom supercell needs 0.025 x 64^2 = 102 MB per run
    assert md_job_mem_mb("fast", 64, 6) == 1000 + int(0.025 * 64**2 * 6)
    assert [len(b) for b in md_batches(_with(cfg, "md.max_job_mem_mb", 1000 + 2 * 103), "s000000")] == [2, 2, 2]
    # two crystals a shard: Si and NaCl in s000000, Cu alone in s000001; batches run across crystals
    two = validate_config({**default_raw, "shards": {"crystals": 2}})
    assert shards(two) == {"s000000": ["Si", "NaCl"], "s000001": ["Cu"]}
    assert [r.unit for r in shard_runs(two, "s000000")] == ["Si"] * 6 + ["NaCl"] * 6
    assert [len(b) for b in md_batches(two, "s000000")] == [12]
    # appending a crystal changes only the last shard
    listed = [{"name": n, "cif": f"config/structures/{c}.cif", "supercell": [2, 2, 2]}
              for n, c in (("Si", "Si"), ("NaCl", "NaCl"), ("Cu", "Cu"), ("Cu2", "Cu"))]
    more = validate_config({**default_raw, "shards": {"crystals": 2}, "crystals": listed})
    assert shards(more) == {"s000000": ["Si", "NaCl"], "s000001": ["Cu", "Cu2"]}


def test_numbers_given_on_the_command_line_are_numbers(default_raw, monkeypatch):
    # Snakemake hands `--config shards={crystals: 2} md={runtime_ms_per_atom_step: 1.5}` over as strings
    monkeypatch.chdir(REPO)
    cfg = validate_config({**default_raw, "shards": {"crystals": "2"},
                           "md": {**default_raw["md"], "runtime_ms_per_atom_step": "1.5", "n_steps": "400"}})
    assert (cfg["shards"]["crystals"], cfg["md"]["runtime_ms_per_atom_step"], cfg["md"]["n_steps"]) == (2, 1.5, 400)
    with pytest.raises(ConfigError, match=re.escape("shards.crystals: 'two' is not of type 'integer'")):
        validate_config({**default_raw, "shards": {"crystals": "two"}})


@pytest.mark.parametrize(("change", "expect"), [
    ({"shards": {"crystals": 0}}, "shards.crystals: 0 is less than the minimum of 1"),
    ({"shards": {"crystals": 2.5}}, "shards.crystals: 2.5 is not of type 'integer'"),
    ({"md": {"max_job_mem_mb": 1050}}, "md.max_job_mem_mb: 1050 MB cannot hold one MD run of this crystal "
                                       "(64 atoms: 1102 MB estimated); allowed: at least 1102"),
])
def test_bad_shard_and_memory_settings(default_raw, monkeypatch, change, expect):
    monkeypatch.chdir(REPO)
    raw = copy.deepcopy(default_raw)
    for key, value in change.items():
        raw[key] = {**raw.get(key, {}), **value}
    with pytest.raises(ConfigError, match=re.escape(expect)):
        validate_config(raw, "c.yaml")
