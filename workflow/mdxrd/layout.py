"""Where the workflow's outputs go: path templates under the results directory.

The rules (``workflow/rules``) build every job's paths from these templates and hand them to
the stages on the command line; the stages never import this module, they fill the templates
they are given (:func:`mdxrd.shard.fill`). A unit's directory holds the files its stage names
(``mdxrd.relax.STRUCTURE_FILES``, ``mdxrd.md.FILES``, ...), so one crystal's results are
found by its name whatever shard computed them:

====================  =====================================================================
structure             ``results/structure/<unit>/``: relaxed.cif, supercell.traj, structure.json
reference             ``results/reference/<unit>/``: reference.json, static.npz
md                    ``results/md/<unit>/<ensemble>/<T>K/r<replica>/``: thermo.csv, trajectory.traj,
                      velocities.npy, positions.npz, run.json
snapshots             ``results/snapshots/<unit>/<ensemble>/<T>K/r<replica>/``: snapshots.traj, summary.json
xrd                   ``results/xrd/<unit>/<ensemble>/<T>K/r<replica>/``: reflections.parquet,
                      patterns.npz, average.npz
qc                    ``results/qc/<unit>/``: qc.json, qc.parquet
plots                 ``results/plots/<unit>/``: patterns.png, zoom.png, thermal.png, traces.png, qc.html
manifest              ``results/shards/<shard>/<stage>.json``: what a shard job wrote or reused
report                ``results/report/<shard>/<unit>/``: links to the unit's figures (snakemake --report)
dataset_part          ``results/dataset/part-<shard>.parquet``; ``results/dataset/_common_metadata``
params                ``results/params/<shard>/<stage>.json``; ``results/params/config.json``
====================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path

RUN = "{unit}/{ensemble}/{temperature}K/r{replica}"

#: Templates relative to the results directory.
TEMPLATES = {
    "structure": "structure/{unit}",
    "reference": "reference/{unit}",
    "md": f"md/{RUN}",
    "snapshots": f"snapshots/{RUN}",
    "xrd": f"xrd/{RUN}",
    "qc": "qc/{unit}",
    "plots": "plots/{unit}",
    "manifest": "shards/{shard}/{stage}.json",
    "report": "report/{shard}",
    "dataset_part": "dataset/part-{shard}.parquet",
    "dataset": "dataset/_common_metadata",
    "params": "params/{shard}/{stage}.json",
    "config": "params/config.json",
    "qc_potentials_csv": "qc/potentials.csv",
    "qc_potentials": "qc/potentials.html",
}


def template(kind: str, results: str | Path = "results") -> str:
    """The path template of ``kind`` (a key of :data:`TEMPLATES`) under ``results``."""
    return f"{Path(results).as_posix()}/{TEMPLATES[kind]}"
