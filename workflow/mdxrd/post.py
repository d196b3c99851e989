"""Post-processing stage: the snapshots and the XRD of every MD run of a shard.

For each run of the shard (in parallel over ``--workers`` processes):

1. :func:`mdxrd.snapshots.run_stage`: pick the snapshots after equilibration, measure the
   velocity autocorrelation time, the sampling window's figures and the thermal motion
   about the lattice sites; into the run's snapshots directory: ``snapshots.traj``,
   ``summary.json``.
2. :func:`mdxrd.xrd.stage.run_stage`: the reflections of every snapshot, its patterns for
   every instrument condition and the run's average; into the run's xrd directory:
   ``reflections.parquet``, ``patterns.npz``, ``average.npz``.

With ``lattice: experiment`` (:mod:`mdxrd.lattice`) step 2 works on the snapshots' cells scaled per axis to
the crystal's experimental lattice at the run's temperature; the summary records the scale factors
(``lattice_anchor``).

A run whose summary carries the stamp of the same parameters and MD run (and whose five
files exist) is reused; the stamp is written last, so a run interrupted half-way is redone.
A run that fails does not stop the others; the job then fails naming it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.io import read

from mdxrd.cli import UserError
from mdxrd.io import load_params, read_json, write_json
from mdxrd.lattice import AXES, anchor, mean_lengths
from mdxrd.phonons import PHONON_FILE, delta_b
from mdxrd.shard import fail_if, fill, is_current, run_all, stamp, write_manifest
from mdxrd.snapshots import run_stage as snapshots_stage
from mdxrd.xrd.stage import run_stage as xrd_stage

log = logging.getLogger(__name__)

#: The files of a run's snapshots directory and of its xrd directory.
SNAPSHOT_FILES = ("snapshots.traj", "summary.json")
XRD_FILES = ("reflections.parquet", "patterns.npz", "average.npz")


def process_run(job: dict[str, Any]) -> dict[str, Any]:
    """Snapshots and XRD of one run (``job``: the run, its directories, the stage's parameters); see the module."""
    run, params = job["run"], job["params"]
    md, snap, xrd = Path(job["md_dir"]), Path(job["snapshots_dir"]), Path(job["xrd_dir"])
    entry = {k: run[k] for k in ("unit", "ensemble", "temperature_K", "replica")}
    anchored = _anchor(job) if job.get("lattice") is not None else None
    zero_point = delta_b(read_json(job["phonons"]), float(run["temperature_K"])) if job.get("phonons") else None
    run_stamp = stamp(params["snapshots"], params["xrd"], run, read_json(md / "run.json").get("stamp"),
                      *([anchored] if anchored is not None else []),
                      *([{"zero_point_dB_A2": zero_point}] if zero_point is not None else []))
    if is_current(snap / "summary.json", run_stamp, [*(snap / f for f in SNAPSHOT_FILES), *(xrd / f for f in XRD_FILES)]):
        return {**entry, "reused": True}
    snapshots_stage(md / "trajectory.traj", md / "velocities.npy", md / "thermo.csv", snap / "snapshots.traj",
                    snap / "summary.json", run_info=md / "run.json", positions=md / "positions.npz",
                    sites=job["sites"], **params["snapshots"])
    xrd_stage(snap / "snapshots.traj", xrd / "reflections.parquet", xrd / "patterns.npz", xrd / "average.npz",
              supercell=run["supercell"], centring=read_json(job["structure_info"])["centring_translations"],
              lattice_scale=[anchored["scale"][x] for x in AXES] if anchored and anchored["method"] else None,
              zero_point_b=zero_point, **params["xrd"])
    summary = read_json(snap / "summary.json")
    if anchored is not None:
        summary["lattice_anchor"] = anchored
    if zero_point is not None:
        summary["zero_point_dB_A2"] = zero_point
    write_json(snap / "summary.json", {**summary, "stamp": run_stamp})  # last: the run is complete
    return {**entry, "reused": False}


def _window_lengths(md_dir: str | Path, supercell: list[int]) -> dict[str, float]:
    """A run's mean parent-cell lengths over its sampling window (its positions.npz cells), Angstrom."""
    with np.load(Path(md_dir) / "positions.npz") as window:
        return mean_lengths(window["cells_A"], supercell)


def _anchor(job: dict[str, Any]) -> dict[str, Any]:
    """The run's anchored lattice (:func:`mdxrd.lattice.anchor`) from its window, its unit's 0 K supercell and
    NPT runs (``job``: see :func:`run_shard`); warns when the crystal keeps the potential's lattice."""
    run = job["run"]
    sites = read(job["sites"])
    lengths_0K = dict(zip(AXES, map(float, sites.cell.lengths() / np.asarray(run["supercell"])), strict=True))
    out = anchor(job["lattice"], float(run["temperature_K"]), _window_lengths(job["md_dir"], run["supercell"]),
                 lengths_0K, job["npt_lengths"])
    if out["method"] is None:
        log.warning("%s: lattice: experiment needs %s; the potential's lattice is kept", run["unit"],
                    ", ".join(out["missing"]))
    return out


def run_shard(params: dict[str, Any], md_template: str, structure_template: str, snapshots_template: str,
              xrd_template: str, manifest: str | Path, workers: int = 1, reference_template: str | None = None
              ) -> int:
    """Snapshots and XRD of every run of a shard; write the manifest last.

    Parameters
    ----------
    params
        The shard's ``post`` parameter file (:func:`mdxrd.params.shard_params`): ``snapshots``,
        ``xrd`` and ``runs`` (unit, ensemble, temperature_K, replica, supercell).
    md_template, snapshots_template, xrd_template
        Path templates (``{unit}``, ``{ensemble}``, ``{temperature}``, ``{replica}``) of a run's MD,
        snapshots and xrd directories.
    structure_template
        Path template (``{unit}``) of a unit's structure directory (its 0 K supercell: the lattice
        sites; its structure.json: the centring translations).
    manifest
        The shard's manifest, written when every run succeeded.
    workers
        Processes working on runs side by side.
    reference_template
        Path template (``{unit}``) of a unit's reference directory: its phonons.json, read when the
        parameters ask for ``zero_point_correction``.

    Returns
    -------
    int
        The number of runs made (not reused).

    Raises
    ------
    mdxrd.shard.ShardError
        Some runs failed (named, with their errors); the others are written.
    """
    started = time.perf_counter()

    def fields(run: dict[str, Any]) -> dict[str, Any]:
        return {"unit": run["unit"], "ensemble": run["ensemble"], "temperature": f"{float(run['temperature_K']):g}",
                "replica": run["replica"]}

    lattice = params.get("lattice", {"mode": "potential", "crystals": {}})
    anchored = lattice["mode"] == "experiment"
    npt_lengths: dict[str, list[tuple[float, dict[str, float]]]] = {}  # per unit, each NPT window read once
    for r in params["runs"] if anchored else []:
        if r["ensemble"].startswith("npt"):
            npt_lengths.setdefault(r["unit"], []).append(
                (float(r["temperature_K"]), _window_lengths(fill(md_template, **fields(r)), r["supercell"])))
    jobs = []
    for run in params["runs"]:
        sdir = fill(structure_template, unit=run["unit"])
        jobs.append({"run": run, "params": {"snapshots": params["snapshots"], "xrd": params["xrd"]},
                     "md_dir": str(fill(md_template, **fields(run))),
                     "snapshots_dir": str(fill(snapshots_template, **fields(run))),
                     "xrd_dir": str(fill(xrd_template, **fields(run))), "sites": str(sdir / "supercell.traj"),
                     "structure_info": str(sdir / "structure.json"),
                     "lattice": lattice["crystals"].get(run["unit"], {}) if anchored else None, "npt_lengths": npt_lengths.get(run["unit"], []),
                     "phonons": str(fill(reference_template, unit=run["unit"]) / PHONON_FILE)
                     if params.get("zero_point_correction") and reference_template else None})
    results, failures = run_all(jobs, process_run, lambda j: j["md_dir"], workers=workers)
    fail_if(failures, "runs", len(jobs))
    write_manifest(manifest, "post", results, started)
    made = sum(1 for r in results if not r["reused"])
    log.info("post: %d runs made, %d reused", made, len(results) - made)
    return made


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd post`` (the workflow's post-processing stage: every run of one shard)."""
    p = subparsers.add_parser("post", help="post-processing stage: snapshots and XRD of every run of a shard")
    p.add_argument("--params", required=True, help="the shard's post parameter file")
    p.add_argument("--md-dir", required=True,
                   help="path template of a run's MD directory, e.g. results/md/{unit}/{ensemble}/{temperature}K/r{replica}")
    p.add_argument("--structure-dir", required=True, help="path template, e.g. results/structure/{unit}")
    p.add_argument("--snapshots-dir", required=True, help="path template of a run's snapshots directory")
    p.add_argument("--xrd-dir", required=True, help="path template of a run's xrd directory")
    p.add_argument("--reference-dir", help="path template of a unit's reference directory (zero-point correction)")
    p.add_argument("--manifest", required=True, help="the shard's manifest (JSON), written last")
    p.add_argument("--workers", type=int, default=1, help="processes working on runs side by side")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        params = load_params(args.params)
    except ValueError as err:
        raise UserError(f"--params {args.params}: {err}") from None
    if params.get("zero_point_correction") and not args.reference_dir:
        raise UserError("--reference-dir is needed: the parameters ask for the zero-point correction")
    run_shard(params, args.md_dir, args.structure_dir, args.snapshots_dir, args.xrd_dir, args.manifest,
              workers=max(1, args.workers), reference_template=args.reference_dir)
    return 0
