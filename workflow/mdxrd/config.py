"""Workflow configuration: validation, the run grid, per-stage parameters and the results layout.

The Snakemake rules (``workflow/rules/common.smk``) and the dataset stage use the
same functions here, so the grid and the file layout are defined once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdxrd.io import atomic_path, read_json, write_cache

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
    "positions": f"md/{RUN}/positions.npz",
    "run_info": f"md/{RUN}/run.json",
    "snapshots": f"snapshots/{RUN}/snapshots.traj",
    "snapshots_summary": f"snapshots/{RUN}/summary.json",
    "reflections": f"xrd/{RUN}/reflections.parquet",
    "patterns": f"xrd/{RUN}/patterns.npz",
    "average": f"xrd/{RUN}/average.npz",
    "reference": "reference/{crystal}/reference.json",
    "static": "reference/{crystal}/static.npz",
    "qc": "qc/{crystal}/qc.json",
    "qc_table": "qc/{crystal}/qc.parquet",
    "qc_potentials": "qc/potentials.html",
    "qc_potentials_csv": "qc/potentials.csv",
    "plot_patterns": "plots/{crystal}/patterns.png",
    "plot_zoom": "plots/{crystal}/zoom.png",
    "plot_thermal": "plots/{crystal}/thermal.png",
    "plot_traces": "plots/{crystal}/traces.png",
    "qc_html": "plots/{crystal}/qc.html",
    "dataset_part": "dataset/crystal={crystal}/part-0.parquet",
    "dataset": "dataset/_common_metadata",
    "params": "params/{crystal}/{stage}.json",
    "params_md": "params/{crystal}/md/{ensemble}.{temperature}K.r{replica}.json",
    "params_config": "params/config.json",
}

#: Per-run outputs that the qc, plots and dataset stages read.
QC_KINDS = ("snapshots_summary", "snapshots")
PLOT_KINDS = ("average", "thermo", "snapshots_summary", "run_info")
DATASET_KINDS = ("run_info", "snapshots", "snapshots_summary", "patterns", "average")


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


def runs(config: dict[str, Any], name: str | None = None) -> list[RunKey]:
    """The run grid in a fixed order: crystals (config order) x potentials x ensembles x temperatures x replicas.

    The ``crystal`` of a run is a unit name (:func:`units`). With ``name`` (a unit name), only its runs.
    """
    crystals = [u["name"] for u in units(config)] if name is None else [name]
    return [RunKey(c, e, float(t), r)
            for c, e, t, r in itertools.product(crystals, config["ensembles"], config["temperatures_K"],
                                                range(config["replicas"]))]


_INDEX: tuple[Any, list[dict[str, Any]], dict[str, dict[str, Any]]] = (None, [], {})


def units(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every crystal with every potential, in config order: the crystal's entry with ``name`` the
    unit name (:func:`mdxrd.potentials.unit_name`: ``Si``, ``Si@sevennet-0``), ``crystal`` the
    crystal's name and ``potential`` the resolved potential. Each unit has its own structure,
    reference, MD runs, QC and plots; the dataset part of a crystal holds all its units."""
    from mdxrd.potentials import unit_name

    global _INDEX
    # the lists themselves (not their ids, which a freed list passes on): kept alive by the cache
    key = (config["crystals"], config["potentials"], len(config["crystals"]), len(config["potentials"]))
    cached = _INDEX[0]
    if cached is None or cached[0] is not key[0] or cached[1] is not key[1] or cached[2:] != key[2:]:
        table = [{**c, "name": unit_name(c["name"], p["name"]), "crystal": c["name"], "potential": p}
                 for c in config["crystals"] for p in config["potentials"]]
        _INDEX = (key, table, {u["name"]: u for u in table})
    return _INDEX[1]


