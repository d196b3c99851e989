"""Parameter files: what each stage job of a shard needs to know, as JSON, and nothing else.

``results/params/config.json`` holds the whole resolved configuration (the dataset's
provenance, and what a cluster job reads instead of validating again). Every shard has one
file per stage, ``results/params/<shard>/<stage>.json`` (:data:`STAGES`), holding that
stage's parameters for the shard's units and runs: parameters only, no paths (the rules give
the stages their paths). Each job takes its file as an input, so Snakemake reruns exactly
the jobs whose parameters changed; results/params holds O(shards) files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mdxrd import grid
from mdxrd.io import atomic_path, read_json

#: The stages of a shard, each one job: 0 K relaxation and reference, MD, post-processing
#: (snapshots, XRD, averages), QC and plots, and the shard's dataset part.
STAGES = ("relax", "md", "post", "qc", "dataset")

#: The resolved configuration, relative to the results directory.
CONFIG_FILE = "params/config.json"


def params_path(results: str | Path, shard: str, stage: str) -> Path:
    """``<results>/params/<shard>/<stage>.json``."""
    return Path(results) / "params" / shard / f"{stage}.json"


def md_params(config: dict[str, Any], run: grid.Run) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.md.MDParams` for ``run`` (seed derived per run)."""
    from mdxrd.md import run_seed  # lazy: ase, +0.53 s on importing mdxrd.params at every Snakefile parse

    md = config["md"]
    entry = grid.unit(config, run.unit)
    return {
        "ensemble": run.ensemble,
        "temperature_K": run.temperature_K,
        **{k: md[k] for k in ("timestep_fs", "n_steps", "n_equil", "n_interval", "friction_per_fs", "taut_fs",
                              "taup_fs", "pressure_GPa")},
        "compressibility_per_GPa": entry.get("compressibility_per_GPa", md["compressibility_per_GPa"]),
        "thermo_interval": md["thermo_interval"],
        "checkpoint_interval": md["checkpoint_interval"],
        "seed": run_seed(config["seed"], run.unit, run.ensemble, run.temperature_K, run.replica),
        "potential": entry["potential"],
        **{k: md[k] for k in ("device", "engine", "threads", "calculator", "npt_integrator", "npt_cell",
                              "start_temperature_factor", "npt_pre_steps", "equil_taup_fs", "progress_interval")},
    }


def relax_device(config: dict[str, Any]) -> str:
    """The relax stage's torch device: ``md.device`` cpu stays cpu, anything else becomes auto (the stage runs
    on CPU nodes, where ``md.device: cuda`` would fail; auto and cpu keep the stamps of earlier runs)."""
    return "cpu" if config["md"]["device"] == "cpu" else "auto"


