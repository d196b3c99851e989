# Configuration check, the grid's shards, input functions and path templates. The physics is in the
# mdxrd package (workflow/mdxrd); this file only connects it to Snakemake. Every stage after parsing
# runs as one job per shard (a block of shards.crystals crystals, mdxrd.grid); each rule hands its
# stage the path templates of its outputs (mdxrd.layout) and declares the shard's manifest, which the
# stage writes last.
import os
import sys

from snakemake.exceptions import WorkflowError

_PKG_ROOT = os.path.join(workflow.basedir, "workflow")
if _PKG_ROOT not in sys.path:
    sys.path.insert(0, _PKG_ROOT)

from mdxrd import config as mdconf  # noqa: E402
from mdxrd import grid, layout  # noqa: E402
from mdxrd import params as mdparams  # noqa: E402

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
    # Parameter files: jobs read their parameters from results/params/<shard>/<stage>.json.
    mdparams.write_params(_resolved, RESULTS)
else:
    # A job on a cluster node: the main process validated the configuration and wrote it resolved.
    _resolved = mdparams.read_resolved(RESULTS)
config.clear()
config.update(_resolved)

SHARDS = list(grid.shards(config))
DATASET = layout.template("dataset", RESULTS)


wildcard_constraints:
    shard=r"s[0-9]{6}",


def path(kind):
    """Path template of `kind` (a key of mdxrd.layout.TEMPLATES) under results/."""
    return layout.template(kind, RESULTS)


def manifest(stage):
    """The shard manifest a stage writes last (the output its rule declares)."""
    return path("manifest").replace("{stage}", stage)


def params_file(stage):
    """A shard's parameter file of `stage` (an input: Snakemake reruns the job when write_params changes it)."""
    return path("params").replace("{stage}", stage)


def templates(*kinds):
    """Command-line options --<kind>-dir TEMPLATE of unit or run directories, for a rule's params (a
    function: Snakemake must not fill the template's braces itself)."""
    text = " ".join(f"--{kind}-dir '{path(kind)}'" for kind in kinds)
    return lambda wildcards: text


def shard_cifs(wildcards):
    """The structure file of every unit of a shard, in the order of its parameter files."""
    return [u["cif"] for u in grid.shard_units(config, wildcards.shard)]


def cif_args(wildcards, input):
    return " ".join(f"--cif '{cif}'" for cif in input.cifs)


def shard_n_units(wildcards):
    return len(grid.shard_units(config, wildcards.shard))


def md_mem_mb(wildcards, attempt):
    """The largest MD batch of the shard (mdxrd.grid.md_job_mem_mb, with a CUDA process's host memory unless
    md.device is cpu), twice on a retry."""
    calc, device = config["md"]["calculator"], config["md"]["device"]
    return attempt * max(grid.md_job_mem_mb(calc, max(grid.supercell_atoms(grid.unit(config, r.unit)) for r in b),
                                            len(b), device) for b in grid.md_batches(config, wildcards.shard))


def md_gpu_resources():
    """The MD rule's GPU request: none with md.device cpu, else one GPU as gpu=1 (sbatch --gpus) or gres="gpu:1"
    (md.gpu_request) with md.gpu_job_cpus CPUs per GPU."""
    md = config["md"]
    if md["device"] == "cpu":
        return {}
    gpu = {"gpu": 1} if md["gpu_request"] == "gpus" else {"gres": "gpu:1"}
    return {**gpu, "cpus_per_gpu": md["gpu_job_cpus"]}


def md_runtime(wildcards, attempt):
    """Minutes for the shard's MD batches one after the other, md.runtime_ms_per_atom_step per atom, step and
    run (default 20: one CPU thread takes 1.5-10 ms; Si 64 atoms 0.1 s/step, Cu 32 atoms 0.2, Al2O3 240 atoms
    2.3), plus 10 per batch."""
    steps, ms = config["md"]["n_steps"], config["md"]["runtime_ms_per_atom_step"]
    return attempt * sum(10 + int(ms * max(grid.supercell_atoms(grid.unit(config, r.unit)) for r in b) * steps
                                  * len(b) / 60_000) for b in grid.md_batches(config, wildcards.shard))


def shard_n_runs(wildcards):
    return len(grid.shard_runs(config, wildcards.shard))


def report_inputs(wildcards):
    """The QC manifests of every shard (their report figures) and the potentials' comparison."""
    return expand(manifest("qc"), shard=SHARDS) + [path("qc_potentials")]
