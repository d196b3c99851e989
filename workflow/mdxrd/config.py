"""Workflow configuration: validation, the run grid, per-stage parameters and the results layout.

The Snakemake rules (``workflow/rules/common.smk``) and the dataset stage use the
same functions here, so the grid and the file layout are defined once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: JSON schema of the configuration (YAML), shipped in the repository's config/.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "config.schema.yaml"

#: Layout of results, relative to the results root; ``{run}`` is :data:`RUN`.
RUN = "{crystal}/{ensemble}/{temperature}K/r{replica}"
LAYOUT = {
    "relaxed_cif": "structure/{crystal}/relaxed.cif",
    "supercell": "structure/{crystal}/supercell.traj",
    "structure_info": "structure/{crystal}/structure.json",
    "thermo": f"md/{RUN}/thermo.csv",
    "trajectory": f"md/{RUN}/trajectory.traj",
    "velocities": f"md/{RUN}/velocities.npy",
    "run_info": f"md/{RUN}/run.json",
    "snapshots": f"snapshots/{RUN}/snapshots.traj",
    "snapshots_summary": f"snapshots/{RUN}/summary.json",
    "reflections": f"xrd/{RUN}/reflections.parquet",
    "patterns": f"xrd/{RUN}/patterns.npz",
    "average": f"average/{RUN}/average.npz",
    "reference": "reference/{crystal}/reference.json",
    "static": "reference/{crystal}/static.npz",
    "qc": "qc/{crystal}/qc.json",
    "qc_table": "qc/{crystal}/qc.parquet",
    "plot_patterns": "plots/{crystal}/patterns.png",
    "plot_zoom": "plots/{crystal}/zoom.png",
    "plot_thermal": "plots/{crystal}/thermal.png",
    "plot_traces": "plots/{crystal}/traces.png",
    "qc_html": "plots/{crystal}/qc.html",
    "dataset": "dataset/patterns.parquet",
}


class ConfigError(ValueError):
    """A configuration (or an input it names) that cannot run; the message names file and field."""


def prepare_job_environment(package_root: str, python: str) -> None:
    """Make workflow jobs run ``python -m mdxrd`` from ``package_root`` with interpreter ``python``.

    Prepends ``package_root`` to PYTHONPATH and the directory of ``python`` to PATH
    (a conda env activated for a rule comes first again, so its python is used there).
    """
    import os

    for var, value in (("PYTHONPATH", package_root), ("PATH", os.path.dirname(python))):
        os.environ[var] = os.pathsep.join(p for p in (value, os.environ.get(var)) if p)


def format_temperature(temperature_K: float) -> str:
    """Temperature as it appears in paths and wildcards: ``300``, ``600``, ``312.5``."""
    return f"{float(temperature_K):g}"


@dataclass(frozen=True)
class RunKey:
    """One MD run of the grid: crystal x ensemble x temperature x replica."""

    crystal: str
    ensemble: str
    temperature_K: float
    replica: int

    @property
    def wildcards(self) -> dict[str, str]:
        """Values of the Snakemake wildcards {crystal}, {ensemble}, {temperature}, {replica}."""
        return {"crystal": self.crystal, "ensemble": self.ensemble,
                "temperature": format_temperature(self.temperature_K), "replica": str(self.replica)}

    def path(self, kind: str, results: str | Path = "results") -> Path:
        """Path of output ``kind`` (a key of :data:`LAYOUT`) of this run under ``results``."""
        return Path(results) / LAYOUT[kind].format(**self.wildcards)


def runs(config: dict[str, Any]) -> list[RunKey]:
    """The run grid in a fixed order: crystals (config order) x ensembles x temperatures x replicas."""
    return [RunKey(c["name"], e, float(t), r)
            for c, e, t, r in itertools.product(config["crystals"], config["ensembles"],
                                                config["temperatures_K"], range(config["replicas"]))]


def crystal(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The crystals-table entry called ``name``."""
    return next(c for c in config["crystals"] if c["name"] == name)


