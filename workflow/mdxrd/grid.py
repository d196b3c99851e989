"""The grid of a resolved configuration: units, runs, shards and the MD batches of a shard.

* A **unit** is a crystal with one potential (``Si``, ``Si@sevennet-0``,
  :func:`mdxrd.potentials.unit_name`): its own relaxed
  structure, 0 K reference, MD runs, QC and plots.
* A **run** is a unit x ensemble x temperature x replica: one MD trajectory.
* A **shard** is a block of ``shards.crystals`` consecutive crystals of the configuration
  (every unit and run of each): every stage after parsing runs as one job per shard. Shard
  ``s000000`` holds the first crystals, ``s000001`` the next, and so on, so appending crystals
  to a sheet changes only the last shard and adds new ones; a crystal's files keep their
  paths whatever shard it is in.
* The MD job of a shard advances its runs in **batches** that run in lockstep (one batched
  potential evaluation per step), each batch within ``md.max_job_mem_mb`` by the memory model
  :func:`md_job_mem_mb`.

The functions take the resolved configuration (:func:`mdxrd.config.validate_config`) and
cache their tables by the identity of its crystal and potential lists: thousands of crystals
are common and the workflow asks for them many times while it builds its DAG.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any

#: MD job memory estimate, MB: base (Python, torch, model) + per run x atoms^2 (CHGNet's bond and
#: angle graphs; measured 0.1 GB at 64 atoms, 1.2 GB at 240 with the fast calculator, ~5x stock).
MD_BASE_MEM_MB = 1000
MD_MEM_MB_PER_ATOM2 = {"fast": 0.025, "stock": 0.12}
#: Host memory a CUDA process adds to the base, MB (CUDA context, cuBLAS/cuDNN kernels, pinned buffers): an
#: estimate, not measured here; the SLURM request of an MD job whose md.device is not cpu includes it.
MD_CUDA_HOST_MEM_MB = 3000


def format_temperature(temperature_K: float) -> str:
    """Temperature as it appears in paths: ``300``, ``600``, ``312.5``."""
    return f"{float(temperature_K):g}"


@dataclass(frozen=True)
class Run:
    """One MD run: unit x ensemble x temperature x replica."""

    unit: str
    ensemble: str
    temperature_K: float
    replica: int

    @property
    def fields(self) -> dict[str, str]:
        """The run's fields as they appear in path templates: unit, ensemble, temperature, replica."""
        return {"unit": self.unit, "ensemble": self.ensemble, "temperature": format_temperature(self.temperature_K),
                "replica": str(self.replica)}

    @property
    def label(self) -> str:
        """``<ensemble>/<T>K/r<replica>``: the run's name within its unit (QC scopes, logs)."""
        return f"{self.ensemble}/{format_temperature(self.temperature_K)}K/r{self.replica}"

    def as_dict(self) -> dict[str, Any]:
        """unit, ensemble, temperature_K, replica (a parameter file's run entry)."""
        return {"unit": self.unit, "ensemble": self.ensemble, "temperature_K": self.temperature_K,
                "replica": self.replica}


_INDEX: dict[str, Any] = {"key": None}


def _index(config: dict[str, Any]) -> dict[str, Any]:
    """Crystal entries by name and the shards of ``config``, built once per crystal list; units per crystal are
    built on demand (a cluster job needs the units of one shard, not of 100,000 crystals)."""
    key = (id(config["crystals"]), id(config["potentials"]), len(config["crystals"]), len(config["potentials"]),
           config.get("shards", {}).get("crystals", 1))
    if _INDEX["key"] != key or _INDEX.get("crystals") is not config["crystals"]:
        names = [c["name"] for c in config["crystals"]]
        size = int(config.get("shards", {}).get("crystals", 1))
        shards = {shard_name(i): names[i * size:(i + 1) * size] for i in range(math.ceil(len(names) / size))}
        _INDEX.update(key=key, crystals=config["crystals"], entries=dict(zip(names, config["crystals"])),
                      shards=shards, size=size, units={})
    return _INDEX


def shard_name(index: int) -> str:
    """The name of the ``index``-th shard: ``s000000``, ``s000001``, ..."""
    return f"s{index:06d}"