def structure_params(config: dict[str, Any], unit: str) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.structure.StructureParams` for ``unit``."""
    s = config["structure"]
    entry = grid.unit(config, unit)
    return {"supercell": list(entry["supercell"]), "relax": s["relax"], "fmax_eV_per_A": s["fmax_eV_per_A"],
            "relax_max_steps": s["relax_max_steps"], "max_atoms": s["max_atoms"],
            "device": relax_device(config), "threads": config["md"]["threads"], "potential": entry["potential"]}


def reference_params(config: dict[str, Any], unit: str) -> dict[str, Any]:
    """Keyword arguments of :class:`mdxrd.reference.ReferenceParams` for ``unit``."""
    r = config["reference"]
    return {"eos_volume_range": r["eos_volume_range"], "eos_points": r["eos_points"],
            "fmax_eV_per_A": config["structure"]["fmax_eV_per_A"], "device": relax_device(config),
            "threads": config["md"]["threads"], "potential": grid.unit(config, unit)["potential"]}


def phonon_params(config: dict[str, Any]) -> dict[str, Any]:
    """The relax stage's harmonic phonons (:func:`mdxrd.phonons.run_stage`): enabled, displacement_A and the
    grid's temperatures_K."""
    ph = config["phonons"]
    return {"enabled": ph["enabled"], "displacement_A": ph["displacement_A"],
            "temperatures_K": [float(t) for t in config["temperatures_K"]]}


def snapshot_params(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`mdxrd.snapshots.run_stage` (besides its files)."""
    md = config["md"]
    return {**{k: md[k] for k in ("n_steps", "n_equil", "n_interval", "timestep_fs")},
            **{k: config["snapshots"][k] for k in ("lindemann_threshold", "temperature_tolerance",
                                                     "pressure_tolerance_GPa", "volume_drift_tolerance",
                                                     "phase_tolerance_A")}}


def xrd_params(config: dict[str, Any]) -> dict[str, Any]:
    """The 2theta grid and the instrument conditions (:func:`mdxrd.xrd.stage.run_stage`)."""
    x = config["xrd"]
    return {"two_theta_range": [x["two_theta_min"], x["two_theta_max"]], "two_theta_step": x["two_theta_step"],
            "instrument": config["instrument"]}


#: The crystal-entry fields an anchored lattice reads (:func:`mdxrd.lattice.anchor`).
LATTICE_FIELDS = ("reference_T_K", "a_exp_A", "b_exp_A", "c_exp_A", "alpha_exp_per_K", "alpha_a_exp_per_K",
                  "alpha_b_exp_per_K", "alpha_c_exp_per_K")


def lattice_params(config: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    """The post stage's ``lattice``: ``mode`` (config ``lattice``) and, with ``experiment``, per unit the
    experimental fields of its crystal (:data:`LATTICE_FIELDS`)."""
    mode = config["lattice"]
    crystals = {u["name"]: {k: u[k] for k in LATTICE_FIELDS if u.get(k) is not None} for u in units} \
        if mode == "experiment" else {}
    return {"mode": mode, "crystals": crystals}


def _run_entries(config: dict[str, Any], unit: str) -> list[dict[str, Any]]:
    supercell = list(grid.unit(config, unit)["supercell"])
    return [{**r.as_dict(), "supercell": supercell} for r in grid.runs(config, unit)]


def shard_params(config: dict[str, Any], shard: str) -> dict[str, dict[str, Any]]:
    """The parameter files of ``shard``: stage name -> content.

    * ``relax``: per unit its name, crystal, structure file hash, :func:`structure_params` and
      :func:`reference_params`; ``xrd`` for the static patterns.
    * ``md``: the shard's runs in lockstep batches (:func:`mdxrd.grid.md_batches`), each run with
      unit, ensemble, temperature_K, replica and its :func:`md_params`.
    * ``post``: ``snapshots`` and ``xrd`` settings, ``lattice`` (:func:`lattice_params`), and every run
      (with its unit's supercell).
    * ``qc``: the ``tolerances`` (config ``qc``), ``md`` (n_equil, timestep_fs) and per unit its
      crystal entry and runs.
    * ``dataset``: ``drop_melted``, ``instrument`` and per crystal its entry, split and units
      (name, resolved potential, runs).
    """
    units = grid.shard_units(config, shard)
    md = config["md"]
    return {
        "relax": {"xrd": xrd_params(config),
                  "units": [{"name": u["name"], "crystal": u["crystal"], "cif_sha256": u["cif_sha256"],
                             "structure": structure_params(config, u["name"]),
                             "reference": reference_params(config, u["name"]),
                             "phonons": phonon_params(config)} for u in units]},
        "md": {"batches": [[{**r.as_dict(), "params": md_params(config, r)} for r in batch]
                           for batch in grid.md_batches(config, shard)]},
        "post": {"snapshots": snapshot_params(config), "xrd": xrd_params(config),
                 "lattice": lattice_params(config, units),
                 "zero_point_correction": config["xrd"]["zero_point_correction"],
                 "runs": [r for u in units for r in _run_entries(config, u["name"])]},
        "qc": {"tolerances": config["qc"], "md": {k: md[k] for k in ("n_equil", "timestep_fs")},
               "units": [{"name": u["name"], "crystal": {k: v for k, v in u.items() if k not in ("potential", "cif")},
                          "runs": _run_entries(config, u["name"])} for u in units]},
        "dataset": {"drop_melted": config["dataset"]["drop_melted"], "instrument": config["instrument"],
                    "crystals": [_dataset_crystal(config, c) for c in grid.shards(config)[shard]]},
    }


def _dataset_crystal(config: dict[str, Any], crystal: str) -> dict[str, Any]:
    units = grid.crystal_units(config, crystal)
    entry = {k: v for k, v in units[0].items() if k not in ("crystal", "potential", "cif")}
    entry["name"] = crystal
    return {"crystal": entry, "split": grid.split_of(config["seed"], crystal, config["dataset"]["split"]),
            "units": [{"name": u["name"], "potential": u["potential"], "runs": _run_entries(config, u["name"])}
                      for u in units]}


def write_params(config: dict[str, Any], results: str | Path = "results") -> int:
    """Write the parameter files of a resolved configuration; return how many were (re)written.

    ``results/params/config.json`` and, per shard, one file per stage (:func:`shard_params`).
    Each job takes its file as an input, so Snakemake reruns exactly the jobs whose parameters
    changed:

    * a file whose content changed is rewritten (atomically) and gets the current time:
      newer than the outputs made with the old parameters, it makes them rerun;
    * a file that did not exist is written with modification time 0 (1970): it makes
      nothing rerun by its mere creation (e.g. after deleting results/params);
    * a file with the same content is not touched.

    A manifest of hashes (results/params/manifest.json) of each shard's crystal entries and the
    rest of the configuration lets a parse skip the shards whose inputs did not change.
    """
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

    put(results / CONFIG_FILE, json.dumps(config, indent=1, sort_keys=True))
    common = json.dumps({**config, "crystals": None}, sort_keys=True)
    manifest_path = results / "params" / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    new_manifest = {}
    entries = {c["name"]: c for c in config["crystals"]}
    for shard, crystals in grid.shards(config).items():
        key = hashlib.sha256((common + json.dumps([entries[c] for c in crystals], sort_keys=True)).encode()
                             ).hexdigest()
        if manifest.get(shard) != key or not (results / "params" / shard).is_dir():
            for stage, data in shard_params(config, shard).items():
                put(params_path(results, shard, stage), json.dumps(data, indent=1, sort_keys=True))
        new_manifest[shard] = key
    if new_manifest != manifest:
        with atomic_path(manifest_path) as tmp:
            tmp.write_text(json.dumps(new_manifest, sort_keys=True))
    # parameter files of shards no longer configured (and the per-crystal ones of mdxrd before shards) go
    for stale in sorted(p for p in (results / "params").iterdir() if p.is_dir() and p.name not in new_manifest):
        shutil.rmtree(stale)
    return written


def read_resolved(results: str | Path = "results") -> dict[str, Any]:
    """The resolved configuration that :func:`write_params` wrote (cluster jobs read it instead of validating)."""
    return read_json(Path(results) / CONFIG_FILE)


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the resolved configuration as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
