"""Potentials: the config's choice, parse-time errors, SevenNet-0 against its own calculator, generic ASE
calculators through the single-run engine, and the comparison table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mdxrd.config import ConfigError, validate_config
from mdxrd.grid import runs, shard_units, units
from mdxrd.potentials import BUILTIN, PotentialError, make_potential, resolve_potential, unit_name

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, monkeypatch, potentials):
    monkeypatch.chdir(REPO)
    raw = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    raw["crystals"] = [c for c in raw["crystals"] if c["name"] == "Cu"]
    return validate_config({**raw, "potentials": potentials}, "c.yaml", cache_dir=tmp_path / "checked")


def test_bad_potential_is_refused_at_parse_time(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="potentials.*chgnet, chgnet-r2scan, sevennet-0, sevennet-l3i5, sevennet-mf-0"):
        _config(tmp_path, monkeypatch, ["mace-mp-0"])
    with pytest.raises(PotentialError, match="unknown potential 'nequip'.*allowed are chgnet, chgnet-r2scan, "
                                             "sevennet-0, sevennet-l3i5, sevennet-mf-0"):
        resolve_potential("nequip")
    with pytest.raises(ConfigError, match=r"potentials\[0\].*cannot import module 'no_such_pkg.calc'"):
        _config(tmp_path, monkeypatch, [{"name": "x", "module": "no_such_pkg.calc", "class": "Calc"}])
    with pytest.raises(ConfigError, match="has no class 'Nope'"):
        _config(tmp_path, monkeypatch, [{"name": "x", "module": "ase.calculators.emt", "class": "Nope"}])
    with pytest.raises(ConfigError, match="model_file /nowhere/m.model not found: point it to a local"):
        _config(tmp_path, monkeypatch, [{"name": "x", "module": "ase.calculators.emt", "class": "EMT",
                                         "model_file": "/nowhere/m.model"}])
    with pytest.raises(ConfigError, match="names must be unique"):
        _config(tmp_path, monkeypatch, ["chgnet", {"name": "chgnet", "module": "ase.calculators.emt", "class": "EMT"}])


def test_missing_package_names_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sevenn" else real(name, *a))
    with pytest.raises(PotentialError, match=r"needs the package sevenn, which is not installed: pip install '\.\[sevennet\]'"):
        resolve_potential("sevennet-0")


def test_resolved_potentials_record_version_and_model_hash():
    import hashlib
    import importlib.metadata

    import importlib.util

    for name in BUILTIN:
        p = resolve_potential(name)
        assert p["version"] == importlib.metadata.version(p["package"])
        root = Path(list(importlib.util.find_spec(p["package"]).submodule_search_locations)[0]).parent
        assert p["model_sha256"] == hashlib.sha256((root / p["model_file"]).read_bytes()).hexdigest()
    assert resolve_potential("sevennet-0")["version"] == "0.13.0"


def test_potentials_multiply_the_grid(tmp_path, monkeypatch):
    cfg = _config(tmp_path, monkeypatch, ["chgnet", "sevennet-0"])
    assert [u["name"] for u in units(cfg)] == ["Cu", "Cu@sevennet-0"]
    assert unit_name("Cu", "chgnet") == "Cu"  # the default keeps its paths when a potential is added
    keys = runs(cfg)
    assert len(keys) == 2 * len(cfg["ensembles"]) * len(cfg["temperatures_K"])
    assert {k.unit for k in keys} == {"Cu", "Cu@sevennet-0"}
    assert len({k.unit + k.label for k in keys}) == len(keys)
    assert [u["name"] for u in shard_units(cfg, "s000000")] == ["Cu", "Cu@sevennet-0"]  # a crystal's units share a shard


def _displaced_si():
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    return atoms


def test_sevennet_forces_equal_its_own_calculator():
    pytest.importorskip("sevenn")
    from sevenn.calculator import SevenNetCalculator

    atoms = _displaced_si()
    ours = make_potential(resolve_potential("sevennet-0"), "cpu")
    atoms.calc = ours
    f_ours, e_ours, s_ours = atoms.get_forces(), atoms.get_potential_energy(), atoms.get_stress()
    ref = atoms.copy()
    ref.calc = SevenNetCalculator("7net-0", device="cpu")
    np.testing.assert_allclose(f_ours, ref.get_forces(), atol=1e-5)
    assert e_ours == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(s_ours, ref.get_stress(), atol=1e-7)
    assert np.abs(f_ours).max() > 0.1  # displaced: real forces
    np.testing.assert_allclose(f_ours.sum(axis=0), 0.0, atol=1e-4)  # Newton's third law
    # a finite difference of the energy along one coordinate gives that force component
    h, i = 1e-3, 5
    e = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.calc = ours
        moved.positions[i, 0] += sign * h
        e.append(moved.get_potential_energy())
    assert -(e[0] - e[1]) / (2 * h) == pytest.approx(f_ours[i, 0], abs=2e-3)


def _package_calculator(name: str):
    """The package's own ASE calculator of a built-in potential (the oracle)."""
    if name == "chgnet-r2scan":
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(model=CHGNet.load(model_name="r2scan", verbose=False), use_device="cpu")
    from sevenn.calculator import SevenNetCalculator

    if name == "sevennet-l3i5":
        return SevenNetCalculator("7net-l3i5", device="cpu")
    return SevenNetCalculator("7net-mf-0", device="cpu", modal=name.rsplit(":", 1)[1])