def md_params(config: dict[str, Any], key: RunKey) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.md.MDParams` for run ``key`` (seed derived per run)."""
    from mdxrd.md import run_seed

    md = config["md"]
    xtal = crystal(config, key.crystal)
    return {
        "ensemble": key.ensemble,
        "temperature_K": key.temperature_K,
        "timestep_fs": md["timestep_fs"],
        "n_steps": md["n_steps"],
        "n_equil": md["n_equil"],
        "n_interval": md["n_interval"],
        "friction_per_fs": md["friction_per_fs"],
        "taut_fs": md["taut_fs"],
        "taup_fs": md["taup_fs"],
        "pressure_GPa": md["pressure_GPa"],
        "compressibility_per_GPa": xtal.get("compressibility_per_GPa", md["compressibility_per_GPa"]),
        "thermo_interval": md["thermo_interval"],
        "checkpoint_interval": md["checkpoint_interval"],
        "seed": run_seed(config["seed"], key.crystal, key.ensemble, key.temperature_K, key.replica),
        "device": md["device"],
        "threads": md["threads"],
        "calculator": md["calculator"],
        "npt_integrator": md["npt_integrator"],
        **{k: md[k] for k in ("npt_cell", "start_temperature_factor", "npt_pre_steps", "equil_taup_fs")},
    }


def structure_params(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.structure.StructureParams` for crystal ``name``."""
    s = config["structure"]
    return {"supercell": list(crystal(config, name).get("supercell", [2, 2, 2])), "relax": s["relax"],
            "fmax_eV_per_A": s["fmax_eV_per_A"], "relax_max_steps": s["relax_max_steps"],
            "max_atoms": s["max_atoms"], "device": config["md"]["device"], "threads": config["md"]["threads"]}


def snapshot_params(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`mdxrd.snapshots.run_stage`."""
    md = config["md"]
    return {**{k: md[k] for k in ("n_steps", "n_equil", "n_interval", "timestep_fs")},
            **{k: config["snapshots"][k] for k in ("lindemann_threshold", "temperature_tolerance",
                                                     "pressure_tolerance_GPa", "volume_drift_tolerance")}}


