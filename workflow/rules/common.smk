# Configuration check, input functions and shared names. The physics is in the mdxrd
# package (workflow/mdxrd); this file only connects it to Snakemake.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

_PKG_ROOT = str(Path(workflow.basedir) / "workflow")
if _PKG_ROOT not in sys.path:
    sys.path.insert(0, _PKG_ROOT)
# Jobs (local, conda or cluster) import the same package source.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_PKG_ROOT, os.environ.get("PYTHONPATH")) if p
)

from mdxrd import config as mdconf  # noqa: E402

_CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles or [])) or "config/config.yaml"
try:
    # JSON-schema validation (snakemake.utils.validate, defaults filled in) and the checks
    # a schema cannot express (grid consistency, every CIF readable, ordered, CHGNet elements).
    _resolved = mdconf.validate_config(dict(config), _CONFIG_SOURCE)
except (mdconf.ConfigError, ValueError) as err:
    raise WorkflowError(f"invalid configuration: {err}") from None
config.clear()
config.update(_resolved)

RUNS = mdconf.runs(config)
DATASET = "results/" + mdconf.LAYOUT["dataset"]

# With --sdm conda each job runs `python` of its rule's env; otherwise this interpreter.
_USE_CONDA = any(
    getattr(m, "name", str(m)).upper() == "CONDA"
    for m in (workflow.deployment_settings.deployment_method or [])
)
PYTHON = "python" if _USE_CONDA else sys.executable


wildcard_constraints:
    crystal=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    ensemble="|".join(["nvt_langevin", "nvt_berendsen", "npt_berendsen"]),
    temperature=r"[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?",
    replica=r"[0-9]+",


def out(kind):
    """Output path template of `kind` (a key of mdxrd.config.LAYOUT) under results/."""
    return "results/" + mdconf.LAYOUT[kind]


def run_key(wildcards):
    return mdconf.RunKey(
        wildcards.crystal,
        wildcards.ensemble,
        float(wildcards.temperature),
        int(wildcards.replica),
    )


def crystal_cif(wildcards):
    return mdconf.crystal(config, wildcards.crystal)["cif"]


def crystal_atoms(wildcards):
    """Atoms of the crystal's supercell, for resource estimates (read at DAG time)."""
    return _atoms_per_cell(wildcards.crystal) * _cells(wildcards.crystal)


def _cells(name):
    sc = mdconf.crystal(config, name).get("supercell", [2, 2, 2])
    return sc[0] * sc[1] * sc[2]


_ATOMS_PER_CELL = {}


def _atoms_per_cell(name):
    if name not in _ATOMS_PER_CELL:
        from mdxrd.structure import read_structure

        _ATOMS_PER_CELL[name] = len(read_structure(mdconf.crystal(config, name)["cif"]))
    return _ATOMS_PER_CELL[name]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)