@pytest.mark.parametrize("spec, oracle", [
    ("chgnet-r2scan", "chgnet-r2scan"), ("sevennet-l3i5", "sevennet-l3i5"), ("sevennet-mf-0", "mf:PBE"),
    ({"name": "sevennet-mf-0", "modal": "R2SCAN"}, "mf:R2SCAN")])
def test_more_builtins_equal_their_packages_calculators(spec, oracle):
    if oracle != "chgnet-r2scan":
        pytest.importorskip("sevenn")
    atoms = _displaced_si()
    resolved = resolve_potential(spec)
    atoms.calc = make_potential(resolved, "cpu")
    ref = atoms.copy()
    ref.calc = _package_calculator(oracle)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-5)
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), atol=1e-7)
    assert np.abs(atoms.get_forces()).max() > 0.1
    if oracle.startswith("mf:"):
        assert resolved["options"] == {"modal": oracle[3:]}
        assert resolved["name"] == {"PBE": "sevennet-mf-0", "R2SCAN": "sevennet-mf-0-r2scan"}[oracle[3:]]


def test_mf_0_modals_are_the_checkpoints():
    # the allowed modal values (checked at parse time without torch) are the checkpoint's heads, default first
    pytest.importorskip("sevenn")
    import importlib.util

    import torch

    entry = resolve_potential("sevennet-mf-0")
    root = Path(list(importlib.util.find_spec("sevenn").submodule_search_locations)[0]).parent
    config = torch.load(root / entry["model_file"], map_location="cpu", weights_only=False)["config"]
    allowed = BUILTIN["sevennet-mf-0"].options["modal"]
    assert set(allowed) == set(config["_modal_map"]) and allowed[0] == config["default_modal"]


def test_heads_and_models_differ_and_bad_options_are_named():
    pytest.importorskip("sevenn")
    atoms = _displaced_si()
    energies = {}
    for spec in ("chgnet", "chgnet-r2scan", "sevennet-mf-0", {"name": "sevennet-mf-0", "modal": "R2SCAN"}):
        resolved = resolve_potential(spec)
        atoms.calc = make_potential(resolved, "cpu")
        energies[resolved["name"]] = atoms.get_potential_energy() / len(atoms)
    # each name is its own model: r2SCAN heads bind Si more strongly than the PBE ones (eV/atom)
    assert abs(energies["chgnet"] - energies["chgnet-r2scan"]) > 0.1
    assert abs(energies["sevennet-mf-0"] - energies["sevennet-mf-0-r2scan"]) > 0.1
    with pytest.raises(PotentialError, match="modal: 'HSE' is not allowed; allowed: PBE, R2SCAN"):
        resolve_potential({"name": "sevennet-mf-0", "modal": "HSE"})
    with pytest.raises(PotentialError, match="unknown option"):
        resolve_potential({"name": "chgnet", "modal": "PBE"})


def test_generic_ase_calculator_runs_through_the_single_run_engine(tmp_path):
    from conftest import cu_fcc
    from mdxrd.md import MDParams, run_md

    emt = resolve_potential({"name": "emt", "module": "ase.calculators.emt", "class": "EMT"})
    assert emt["kind"] == "ase" and emt["package"] == "ase" and emt["model_sha256"] is None
    params = MDParams(ensemble="nvt_berendsen", temperature_K=300.0, n_steps=20, n_equil=10, n_interval=5,
                      seed=1, potential=emt)
    record = run_md(cu_fcc(a=3.59, repeat=2), params, tmp_path)
    assert record["calculator"] == "EMT" and record["potential"] == "emt"
    thermo = np.loadtxt(tmp_path / "thermo.csv", delimiter=",", skiprows=1)
    assert np.isfinite(thermo).all() and len(thermo) >= 20


