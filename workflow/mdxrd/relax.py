"""Relax stage: the 0 K structure and reference of every unit of a shard.

For each unit (crystal x potential) of the shard, in the order of its parameter file:

1. :func:`mdxrd.structure.run_stage`: read and check the structure file, relax positions
   and cell at 0 K with the unit's potential (symmetry kept), build the supercell; into the
   unit's structure directory: ``relaxed.cif``, ``supercell.traj``, ``structure.json``.
2. :func:`mdxrd.reference.run_stage`: the potential's E(V) scan and Birch-Murnaghan fit, the
   relaxed cell against the file's, and the static (0 K) patterns of both cells; into the
   unit's reference directory: ``reference.json``, ``static.npz``.

3. :func:`mdxrd.phonons.run_stage` (``phonons.enabled``): the harmonic phonons of the relaxed cell in the
   MD's supercell and the quantum and classical B per element at the grid's temperatures, into
   ``phonons.json`` (its own stamp: switching phonons on reruns only them; switched off, the file is
   removed so that the dataset and QC, which read it when present, find none stale).

A unit whose reference.json carries the stamp of the same parameters and structure file
(and whose five files exist) is reused. A unit that fails does not stop the others; the job
then fails naming it (:class:`mdxrd.shard.ShardError`) and writes no manifest.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from mdxrd.cli import UserError
from mdxrd.io import load_params
from mdxrd.phonons import PHONON_FILE
from mdxrd.phonons import run_stage as phonon_stage
from mdxrd.potentials import make_potential
from mdxrd.reference import ReferenceParams
from mdxrd.reference import run_stage as reference_stage
from mdxrd.shard import fail_if, fill, is_current, run_all, stamp, write_manifest
from mdxrd.structure import StructureParams
from mdxrd.structure import run_stage as structure_stage

log = logging.getLogger(__name__)

#: The files of a unit's structure directory and of its reference directory.
STRUCTURE_FILES = ("relaxed.cif", "supercell.traj", "structure.json")
REFERENCE_FILES = ("reference.json", "static.npz")


def run_shard(params: dict[str, Any], cifs: list[str], structure_template: str, reference_template: str,
              manifest: str | Path) -> int:
    """Relax every unit of a shard and compute its 0 K reference; write the manifest last.

    Parameters
    ----------
    params
        The shard's ``relax`` parameter file (:func:`mdxrd.params.shard_params`): ``units`` (name,
        crystal, cif_sha256, structure and reference parameters) and ``xrd``.
    cifs
        The structure file of each unit, in the order of ``params["units"]``.
    structure_template, reference_template
        Path templates (``{unit}``) of a unit's structure and reference directories.
    manifest
        The shard's manifest, written when every unit succeeded.

    Returns
    -------
    int
        The number of units made (not reused).

    Raises
    ------
    ValueError
        ``cifs`` and the units differ in number.
    mdxrd.shard.ShardError
        Some units failed (named, with their errors); the others are written.
    """
    started = time.perf_counter()
    units = params["units"]
    if len(cifs) != len(units):
        raise ValueError(f"{len(cifs)} structure files for {len(units)} units")

    def work(i: int) -> dict[str, Any]:
        unit, cif = units[i], cifs[i]
        phonons = unit.get("phonons", {"enabled": False})
        unit = {k: v for k, v in unit.items() if k != "phonons"}  # phonons have their own stamp
        sdir, rdir = fill(structure_template, unit=unit["name"]), fill(reference_template, unit=unit["name"])
        unit_stamp = stamp(unit, params["xrd"])
        entry = {"unit": unit["name"], "structure_dir": str(sdir), "reference_dir": str(rdir)}
        files = [sdir / f for f in STRUCTURE_FILES] + [rdir / f for f in REFERENCE_FILES]
        reused = is_current(rdir / "reference.json", unit_stamp, files)
        if not reused:
            sp = StructureParams(**{**unit["structure"], "supercell": tuple(unit["structure"]["supercell"])})
            structure_stage(cif, sdir / "relaxed.cif", sdir / "supercell.traj", sdir / "structure.json", unit["name"],
                            sp)
            reference_stage(cif, sdir / "relaxed.cif", sdir / "structure.json", rdir / "reference.json",
                            rdir / "static.npz", params=ReferenceParams(**unit["reference"]), xrd=params["xrd"],
                            stamp=unit_stamp)
        phonon_stamp = stamp(phonons, unit_stamp)
        if phonons["enabled"] and not is_current(rdir / PHONON_FILE, phonon_stamp, [rdir / PHONON_FILE]):
            ref = unit["reference"]
            calc = make_potential(ref["potential"], ref["device"], ref.get("calculator", "fast"))
            phonon_stage(sdir / "relaxed.cif", unit["structure"]["supercell"], calc, phonons["temperatures_K"],
                         rdir / PHONON_FILE, displacement_A=phonons["displacement_A"], stamp=phonon_stamp)
            reused = False
        elif not phonons["enabled"]:
            (rdir / PHONON_FILE).unlink(missing_ok=True)  # the dataset and QC read it when present: none stale
        return {**entry, "reused": reused}

    entries, failures = run_all(list(range(len(units))), work, lambda i: units[i]["name"])
    fail_if(failures, "units", len(units))
    write_manifest(manifest, "relax", entries, started)
    made = sum(1 for e in entries if not e["reused"])
    log.info("relax: %d units made, %d reused", made, len(entries) - made)
    return made


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd relax`` (the workflow's 0 K stage: every unit of one shard)."""
    p = subparsers.add_parser("relax", help="0 K stage: relax every unit of a shard, its E(V) reference and "
                                            "static patterns")
    p.add_argument("--params", required=True, help="the shard's relax parameter file")
    p.add_argument("--cif", required=True, action="append",
                   help="structure file of each unit, in the order of the parameter file (repeat)")
    p.add_argument("--structure-dir", required=True, help="path template, e.g. results/structure/{unit}")
    p.add_argument("--reference-dir", required=True, help="path template, e.g. results/reference/{unit}")
    p.add_argument("--manifest", required=True, help="the shard's manifest (JSON), written last")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        params = load_params(args.params)
        run_shard(params, args.cif, args.structure_dir, args.reference_dir, args.manifest)
    except ValueError as err:
        raise UserError(str(err)) from None
    return 0