def reference_params(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.reference.ReferenceParams`."""
    r = config["reference"]
    return {"eos_volume_range": r["eos_volume_range"], "eos_points": r["eos_points"],
            "fmax_eV_per_A": config["structure"]["fmax_eV_per_A"], "device": config["md"]["device"],
            "threads": config["md"]["threads"]}


def crystal_runs(config: dict[str, Any], name: str, kinds: tuple[str, ...], results: str | Path = "results"
                 ) -> list[dict[str, Any]]:
    """The runs of crystal ``name``: ensemble, temperature_K, replica, supercell and the path of each of ``kinds``."""
    sc = list(crystal(config, name).get("supercell", [2, 2, 2]))
    return [{"ensemble": k.ensemble, "temperature_K": k.temperature_K, "replica": k.replica, "supercell": sc,
             **{kind: str(k.path(kind, results)) for kind in kinds}}
            for k in runs(config) if k.crystal == name]


def xrd_params(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`mdxrd.xrd.run_stage` (crystal ``name`` sets the supercell)."""
    x = config["xrd"]
    out: dict[str, Any] = {"wavelength": x["wavelength"], "two_theta_range": [x["two_theta_min"], x["two_theta_max"]],
                           "two_theta_step": x["two_theta_step"], "sigma_deg": x["sigma_deg"]}
    if name is not None:
        out["supercell"] = list(crystal(config, name).get("supercell", [2, 2, 2]))
    return out


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the resolved configuration as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- validation

def _allowed(schema: Any) -> str:
    """Human-readable allowed values of a (sub)schema: its enum, or its type and bounds."""
    if not isinstance(schema, dict):
        return ""
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(filter(None, (_allowed(s) for s in schema.get("oneOf", schema.get("anyOf", [])))))
    bounds = [f"{op} {schema[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                ("exclusiveMaximum", "<")) if k in schema]
    return " ".join(filter(None, [f"a {schema['type']}" if "type" in schema else "", ", ".join(bounds)]))


def _schema_errors(config: dict[str, Any]) -> Iterator[str]:
    """Validate against the JSON schema with snakemake.utils.validate (defaults filled in place)."""
    import jsonschema
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except Exception as err:  # snakemake wraps the jsonschema error in a WorkflowError
        verr = next((e for e in (*err.args, err.__cause__, err.__context__)
                     if isinstance(e, jsonschema.ValidationError)), None)
        if verr is None:
            raise
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in verr.absolute_path).lstrip(".")
        msg = verr.message
        if verr.validator in ("enum", "oneOf", "anyOf", "type"):
            msg += f" (allowed: {_allowed(verr.schema)})"
        yield f"{where or '(top level)'}: {msg}"


def validate_config(config: dict[str, Any], source: str = "config", check_inputs: bool = True) -> dict[str, Any]:
    """Validate a configuration and fill in defaults; return the resolved copy.

    Checks, in order: the JSON schema (types, ranges of METHOD.md, allowed
    names), then what a schema cannot say: unique crystal names, n_equil <
    n_steps, at least one snapshot per run, two_theta_min < two_theta_max, and
    (``check_inputs``) every CIF readable, ordered and of CHGNet elements, every
    supercell within structure.max_atoms, and the wavelength putting at least one
    reflection of every crystal inside the 2theta range.

    Raises
    ------
    ConfigError
        The first problem found, as ``"{source}: {field}: {what is wrong and allowed}"``.
    """
    config = copy.deepcopy(config) if config is not None else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    for err in _schema_errors(config):
        raise ConfigError(f"{source}: {err}")

    names = [c["name"] for c in config["crystals"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: crystals: names must be unique, {', '.join(dup)} appears more than once")
    md = config["md"]
    if md["n_equil"] >= md["n_steps"]:
        raise ConfigError(f"{source}: md.n_equil: {md['n_equil']} must be smaller than md.n_steps = {md['n_steps']}")
    if md["n_equil"] + md["n_interval"] > md["n_steps"]:
        raise ConfigError(
            f"{source}: md.n_interval: {md['n_interval']} yields no snapshot; allowed: 1 to "
            f"md.n_steps - md.n_equil = {md['n_steps'] - md['n_equil']}")
    x = config["xrd"]
    if x["two_theta_min"] >= x["two_theta_max"]:
        raise ConfigError(f"{source}: xrd.two_theta_min: {x['two_theta_min']} must be below "
                          f"xrd.two_theta_max = {x['two_theta_max']}")
    if check_inputs:
        for i, c in enumerate(config["crystals"]):
            _check_crystal(config, c, f"{source}: crystals[{i}] ({c['name']})")
    return config


def _check_crystal(config: dict[str, Any], entry: dict[str, Any], where: str) -> None:
    from mdxrd.structure import StructureError, check_supercell_size, read_structure
    from mdxrd.xrd import diffract_structure, resolve_wavelength

    try:
        structure = read_structure(entry["cif"])
        check_supercell_size(len(structure), entry.get("supercell", [2, 2, 2]), config["structure"]["max_atoms"],
                             "supercell")
    except StructureError as err:
        field = "supercell" if str(err).startswith("supercell") else "cif"
        raise ConfigError(f"{where}.{field}: {err}") from None
    b_exp = entry.get("B_exp_A2")
    if b_exp is not None:
        elements = sorted({el.symbol for el in structure.composition.elements})
        extra = sorted(set(b_exp["value"]) - set(elements))
        if extra:
            raise ConfigError(f"{where}.B_exp_A2.value: element(s) {', '.join(extra)} are not in {entry['cif']} "
                              f"(allowed: {', '.join(elements)})")
    x = config["xrd"]
    refl = diffract_structure(structure, wavelength=resolve_wavelength(x["wavelength"]),
                              two_theta_range=(x["two_theta_min"], x["two_theta_max"]))
    # Systematic absences come out at ~1e-27 electrons^2; a real reflection is many orders above 1e-6.
    if refl.intensity.max(initial=0.0) <= 1e-6:
        raise ConfigError(
            f"{where}: xrd.wavelength: {x['wavelength']} puts every reflection of {entry['cif']} outside "
            f"2theta {x['two_theta_min']}-{x['two_theta_max']} deg; choose a shorter wavelength or a wider range")


def load_config(path: str | Path, check_inputs: bool = True) -> dict[str, Any]:
    """Read a YAML configuration file and return it validated with defaults (see :func:`validate_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return validate_config(data, str(path), check_inputs=check_inputs)