def test_comparison_puts_potentials_side_by_side(tmp_path):
    """qc-potentials: one row per crystal and quantity that exists, a value and a deviation per potential."""
    import pandas as pd

    from mdxrd.qc import compare_potentials

    pots = [{"name": "chgnet"}, {"name": "sevennet-0"}]
    config = {"crystals": [{"name": "Si"}, {"name": "Cu"}], "potentials": pots}
    values = {("Si", "chgnet"): 0.68, ("Si", "sevennet-0"): 0.43, ("Cu", "chgnet"): 0.52, ("Cu", "sevennet-0"): 0.49}
    exp = {"Si": 0.485, "Cu": 0.55}
    for (xtal, pot), b in values.items():
        unit = xtal if pot == "chgnet" else f"{xtal}@{pot}"
        path = tmp_path / "qc" / unit / "qc.parquet"
        path.parent.mkdir(parents=True)
        pd.DataFrame([{"crystal": unit, "scope": "crystal", "check": f"B_iso_{xtal}_vs_experiment", "value": b,
                       "reference": exp[xtal], "deviation": b / exp[xtal] - 1, "status": "pass", "detail": ""},
                      {"crystal": unit, "scope": "run", "check": "equilibrated", "value": None, "reference": None,
                       "deviation": None, "status": "pass", "detail": ""}]).to_parquet(path)
    table = compare_potentials(config, str(tmp_path / "qc" / "{unit}"))
    assert list(table.crystal) == ["Si", "Cu"]  # config order, no row for an element a crystal does not have
    assert list(table.quantity) == ["B_iso Si (A^2)", "B_iso Cu (A^2)"]
    assert list(table.columns) == ["crystal", "quantity", "reference", "chgnet value", "chgnet dev %",
                                   "sevennet-0 value", "sevennet-0 dev %"]
    si = table.iloc[0]
    assert si["reference"] == 0.485 and si["sevennet-0 value"] == 0.43
    assert si["chgnet dev %"] == pytest.approx(100 * (0.68 / 0.485 - 1))


def test_a_builtin_potential_is_one_file(tmp_path, monkeypatch):
    # a file that defines POTENTIAL in the package's directory is found, resolved (its weights hashed) and built
    import hashlib
    import importlib.util
    import sys

    import mdxrd.potentials as potentials

    (tmp_path / "toy.py").write_text(
        "from ase.calculators.emt import EMT\n"
        "from mdxrd.potentials.base import BuiltinPotential\n"
        "POTENTIAL = BuiltinPotential(name='toy', kind='toy', package='ase', model_file='calculators/emt.py',\n"
        "                             install='pip install ase', build=lambda device, calculator: EMT())\n")
    monkeypatch.setattr(potentials, "__path__", [*potentials.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "mdxrd.potentials.toy", raising=False)
    found = potentials._builtin()
    assert list(found)[:3] == ["chgnet", "chgnet-r2scan", "sevennet-0"] and "toy" in found
    monkeypatch.setattr(potentials, "BUILTIN", found)
    entry = resolve_potential("toy")
    emt_py = Path(list(importlib.util.find_spec("ase").submodule_search_locations)[0]) / "calculators" / "emt.py"
    assert entry["model_sha256"] == hashlib.sha256(emt_py.read_bytes()).hexdigest() and entry["kind"] == "toy"
    assert type(make_potential(entry)).__name__ == "EMT"


def test_engine_torch_needs_a_potential_it_can_batch(tmp_path, monkeypatch):
    """md.engine: torch with a generic ASE calculator (or CHGNet's stock calculator) is refused at parse time,
    naming the key, the potentials and the allowed engines; CHGNet and SevenNet are accepted."""
    emt = {"name": "emt", "module": "ase.calculators.emt", "class": "EMT"}

    def with_md(potentials, **md):
        monkeypatch.chdir(REPO)
        raw = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
        raw["crystals"] = [c for c in raw["crystals"] if c["name"] == "Cu"]
        raw["md"] = {**raw.get("md", {}), **md}
        return validate_config({**raw, "potentials": potentials}, "c.yaml", cache_dir=tmp_path / "checked")

    with pytest.raises(ConfigError, match=r"c.yaml: md.engine: torch .*generic potentials \['emt'\].*allowed engines: "
                                          r"auto .*, ase, torch"):
        with_md(["chgnet", emt], engine="torch")
    with pytest.raises(ConfigError, match="calculator stock"):
        with_md(["chgnet"], engine="torch", calculator="stock")
    assert with_md(["chgnet", "sevennet-0"], engine="torch")["md"]["engine"] == "torch"
    assert with_md([emt], engine="auto")["md"]["engine"] == "auto"  # auto falls back to ase
