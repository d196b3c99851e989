"""The crystal table: sheets, globs, automatic supercells, checked records, parameter files, splits."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from mdxrd.config import ConfigError, load_config, validate_config
from mdxrd.crystals import (CrystalTableError, auto_supercell, glob_crystals, perpendicular_widths, read_sheet)
from mdxrd.grid import Run, split_of
from mdxrd.io import load_params
from mdxrd.params import STAGES, md_params, write_params

REPO = Path(__file__).resolve().parents[1]
STRUCTURES = REPO / "config" / "structures"


# ---------------------------------------------------------------- automatic supercell

def _cellpar_matrix(a, b, c, alpha, beta, gamma):
    from ase.geometry import cellpar_to_cell

    return cellpar_to_cell([a, b, c, alpha, beta, gamma])


@pytest.mark.parametrize("cellpar", [
    (5.43, 5.43, 5.43, 90, 90, 90),        # Si, cubic
    (3.0, 3.0, 5.0, 90, 90, 120),          # hexagonal
    (2.556, 2.556, 2.556, 60, 60, 60),     # fcc primitive (Cu)
    (4.1, 5.3, 7.9, 81.0, 97.0, 103.0),    # triclinic
])
def test_perpendicular_widths_are_interplanar_spacings(cellpar):
    # the width across face (b, c) is the spacing of the (100) planes, 1 / |a*| (reciprocal vector)
    cell = _cellpar_matrix(*cellpar)
    reciprocal = np.linalg.inv(cell).T
    np.testing.assert_allclose(perpendicular_widths(cell), 1.0 / np.linalg.norm(reciprocal, axis=1), rtol=1e-12)


@pytest.mark.parametrize(("cellpar", "expect"), [
    ((5.43, 5.43, 5.43, 90, 90, 90), [2, 2, 2]),        # 10.86 A >= 10
    ((3.615, 3.615, 3.615, 90, 90, 90), [3, 3, 3]),     # 2 x 3.615 = 7.2 A < 10
    ((3.0, 3.0, 5.0, 90, 90, 120), [4, 4, 2]),          # in-plane width a sin 60 = 2.598 A
    ((10.0, 20.0, 4.99, 90, 90, 90), [1, 1, 3]),        # exactly 10 A needs no repetition
])
def test_auto_supercell_smallest_wide_enough(cellpar, expect):
    cell = _cellpar_matrix(*cellpar)
    n = auto_supercell(cell, 10.0)
    assert n == expect
    widths = perpendicular_widths(cell)
    assert all(k * w >= 10.0 - 1e-9 for k, w in zip(n, widths))
    assert all(k == 1 or (k - 1) * w < 10.0 for k, w in zip(n, widths))  # minimal in every direction


# ---------------------------------------------------------------- sheets and globs

def test_default_sheet_matches_the_experimental_references():
    entries = {e["name"]: e for e in read_sheet(REPO / "config" / "crystals.tsv")}
    assert list(entries) == ["Si", "NaCl", "Cu"]
    si = entries["Si"]
    assert si["supercell"] == [2, 2, 2] and si["compressibility_per_GPa"] == 0.0102
    assert si["a_exp_A"]["value"] == 5.43102 and si["a_exp_A"]["T_K"] == 295.65 and "CODATA" in si["a_exp_A"]["source"]
    assert si["B_exp_A2"] == {"value": {"Si": 0.4849}, "T_K": 293.0, "source": si["B_exp_A2"]["source"]}
    assert "B_exp_A2" not in entries["NaCl"] and entries["Cu"]["B_exp_A2"]["value"] == {"Cu": 0.55}


def _sheet(tmp_path: Path, text: str, suffix: str = ".tsv") -> Path:
    path = tmp_path / f"crystals{suffix}"
    path.write_text(text)
    return path


def test_sheet_csv_auto_default_and_b_pairs(tmp_path):
    path = _sheet(tmp_path, "name,cif,B_exp_A2,B_exp_A2_source\n"
                            "# a comment line\n"
                            f"NaCl,{STRUCTURES / 'NaCl.cif'},Na:1.6 Cl:1.2,test\n", ".csv")
    (entry,) = read_sheet(path)
    assert entry["supercell"] == "auto"
    assert entry["B_exp_A2"] == {"value": {"Na": 1.6, "Cl": 1.2}, "source": "test"}


@pytest.mark.parametrize(("row", "expect"), [
    ("Si\tSi.cif\t2x2\t\t", "line 3 (Si), column supercell: '2x2' does not match"),
    ("Si\tSi.cif\t2x2x2\t5.43\t", "line 3 (Si), column a_exp_A_source: 'a_exp_A_source' is a dependency of 'a_exp_A'"),
    ("Si\tSi.cif\t2x2x2\tabc\tx", "line 3, column a_exp_A: 'abc' is not a number"),
    ("Si x\tSi.cif\t2x2x2\t\t", "line 3 (Si x), column name: 'Si x' does not match"),
    ("\tSi.cif\t2x2x2\t\t", "line 3, column name: 'name' is a required property"),
])
def test_sheet_errors_name_line_and_column(tmp_path, row, expect):
    path = _sheet(tmp_path, f"name\tcif\tsupercell\ta_exp_A\ta_exp_A_source\nCu\tCu.cif\t\t\t\n{row}\n")
    with pytest.raises(CrystalTableError) as err:
        read_sheet(path)
    assert str(err.value).startswith(f"{path}: ") and expect in str(err.value)


def test_sheet_unknown_column_and_duplicates(monkeypatch, tmp_path):
    with pytest.raises(CrystalTableError, match="column colour: Additional properties are not allowed"):
        read_sheet(_sheet(tmp_path, "name\tcif\tcolour\nSi\tSi.cif\tgrey\n"))
    monkeypatch.chdir(tmp_path)
    _sheet(tmp_path, "name\tcif\nSi\tSi.cif\nSi\tSi2.cif\n")
    with pytest.raises(ConfigError, match=r"^c\.yaml: crystals: names must be unique, Si appears more than once"):
        validate_config({"crystals": "crystals.tsv"}, "c.yaml")


def test_glob_names_by_stem(tmp_path):
    entries = glob_crystals(str(STRUCTURES / "*.cif"))
    assert [e["name"] for e in entries] == ["Bi", "Cu", "Mg", "MgCO3", "MgSiO3", "NaCl", "Si", "TiO2"]
    assert {e["supercell"] for e in entries} == {"auto"}
    with pytest.raises(CrystalTableError, match="no structure file matches"):
        glob_crystals(str(tmp_path / "*.cif"))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    shutil.copy(STRUCTURES / "Si.cif", tmp_path / "a" / "Si.cif")
    shutil.copy(STRUCTURES / "Si.cif", tmp_path / "b" / "Si.cif")
    with pytest.raises(CrystalTableError, match="would both be crystal Si"):
        glob_crystals(str(tmp_path / "*" / "*.cif"))


# ---------------------------------------------------------------- resolution in the config

def test_glob_config_resolves_auto_supercells(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    cfg = validate_config({"crystals": "config/structures/*.cif"}, "g.yaml", cache_dir=tmp_path)
    sc = {c["name"]: (c["supercell"], c["n_atoms_cell"]) for c in cfg["crystals"]}
    # widths perpendicular to the cell faces: hexagonal a sin(120 deg), monoclinic c sin(beta)
    assert sc == {"Bi": ([3, 3, 1], 6), "Cu": ([3, 3, 3], 4), "Mg": ([4, 4, 2], 2), "MgCO3": ([3, 3, 1], 30),
                  "MgSiO3": ([2, 2, 3], 40), "NaCl": ([2, 2, 2], 8), "Si": ([2, 2, 2], 8), "TiO2": ([3, 3, 4], 6)}
    narrow = validate_config({"crystals": "config/structures/*.cif", "structure": {"min_width_A": 5.0}}, "g.yaml",
                             cache_dir=tmp_path)
    assert {c["name"]: c["supercell"] for c in narrow["crystals"]} == {
        "Bi": [2, 2, 1], "Cu": [2, 2, 2], "Mg": [2, 2, 1], "MgCO3": [2, 2, 1], "MgSiO3": [1, 1, 2], "NaCl": [1, 1, 1],
        "Si": [1, 1, 1], "TiO2": [2, 2, 2]}


def test_auto_supercell_beyond_max_atoms_refused_or_skipped(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    raw = {"crystals": "config/structures/*.cif", "structure": {"max_atoms": 100}}
    with pytest.raises(ConfigError, match=r"crystals \(config/structures/\*\.cif\) Cu\.supercell: config/structures/Cu\.cif: supercell 3x3x3 "
                                          r"of 4 atoms would have 108 atoms, more than structure.max_atoms = 100 "
                                          r"for structure.min_width_A = 10.0 A"):
        validate_config(raw, "g.yaml", cache_dir=tmp_path)
    raw["structure"]["skip_too_large"] = True
    cfg = validate_config(raw, "g.yaml", cache_dir=tmp_path)
    assert [c["name"] for c in cfg["crystals"]] == ["Bi", "Mg", "NaCl", "Si"]


def test_sheet_error_reaches_the_config_message(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.tsv").write_text("name\tcif\tsupercell\nSi\tx.cif\t9x9x9\n")
    with pytest.raises(ConfigError, match=r"^c\.yaml: crystals: s\.tsv: line 2 \(Si\), column supercell"):
        validate_config({"crystals": "s.tsv"}, "c.yaml")


def test_checked_records_skip_the_cif_on_later_parses(monkeypatch, tmp_path):
    import mdxrd.structure

    monkeypatch.chdir(tmp_path)
    shutil.copy(STRUCTURES / "Si.cif", tmp_path / "Si.cif")
    raw = {"crystals": [{"name": "Si", "cif": "Si.cif"}]}
    first = validate_config(raw, "c.yaml", cache_dir=tmp_path / "checked")
    assert len(list((tmp_path / "checked").glob("*.json"))) == 1

    def no_read(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(mdxrd.structure, "read_checked_structure", no_read)
    assert validate_config(raw, "c.yaml", cache_dir=tmp_path / "checked") == first
    # another wavelength is another check; so is another content of the file
    with pytest.raises(AssertionError, match="read again"):
        validate_config({**raw, "xrd": {"wavelength": "MoKa1"}}, "c.yaml", cache_dir=tmp_path / "checked")
    (tmp_path / "Si.cif").write_text((STRUCTURES / "Si.cif").read_text() + "\n# edited\n")
    with pytest.raises(AssertionError, match="read again"):
        validate_config(raw, "c.yaml", cache_dir=tmp_path / "checked")


def test_validated_sheet_is_reused_until_it_changes(monkeypatch, tmp_path):
    import mdxrd.crystals

    monkeypatch.chdir(tmp_path)
    shutil.copy(STRUCTURES / "Si.cif", tmp_path / "Si.cif")
    sheet = tmp_path / "s.tsv"
    sheet.write_text("name\tcif\nSi\tSi.cif\n")
    first = validate_config({"crystals": "s.tsv"}, "c.yaml", cache_dir=tmp_path / "checked")
    calls = []
    real = mdxrd.crystals.read_crystal_table
    monkeypatch.setattr(mdxrd.crystals, "read_crystal_table", lambda spec: calls.append(spec) or real(spec))
    assert validate_config({"crystals": "s.tsv"}, "c.yaml", cache_dir=tmp_path / "checked") == first
    assert calls == []
    sheet.write_text("name\tcif\tsupercell\nSi\tSi.cif\t1x1x1\n")
    again = validate_config({"crystals": "s.tsv"}, "c.yaml", cache_dir=tmp_path / "checked")
    assert calls == ["s.tsv"] and again["crystals"][0]["supercell"] == [1, 1, 1]


# ---------------------------------------------------------------- parameter files and splits

def test_parameter_files_per_shard_and_stage(monkeypatch, tmp_path):
    """write_params: one file per shard and stage, no paths in them; untouched when unchanged; new files dated
    1970, changed ones now; appending a crystal writes the new shard's files only."""
    monkeypatch.chdir(REPO)
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = validate_config(raw, "c.yaml", cache_dir=tmp_path / "checked")
    results = tmp_path / "results"
    assert write_params(cfg, results) == 1 + 3 * len(STAGES)  # config.json, 3 shards x 5 stages
    si = results / "params" / "s000000"
    md = si / "md.json"
    assert md.stat().st_mtime == 0 and (si / "post.json").stat().st_mtime == 0  # creation triggers no rerun
    (batch,) = load_params(str(md))["batches"]
    assert batch[4] == json.loads(json.dumps({"unit": "Si", "ensemble": "npt_berendsen", "temperature_K": 300.0,
                                              "replica": 0, "params": md_params(cfg, Run("Si", "npt_berendsen",
                                                                                           300.0, 0))}))
    assert "results/" not in "".join(p.read_text() for p in results.rglob("params/s*/*.json"))  # no paths
    assert write_params(cfg, results) == 0
    # another sigma: the relax (static patterns), post (xrd) and dataset files change (dated now), MD's do not
    cfg2 = validate_config({**raw, "xrd": {"sigma_deg": 0.2}}, "c.yaml", cache_dir=tmp_path / "checked")
    assert write_params(cfg2, results) == 1 + 3 * 3
    assert (si / "post.json").stat().st_mtime > 0 and md.stat().st_mtime == 0
    assert load_params(f"{si / 'relax.json'}#xrd")["instrument"][0]["sigma_deg"] == 0.2
    # adding a crystal writes the config, and the new shard's files only
    raw3 = {**raw, "crystals": [*read_sheet(REPO / "config" / "crystals.tsv"),
                                {"name": "Si2", "cif": "config/structures/Si.cif"}]}
    before = {p: p.read_bytes() for p in si.glob("*.json")}
    cfg3 = validate_config(raw3, "c.yaml", cache_dir=tmp_path / "checked")
    assert write_params(cfg3, results) == 1 + 3 * 3 + len(STAGES)  # config, sigma back to 0.3, s000003
    assert all(p.read_bytes() == b for p, b in before.items()
               if p.name not in ("relax.json", "post.json", "dataset.json"))

