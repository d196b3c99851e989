# Configuration check, input functions and shared names. The physics is in the mdxrd
# package (workflow/mdxrd); this file only connects it to Snakemake.
import os
import shlex
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

RESULTS = "results"
_CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles or [])) or "config/config.yaml"
if workflow.is_main_process:
    try:
        # JSON-schema validation (snakemake.utils.validate, defaults filled in), the crystal table (list,
        # sheet or glob; supercell auto) and the checks a schema cannot express (grid consistency, every
        # structure file readable, ordered, CHGNet elements), each file's checks cached by its SHA-256.
        _resolved = mdconf.validate_config(dict(config), _CONFIG_SOURCE, cache_dir=f"{RESULTS}/checked")
    except (mdconf.ConfigError, ValueError) as err:
        raise WorkflowError(f"invalid configuration: {err}") from None
    # Parameter files: jobs read their parameters from results/params, never from a command line.
    mdconf.write_params(_resolved, RESULTS)
else:
    # A job on a cluster node: the main process validated the configuration and wrote it resolved.
    _resolved = mdconf.read_resolved(RESULTS)
config.clear()
config.update(_resolved)

RUNS = mdconf.runs(config)
CRYSTALS = [c["name"] for c in config["crystals"]]  # dataset parts: one per crystal, all its potentials
UNITS = [u["name"] for u in mdconf.units(config)]  # crystal x potential: structure, reference, qc, plots
DATASET = f"{RESULTS}/{mdconf.LAYOUT['dataset']}"
MD_BATCHES = mdconf.md_batches(config)  # the runs of every crystal, split into MD jobs (md.runs_per_job)

wildcard_constraints:
    crystal=r"[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9][A-Za-z0-9_.-]*)?",
    ensemble="|".join(["nvt_langevin", "nvt_berendsen", "npt_berendsen"]),
    temperature=r"[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?",
    replica=r"[0-9]+",


def out(kind):
    """Output path template of `kind` (a key of mdxrd.config.LAYOUT) under results/."""
    return f"{RESULTS}/{mdconf.LAYOUT[kind]}"


def run_key(wildcards):
    return mdconf.RunKey(
        wildcards.crystal,
        wildcards.ensemble,
        float(wildcards.temperature),
        int(wildcards.replica),
    )


def params_file(stage):
    """A job's parameter file (an input: Snakemake reruns the job when write_params changes it)."""
    return out("params_md") if stage == "md" else out("params").replace("{stage}", stage)


def crystal_cif(wildcards):
    return mdconf.crystal(config, wildcards.crystal)["cif"]


def crystal_atoms(wildcards):
    """Atoms of the crystal's supercell, for resource estimates (from the checked record, no CIF read)."""
    return mdconf.supercell_atoms(mdconf.crystal(config, wildcards.crystal))


def crystal_run_files(crystal, kinds):
    """The outputs ``kinds`` of every run of ``crystal``."""
    return [str(key.path(kind, RESULTS)) for key in mdconf.runs(config, crystal) for kind in kinds]


def dataset_part_inputs(wildcards):
    """Every output of one crystal (all its potentials) that its dataset part reads."""
    units = mdconf.crystal_units(config, wildcards.crystal)
    files = [units[0]["cif"]]
    for unit in units:
        files += [out(k).format(crystal=unit["name"]) for k in ("structure_info", "relaxed_cif", "static")]
        files += crystal_run_files(unit["name"], mdconf.DATASET_KINDS)
    return files


def report_inputs(wildcards):
    """The report figures and QC table of every crystal."""
    kinds = ("plot_patterns", "plot_zoom", "plot_thermal", "plot_traces", "qc_html")
    return [out(kind).format(crystal=c) for c in UNITS for kind in kinds] + [out("qc_potentials")]


def md_run_files(template, batch):
    """`template` (a path with run wildcards) for every run of `batch`, the {crystal} wildcard left open."""
    return [template.format(crystal="{crystal}", **w) for w in batch]


def md_run_args(wildcards, input, output):
    """Command-line arguments: --out-dir and --params of every run of the job."""
    return " ".join(f"--out-dir {shlex.quote(os.path.dirname(thermo))} --params {shlex.quote(params)}"
                    for thermo, params in zip(output.thermo, input.params))
