# Configuration check, input functions and shared names. The physics is in the mdxrd
# package (workflow/mdxrd); this file only connects it to Snakemake.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

_PKG_ROOT = os.path.join(workflow.basedir, "workflow")
if _PKG_ROOT not in sys.path:
    sys.path.insert(0, _PKG_ROOT)

from mdxrd import config as mdconf  # noqa: E402

# Jobs (local, conda or cluster) import this package source and call `python -m mdxrd`:
# without --sdm conda that python is this interpreter, with it the rule env's python.
mdconf.prepare_job_environment(_PKG_ROOT, sys.executable)

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
DATASET = f"results/{mdconf.LAYOUT['dataset']}"

wildcard_constraints:
    crystal=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    ensemble="|".join(["nvt_langevin", "nvt_berendsen", "npt_berendsen"]),
    temperature=r"[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?",
    replica=r"[0-9]+",


def out(kind):
    """Output path template of `kind` (a key of mdxrd.config.LAYOUT) under results/."""
    return f"results/{mdconf.LAYOUT[kind]}"


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


QC_KINDS = ("snapshots_summary", "snapshots")
PLOT_KINDS = ("average", "thermo", "snapshots_summary", "run_info")


def crystal_run_files(crystal, kinds):
    """The outputs ``kinds`` of every run of ``crystal``."""
    return [run[kind] for run in mdconf.crystal_runs(config, crystal, kinds) for kind in kinds]


def dataset_inputs(wildcards):
    """Every per-run and per-crystal output the dataset stage reads."""
    kinds = ("structure_info", "run_info", "snapshots", "snapshots_summary", "patterns", "average")
    per_crystal = [out("static").format(crystal=c["name"]) for c in config["crystals"]]
    return per_crystal + [str(key.path(kind)) for key in RUNS for kind in kinds]


def report_inputs(wildcards):
    """The report figures and QC table of every crystal."""
    kinds = ("plot_patterns", "plot_zoom", "plot_thermal", "plot_traces", "qc_html")
    return [out(kind).format(crystal=c["name"]) for c in config["crystals"] for kind in kinds]
