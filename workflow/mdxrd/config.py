"""Workflow configuration: validation against the schema and the checks a schema cannot make.

:func:`validate_config` turns a user's configuration into the resolved one (defaults filled
in, the crystal table read, every structure file checked, potentials and instrument
conditions resolved). The grid it defines is :mod:`mdxrd.grid`, the stages' parameter files
:mod:`mdxrd.params`; the paths of every output are the rules' (``workflow/rules``).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdxrd.grid import md_job_mem_mb
from mdxrd.io import read_json, write_cache

# Every Snakefile parse imports this module, a cluster job's too (which never validates; the import takes about 50 ms):
# the imports left inside functions below say what each would add to it (perf_counter in a fresh process).

#: JSON schema of the configuration (YAML), shipped in the repository's config/.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "config.schema.yaml"

class ConfigError(ValueError):
    """A configuration (or an input it names) that cannot run; the message names file and field."""


def prepare_job_environment(package_root: str, python: str) -> None:
    """Make workflow jobs run ``python -m mdxrd`` from ``package_root`` with interpreter ``python``.

    Prepends ``package_root`` to PYTHONPATH and the directory of ``python`` to PATH
    (a conda env activated for a rule comes first again, so its python is used there).
    """
    for var, value in (("PYTHONPATH", package_root), ("PATH", os.path.dirname(python))):
        os.environ[var] = os.pathsep.join(p for p in (value, os.environ.get(var)) if p)


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


def _schema() -> dict[str, Any]:
    import yaml  # lazy: +15 ms on every Snakefile parse

    return yaml.safe_load(SCHEMA_PATH.read_text())


def _numbers_from_command_line(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Turn strings that are numbers into numbers where the schema wants a number (in place), in nested
    mappings: ``--config shards={crystals: 4}`` or ``md={runtime_ms_per_atom_step: 1}`` (and a profile's
    ``config:``) reach the workflow as strings, since Snakemake parses nested command-line values with YAML's
    BaseLoader. Anything else is left for the schema to reject."""
    for key, sub in schema.get("properties", {}).items():
        value = config.get(key)
        if isinstance(value, dict):
            _numbers_from_command_line(value, sub)
        elif isinstance(value, str) and sub.get("type") in ("integer", "number"):
            try:
                config[key] = int(value) if sub["type"] == "integer" else float(value)
            except ValueError:
                pass


def _schema_errors(config: dict[str, Any]) -> Iterator[str]:
    """Validate against the JSON schema with snakemake.utils.validate (defaults filled in place)."""
    import jsonschema  # lazy: +60 ms on every Snakefile parse
    from snakemake.utils import validate  # lazy: not in envs/*.yaml, and jobs load this module (mdxrd.cli -> check)

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
    from mdxrd.crystals import CrystalTableError, read_crystal_table  # lazy: +191 ms on every Snakefile parse

    config = copy.deepcopy(config) if config is not None else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    _numbers_from_command_line(config, _schema())
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
    if x["zero_point_correction"] and not config["phonons"]["enabled"]:
        raise ConfigError(f"{source}: xrd.zero_point_correction: true needs phonons.enabled: true (the zero-point B "
                          "comes from the harmonic phonons)")
    config["instrument"] = _resolve_instruments(config, source)
    config["potentials"] = _resolve_potentials(config, source)
    if md["engine"] == "torch":
        unfit = [p["name"] for p in config["potentials"] if p["kind"] not in ("chgnet", "sevennet")]
        chgnet = any(p["kind"] == "chgnet" for p in config["potentials"])
        if unfit or (chgnet and md["calculator"] != "fast") or md["npt_integrator"] != "mdxrd":
            raise ConfigError(
                f"{source}: md.engine: torch runs the built-in CHGNet (with md.calculator: fast) and SevenNet potentials "
                f"with md.npt_integrator: mdxrd; got generic potentials {unfit or 'none'}, calculator {md['calculator']}, "
                f"npt_integrator {md['npt_integrator']}; allowed engines: auto (torch where it can run on a CUDA "
                "device, else ase), ase, torch")
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
    _warn_unanchored(config, cache_dir)
    if skipped:
        import logging  # lazy: +5 ms on every Snakefile parse; only for this warning

        logging.getLogger(__name__).warning(
            "structure.skip_too_large: left out %d crystal(s) whose automatic supercell exceeds "
            "structure.max_atoms = %d: %s", len(skipped), config["structure"]["max_atoms"], ", ".join(skipped))
        if not kept:
            raise ConfigError(f"{source}: crystals: every crystal exceeds structure.max_atoms")
        config["crystals"] = kept
    return config


def _warn_unanchored(config: dict[str, Any], cache_dir: str | Path | None) -> list[str]:
    """With ``lattice: experiment``, log one warning listing per crystal the experimental lattice fields it lacks
    (:func:`mdxrd.lattice.missing_fields`; such crystals keep the potential's lattice); return those lines."""
    if config["lattice"] != "experiment":
        return []
    from mdxrd.crystals import checked_record  # lazy: +191 ms on every Snakefile parse
    from mdxrd.lattice import missing_fields

    lines = []
    for c in config["crystals"]:
        lengths = [sum(v * v for v in row) ** 0.5 for row in checked_record(c["cif"], config["xrd"], cache_dir)["cell_A"]]
        missing = missing_fields(c, dict(zip("abc", lengths, strict=True)))
        if missing:
            lines.append(f"{c['name']}: {', '.join(missing)}")
    if lines:
        import logging  # lazy: +5 ms on every Snakefile parse; only for this warning

        logging.getLogger(__name__).warning(
            "lattice: experiment: %d crystal(s) lack experimental lattice fields and keep the potential's lattice: %s",
            len(lines), "; ".join(lines))
    return lines


def _resolve_potentials(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The potentials, each checked (package importable, weights on disk) and resolved
    (:func:`mdxrd.potentials.resolve_potential`); names unique."""
    from mdxrd.potentials import PotentialError, resolve_potential  # lazy: +21 ms on every Snakefile parse

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
    2theta range (:meth:`mdxrd.xrd.patterns.Instrument.check`), as plain dicts without None values."""
    from mdxrd.xrd.patterns import Instrument  # lazy: +97 ms on every Snakefile parse

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
    from mdxrd.crystals import SHEET_SCHEMA_PATH, is_sheet  # lazy: +191 ms on every Snakefile parse

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
    from mdxrd.crystals import checked_record, supercell_for_widths  # lazy: +191 ms on every Snakefile parse
    from mdxrd.structure import StructureError, check_supercell_size  # lazy: +134 ms on every Snakefile parse

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
    md = config["md"]
    n_atoms = record["n_atoms_cell"] * math.prod(entry["supercell"])
    alone = md_job_mem_mb(md["calculator"], n_atoms, 1)
    if alone > md["max_job_mem_mb"]:
        raise ConfigError(f"{where}: md.max_job_mem_mb: {md['max_job_mem_mb']} MB cannot hold one MD run of this "
                          f"crystal ({n_atoms} atoms: {alone} MB estimated); allowed: at least {alone}, or a smaller "
                          "supercell")
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
    import yaml  # lazy: +15 ms on every Snakefile parse

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return validate_config(data, str(path), cache_dir=cache_dir)