def test_split_per_crystal_is_deterministic_and_follows_the_fractions():
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    names = [f"crystal{i}" for i in range(4000)]
    splits = [split_of(7, n, fractions) for n in names]
    assert splits == [split_of(7, n, fractions) for n in names]
    counts = Counter(splits)
    for split, f in fractions.items():  # binomial: 4 standard deviations
        assert abs(counts[split] - f * len(names)) < 4 * math.sqrt(len(names) * f * (1 - f)), counts
    other_seed = [split_of(8, n, fractions) for n in names]
    assert sum(a != b for a, b in zip(splits, other_seed)) > 0.2 * len(names)
    assert {split_of(7, n, {"train": 1.0, "validation": 0.0, "test": 0.0}) for n in names} == {"train"}


def test_load_params_forms(tmp_path):
    assert load_params('{"a": 1}') == {"a": 1}
    (tmp_path / "p.json").write_text('{"md": {"x.300K.r0": {"seed": 5}}}')
    assert load_params(f"{tmp_path / 'p.json'}#md/x.300K.r0") == {"seed": 5}
    assert load_params(str(tmp_path / "p.json")) == {"md": {"x.300K.r0": {"seed": 5}}}
    with pytest.raises(ValueError, match="parameter file not found"):
        load_params(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not JSON"):
        load_params("{bad")


def test_default_config_loads_from_the_sheet(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "config" / "config.yaml", cache_dir=tmp_path)
    assert [c["name"] for c in cfg["crystals"]] == ["Si", "NaCl", "Cu"]
    assert all(c["supercell"] == [2, 2, 2] for c in cfg["crystals"])


def test_the_shipped_non_cubic_sheet_resolves(monkeypatch, tmp_path):
    # config/noncubic.tsv: the project's non-cubic crystals (hexagonal, trigonal in hexagonal axes, tetragonal,
    # monoclinic) with their references; every CIF readable, supercells as stated
    monkeypatch.chdir(REPO)
    cfg = validate_config({"crystals": "config/noncubic.tsv"}, "n.yaml", cache_dir=tmp_path)
    assert {c["name"]: c["supercell"] for c in cfg["crystals"]} == {
        "Mg": [3, 3, 2], "Bi": [2, 2, 1], "TiO2": [2, 2, 3], "MgSiO3": [1, 1, 2], "MgCO3": [2, 2, 1]}
    assert all("c_exp_A" in c for c in cfg["crystals"] if c["name"] != "MgSiO3")