def crystal_units(config: dict[str, Any], crystal: str) -> list[dict[str, Any]]:
    """The units of crystal ``crystal``, one per potential in config order: the crystal's entry with ``name`` the
    unit name (:func:`mdxrd.potentials.unit_name`), ``crystal`` the crystal's name and ``potential`` the resolved
    potential.

    Raises
    ------
    KeyError
        No crystal of that name.
    """
    from mdxrd.potentials import unit_name  # lazy: +21 ms on importing mdxrd.grid at every Snakefile parse (~50 ms)

    index = _index(config)
    cached = index["units"].get(crystal)
    if cached is None:
        entry = index["entries"][crystal]
        cached = index["units"][crystal] = [{**entry, "name": unit_name(crystal, p["name"]), "crystal": crystal,
                                             "potential": p} for p in config["potentials"]]
    return cached


def units(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every unit (crystal x potential), in config order (:func:`crystal_units`)."""
    return [u for c in _index(config)["entries"] for u in crystal_units(config, c)]


def unit(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The unit called ``name`` (``<crystal>`` or ``<crystal>@<potential>``).

    Raises
    ------
    KeyError
        No unit of that name.
    """
    for u in crystal_units(config, name.split("@", 1)[0]):
        if u["name"] == name:
            return u
    raise KeyError(name)


def shards(config: dict[str, Any]) -> dict[str, list[str]]:
    """Shard name -> the names of its crystals, in config order."""
    return _index(config)["shards"]


def shard_of(config: dict[str, Any], crystal: str) -> str:
    """The shard of crystal ``crystal``."""
    index = _index(config)
    return shard_name(list(index["entries"]).index(crystal) // index["size"])


def shard_units(config: dict[str, Any], shard: str) -> list[dict[str, Any]]:
    """Every unit of the crystals of ``shard``, crystal by crystal."""
    return [u for c in shards(config)[shard] for u in crystal_units(config, c)]


def runs(config: dict[str, Any], unit: str | None = None) -> list[Run]:
    """The runs in a fixed order: units (config order) x ensembles x temperatures x replicas; with ``unit``
    only that unit's."""
    names = [u["name"] for u in units(config)] if unit is None else [unit]
    return [Run(u, e, float(t), r) for u, e, t, r in itertools.product(
        names, config["ensembles"], config["temperatures_K"], range(config["replicas"]))]


def shard_runs(config: dict[str, Any], shard: str) -> list[Run]:
    """Every run of every unit of ``shard``."""
    return [r for u in shard_units(config, shard) for r in runs(config, u["name"])]


def supercell_atoms(entry: dict[str, Any]) -> int:
    """Atoms in the supercell of a checked crystal entry (its cell's atoms x na x nb x nc)."""
    return entry["n_atoms_cell"] * math.prod(entry["supercell"])


def md_job_mem_mb(calculator: str, n_atoms: int, n_runs: int, device: str = "cpu") -> int:
    """Memory estimate of ``n_runs`` MD runs of ``n_atoms`` atoms advanced together, MB (all graphs at once);
    ``MD_CUDA_HOST_MEM_MB`` more for any ``device`` (md.device) but cpu."""
    cuda = 0 if device == "cpu" else MD_CUDA_HOST_MEM_MB
    return int(MD_BASE_MEM_MB + cuda + MD_MEM_MB_PER_ATOM2[calculator] * n_atoms**2 * n_runs)


def md_batches(config: dict[str, Any], shard: str) -> list[list[Run]]:
    """The runs of a shard in lockstep batches, in run order.

    A batch holds runs of one potential (one model evaluates a batch). ``md.runs_per_job``
    runs per batch, or with ``auto`` as many as keep :func:`md_job_mem_mb` within
    ``md.max_job_mem_mb`` (every run of a batch with the atom count of its largest supercell).

    Raises
    ------
    ValueError
        One run alone exceeds ``md.max_job_mem_mb``.
    """
    md = config["md"]
    batches: list[list[Run]] = []
    current: list[Run] = []
    largest = 0
    potential = None
    for run in shard_runs(config, shard):
        entry = unit(config, run.unit)
        atoms = supercell_atoms(entry)
        alone = md_job_mem_mb(md["calculator"], atoms, 1)
        if alone > md["max_job_mem_mb"]:
            raise ValueError(f"md.max_job_mem_mb: {md['max_job_mem_mb']} MB cannot hold one run of {run.unit} "
                             f"({atoms} atoms, {alone} MB); allowed: at least {alone}")
        size = max(largest, atoms)
        full = (len(current) >= md["runs_per_job"] if md["runs_per_job"] != "auto"
                else md_job_mem_mb(md["calculator"], size, len(current) + 1) > md["max_job_mem_mb"])
        if current and (full or entry["potential"]["name"] != potential):
            batches.append(current)
            current, size = [], atoms
        current.append(run)
        largest, potential = size, entry["potential"]["name"]
    if current:
        batches.append(current)
    return batches


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