def crystal(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The unit called ``name`` (:func:`units`; a dict lookup: thousands of crystals are common).

    Raises
    ------
    KeyError
        No unit of that name.
    """
    units(config)
    return _INDEX[2][name]


def crystal_units(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The units of crystal ``name`` (one per potential)."""
    from mdxrd.potentials import unit_name

    return [crystal(config, unit_name(name, p["name"])) for p in config["potentials"]]


#: MD job memory estimate, MB: base (Python, torch, model) + per run x atoms^2 (CHGNet's bond and
#: angle graphs; measured 0.1 GB at 64 atoms, 1.2 GB at 240 with the fast calculator, ~5x stock).
MD_BASE_MEM_MB = 1000
MD_MEM_MB_PER_ATOM2 = {"fast": 0.025, "stock": 0.12}


def md_job_mem_mb(config: dict[str, Any], n_atoms: int, n_runs: int) -> int:
    """Memory estimate of one MD job of ``n_runs`` runs of ``n_atoms`` atoms, MB (all runs' graphs at once)."""
    return int(MD_BASE_MEM_MB + MD_MEM_MB_PER_ATOM2[config["md"]["calculator"]] * n_atoms**2 * n_runs)


def supercell_atoms(entry: dict[str, Any]) -> int:
    """Atoms in the supercell of a checked crystal entry (its cell's atoms x na x nb x nc)."""
    return entry["n_atoms_cell"] * math.prod(entry["supercell"])


def md_batches(config: dict[str, Any]) -> list[list[dict[str, str]]]:
    """The runs of one crystal split into MD jobs: per job, the {ensemble, temperature, replica} wildcards.

    ``md.runs_per_job`` runs per job in grid order (ensembles x temperatures x replicas); ``auto``: all
    runs of a crystal, or as many as keep :func:`md_job_mem_mb` of the largest supercell within
    ``md.max_job_mem_mb``. Every crystal's runs are split alike (one rule per job of the split).
    """
    grid = [{"ensemble": e, "temperature": format_temperature(float(t)), "replica": str(r)}
            for e, t, r in itertools.product(config["ensembles"], config["temperatures_K"], range(config["replicas"]))]
    per_job = config["md"]["runs_per_job"]
    if per_job == "auto":
        largest = max((supercell_atoms(u) for u in units(config)), default=1)
        per_run = md_job_mem_mb(config, largest, 1) - MD_BASE_MEM_MB
        per_job = max(1, (config["md"]["max_job_mem_mb"] - MD_BASE_MEM_MB) // max(1, per_run))
    return [grid[i:i + per_job] for i in range(0, len(grid), per_job)]


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
        "potential": xtal["potential"],
        "device": md["device"],
        "threads": md["threads"],
        "calculator": md["calculator"],
        "npt_integrator": md["npt_integrator"],
        **{k: md[k] for k in ("npt_cell", "start_temperature_factor", "npt_pre_steps", "equil_taup_fs",
                              "progress_interval")},
    }


def structure_params(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.structure.StructureParams` for crystal ``name``."""
    s = config["structure"]
    return {"supercell": list(crystal(config, name)["supercell"]), "relax": s["relax"],
            "fmax_eV_per_A": s["fmax_eV_per_A"], "relax_max_steps": s["relax_max_steps"],
            "max_atoms": s["max_atoms"], "device": config["md"]["device"], "threads": config["md"]["threads"],
            "potential": crystal(config, name)["potential"]}


def snapshot_params(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`mdxrd.snapshots.run_stage`."""
    md = config["md"]
    return {**{k: md[k] for k in ("n_steps", "n_equil", "n_interval", "timestep_fs")},
            **{k: config["snapshots"][k] for k in ("lindemann_threshold", "temperature_tolerance",
                                                     "pressure_tolerance_GPa", "volume_drift_tolerance")}}


def reference_params(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.reference.ReferenceParams` for unit ``name``."""
    r = config["reference"]
    return {"eos_volume_range": r["eos_volume_range"], "eos_points": r["eos_points"],
            "fmax_eV_per_A": config["structure"]["fmax_eV_per_A"], "device": config["md"]["device"],
            "threads": config["md"]["threads"], "potential": crystal(config, name)["potential"]}


def crystal_runs(config: dict[str, Any], name: str, kinds: tuple[str, ...], results: str | Path = "results"
                 ) -> list[dict[str, Any]]:
    """The runs of crystal ``name``: ensemble, temperature_K, replica, supercell and the path of each of ``kinds``."""
    sc = list(crystal(config, name)["supercell"])
    return [{"ensemble": k.ensemble, "temperature_K": k.temperature_K, "replica": k.replica, "supercell": sc,
             **{kind: str(k.path(kind, results)) for kind in kinds}}
            for k in runs(config, name)]


def xrd_params(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`mdxrd.xrd.stage.run_stage` (crystal ``name`` sets the supercell)."""
    x = config["xrd"]
    out: dict[str, Any] = {"two_theta_range": [x["two_theta_min"], x["two_theta_max"]],
                           "two_theta_step": x["two_theta_step"], "instrument": config["instrument"]}
    if name is not None:
        out["supercell"] = list(crystal(config, name)["supercell"])
    return out


def split_of(seed: int, name: str, fractions: dict[str, float]) -> str:
    """The dataset split (train, validation, test) of crystal ``name``, fixed by the seed and the name.

    A uniform number u in [0, 1) from the first 8 bytes of SHA-256 of ``"{seed}/{name}"``
    picks the split whose cumulative fraction first exceeds u, so each crystal's share
    follows ``fractions`` on average and never depends on the other crystals. Every
    pattern of a crystal lands in the same split: snapshots of one crystal are strongly
    correlated and a split by row would leak them between train and test.
    """
    u = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") / 2.0**64
    total = 0.0
    for split in ("train", "validation", "test"):
        total += fractions[split]
        if u < total:
            return split
    return "test"


#: Per-crystal parameter files (results/params/{crystal}/{stage}.json) besides the per-run md files.
PARAM_STAGES = ("structure", "reference", "snapshots", "xrd", "qc", "plots", "dataset")


def crystal_params(config: dict[str, Any], name: str, results: str | Path = "results") -> dict[str, Any]:
    """Every parameter file of crystal ``name``: {path relative to results/: content}.

    For each of its units (one per potential, :func:`units`) one file per stage
    (:data:`PARAM_STAGES` but ``dataset``; ``reference`` holds ``reference`` and ``xrd``;
    ``qc`` holds ``runs``, ``crystal`` and ``tolerances``; ``plots`` holds ``runs`` and
    ``md``) and one per MD run; and the crystal's ``dataset`` file (``crystal``, ``split``,
    ``drop_melted``, ``instrument`` and ``units``: name, potential and runs of each unit).
    Nothing in them depends on the other crystals, so adding crystals leaves the existing
    files as they are.
    """
    md = config["md"]
    files: dict[str, Any] = {}
    dataset_units = []
    for entry in crystal_units(config, name):
        unit = entry["name"]
        stages = {
            "structure": structure_params(config, unit),
            "reference": {"reference": reference_params(config, unit), "xrd": xrd_params(config)},
            "snapshots": snapshot_params(config),
            "xrd": xrd_params(config, unit),
            "qc": {"runs": crystal_runs(config, unit, QC_KINDS, results), "crystal": entry,
                   "tolerances": config["qc"]},
            "plots": {"runs": crystal_runs(config, unit, PLOT_KINDS, results),
                      "md": {k: md[k] for k in ("n_equil", "timestep_fs")}},
        }
        files.update({LAYOUT["params"].format(crystal=unit, stage=stage): data for stage, data in stages.items()})
        files.update({LAYOUT["params_md"].format(**k.wildcards): md_params(config, k) for k in runs(config, unit)})
        dataset_units.append({"name": unit, "potential": entry["potential"],
                              "runs": crystal_runs(config, unit, DATASET_KINDS, results)})
    table_entry = {k: v for k, v in crystal_units(config, name)[0].items() if k not in ("crystal", "potential")}
    table_entry["name"] = name
    files[LAYOUT["params"].format(crystal=name, stage="dataset")] = {
        "crystal": table_entry, "split": split_of(config["seed"], name, config["dataset"]["split"]),
        "drop_melted": config["dataset"]["drop_melted"], "instrument": config["instrument"], "units": dataset_units}
    return files


def write_params(config: dict[str, Any], results: str | Path = "results") -> int:
    """Write the parameter files of a resolved configuration; return how many were (re)written.

    ``results/params/config.json`` holds the whole resolved configuration (the dataset's
    provenance, and what a cluster job reads instead of validating again); under
    ``results/params/{crystal}/`` are the files of :func:`crystal_params`. Each job takes
    its file as an input, so Snakemake reruns exactly the jobs whose parameters changed:

    * a file whose content changed is rewritten (atomically) and gets the current time:
      newer than the outputs made with the old parameters, it makes them rerun;
    * a file that did not exist is written with modification time 0 (1970): it makes
      nothing rerun by its mere creation (e.g. after deleting results/params);
    * a file with the same content is not touched.

    A manifest of hashes (results/params/manifest.json) of each crystal's entry and the
    rest of the configuration lets a parse skip the crystals whose inputs did not change.
    """
    import os

    results = Path(results)
    written = 0

    def put(path: Path, text: str) -> None:
        nonlocal written
        try:
            if path.read_text() == text:
                return
            existed = True
        except OSError:
            existed = False
        with atomic_path(path) as tmp:
            tmp.write_text(text)
            if not existed:
                os.utime(tmp, (0, 0))
        written += 1

    put(results / LAYOUT["params_config"], json.dumps(config, indent=1, sort_keys=True))
    common = json.dumps({**config, "crystals": None, "_results": str(results)}, sort_keys=True)
    manifest_path = results / "params" / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    new_manifest = {}
    for entry in config["crystals"]:
        name = entry["name"]
        key = hashlib.sha256((common + json.dumps(entry, sort_keys=True)).encode()).hexdigest()
        if manifest.get(name) != key or not (results / "params" / name).is_dir():
            for rel, data in crystal_params(config, name, results).items():
                put(results / rel, json.dumps(data, indent=1, sort_keys=True))
        new_manifest[name] = key
    if new_manifest != manifest:
        with atomic_path(manifest_path) as tmp:
            tmp.write_text(json.dumps(new_manifest, sort_keys=True))
    return written


def read_resolved(results: str | Path = "results") -> dict[str, Any]:
    """The resolved configuration that :func:`write_params` wrote (cluster jobs read it instead of validating)."""
    return read_json(Path(results) / LAYOUT["params_config"])


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
    kind = schema.get("type", "")
    article = "an" if str(kind)[:1] in "aeiou" else "a"
    return " ".join(filter(None, [f"{article} {kind}" if kind else "", ", ".join(bounds)]))


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


def validate_config(config: dict[str, Any], source: str = "config", cache_dir: str | Path | None = None
                    ) -> dict[str, Any]:
    """Validate a configuration and fill in defaults; return the resolved copy.

    Checks, in order: the JSON schema (types, ranges of METHOD.md, allowed
    names); the crystal table (a list, or a sheet or glob read by
    :mod:`mdxrd.crystals`, its entries validated against the same schema); what a
    schema cannot say: unique crystal names, n_equil < n_steps, at least one
    snapshot per run, two_theta_min < two_theta_max; and every crystal's
    structure file: readable, ordered and of CHGNet elements, its supercell
    (``auto`` resolved here, :func:`mdxrd.crystals.auto_supercell`) within
    structure.max_atoms, its experimental B of elements it has, and at least one
    reflection inside the 2theta range. The structure checks come from
    :func:`mdxrd.crystals.checked_record`, cached under ``cache_dir``.

    In the resolved copy ``crystals`` is a list whose every ``supercell`` is
    (na, nb, nc) and every entry has ``n_atoms_cell`` and ``cif_sha256`` from its
    checked record (the resolved copy is not meant to be validated again); with
    ``structure.skip_too_large`` crystals whose automatic supercell exceeds max_atoms
    are left out (logged as warnings).

    Raises
    ------
    ConfigError
        The first problem found, as ``"{source}: {field}: {what is wrong and allowed}"``
        (a sheet's problems as ``"{sheet}: line {n} ({name}), column {column}: ..."``).
    """
    from mdxrd.crystals import CrystalTableError, read_crystal_table

    config = copy.deepcopy(config) if config is not None else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    for err in _schema_errors(config):
        raise ConfigError(f"{source}: {err}")
    spec = config["crystals"]
    if isinstance(spec, str):
        key = table_key(spec)
        cached = Path(cache_dir) / f"table-{key}.json" if cache_dir is not None and key is not None else None
        if cached is not None and cached.is_file():
            config["crystals"] = read_json(cached)
        else:
            try:
                config["crystals"] = read_crystal_table(spec)
            except CrystalTableError as err:
                raise ConfigError(f"{source}: crystals: {err}") from None
            for err in _schema_errors(config):
                raise ConfigError(f"{source}: crystals ({spec}) {err.removeprefix('crystals')}")
            if cached is not None:
                write_cache(cached, config["crystals"])

    _check_unique([c["name"] for c in config["crystals"]], "crystals", source)
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
    config["instrument"] = _resolve_instruments(config, source)
    config["potentials"] = _resolve_potentials(config, source)
    split = config["dataset"]["split"]
    if abs(sum(split.values()) - 1.0) > 1e-9:
        raise ConfigError(f"{source}: dataset.split: the fractions {split} must add up to 1")
    kept, skipped = [], []
    for i, c in enumerate(config["crystals"]):
        where = f"{source}: crystals[{i}] ({c['name']})" if not isinstance(spec, str) else \
            f"{source}: crystals ({spec}) {c['name']}"
        if _check_crystal(config, c, where, cache_dir):
            kept.append(c)
        else:
            skipped.append(c["name"])
    if skipped:
        import logging

        logging.getLogger(__name__).warning(
            "structure.skip_too_large: left out %d crystal(s) whose automatic supercell exceeds "
            "structure.max_atoms = %d: %s", len(skipped), config["structure"]["max_atoms"], ", ".join(skipped))
        if not kept:
            raise ConfigError(f"{source}: crystals: every crystal exceeds structure.max_atoms")
        config["crystals"] = kept
    return config


def _resolve_potentials(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The potentials, each checked (package importable, weights on disk) and resolved
    (:func:`mdxrd.potentials.resolve_potential`); names unique."""
    from mdxrd.potentials import PotentialError, resolve_potential

    resolved = []
    for i, spec in enumerate(config["potentials"]):
        try:
            resolved.append(resolve_potential(spec))
        except PotentialError as err:
            raise ConfigError(f"{source}: potentials[{i}]: {err}") from None
    _check_unique([p["name"] for p in resolved], "potentials", source)
    return resolved


def _resolve_instruments(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The instrument conditions with xrd.wavelength / xrd.sigma_deg filled in, checked over the
    2theta range (:meth:`mdxrd.xrd.profiles.Instrument.check`), as plain dicts without None values."""
    from mdxrd.xrd.profiles import Instrument

    x = config["xrd"]
    defaults = {"wavelength": x["wavelength"], "sigma_deg": x["sigma_deg"]}
    resolved = []
    for i, entry in enumerate(config["instrument"]):
        try:
            inst = Instrument.from_dict(entry, defaults)
            inst.check((x["two_theta_min"], x["two_theta_max"]))
        except ValueError as err:
            raise ConfigError(f"{source}: instrument[{i}] ({entry.get('name')}): {err}") from None
        resolved.append({k: v for k, v in inst.to_dict().items() if v is not None})
    _check_unique([r["name"] for r in resolved], "instrument", source)
    return resolved


def _check_unique(names: list[str], field: str, source: str) -> None:
    """Raise ConfigError naming the field and the names that appear more than once."""
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise ConfigError(f"{source}: {field}: names must be unique, {', '.join(dup)} appears more than once")


def table_key(spec: str) -> str | None:
    """Cache key of a crystal sheet or glob: SHA-256 of its content (the sheet's bytes, or the glob's
    sorted file list) and of both schemas; None when the sheet does not exist (its error comes later)."""
    import glob

    from mdxrd.crystals import SHEET_SCHEMA_PATH, is_sheet

    h = hashlib.sha256(SCHEMA_PATH.read_bytes() + SHEET_SCHEMA_PATH.read_bytes())
    if is_sheet(spec):
        if not Path(spec).is_file():
            return None
        h.update(Path(spec).read_bytes())
    else:
        h.update("\n".join(sorted(glob.glob(spec, recursive=True))).encode())
    return h.hexdigest()


def _check_crystal(config: dict[str, Any], entry: dict[str, Any], where: str, cache_dir: str | Path | None) -> bool:
    """Check one crystal entry (see :func:`validate_config`) and resolve its supercell in place.

    Returns False for a crystal to leave out (automatic supercell too large with
    structure.skip_too_large); raises :class:`ConfigError` for anything else wrong.
    """
    from mdxrd.crystals import checked_record, supercell_for_widths
    from mdxrd.structure import StructureError, check_supercell_size

    s = config["structure"]
    try:
        record = checked_record(entry["cif"], config["xrd"], cache_dir)
    except StructureError as err:
        raise ConfigError(f"{where}.cif: {err}") from None
    entry["n_atoms_cell"], entry["cif_sha256"] = record["n_atoms_cell"], record["sha256"]
    auto = entry["supercell"] == "auto"
    if auto:
        entry["supercell"] = supercell_for_widths(record["widths_A"], s["min_width_A"])
    try:
        check_supercell_size(record["n_atoms_cell"], entry["supercell"], s["max_atoms"], entry["cif"])
    except StructureError as err:
        if auto and s["skip_too_large"]:
            return False
        hint = (f" for structure.min_width_A = {s['min_width_A']} A (raise max_atoms, lower min_width_A, or set "
                "structure.skip_too_large: true)") if auto else ""
        raise ConfigError(f"{where}.supercell: {err}{hint}") from None
    b_exp = entry.get("B_exp_A2")
    if b_exp is not None:
        extra = sorted(set(b_exp["value"]) - set(record["elements"]))
        if extra:
            raise ConfigError(f"{where}.B_exp_A2.value: element(s) {', '.join(extra)} are not in {entry['cif']} "
                              f"(allowed: {', '.join(record['elements'])})")
    if not record["reflection_in_range"]:
        x = config["xrd"]
        raise ConfigError(
            f"{where}: xrd.wavelength: {x['wavelength']} puts every reflection of {entry['cif']} outside "
            f"2theta {x['two_theta_min']}-{x['two_theta_max']} deg; choose a shorter wavelength or a wider range")
    return True


def load_config(path: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML configuration file and return it validated with defaults (see :func:`validate_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return validate_config(data, str(path), cache_dir=cache_dir)
