"""What every shard job shares: paths from the rule's templates, stamps, reuse, failures and the manifest.

A shard job (:mod:`mdxrd.relax`, :mod:`mdxrd.md`, :mod:`mdxrd.post`, :mod:`mdxrd.qc`) works
through the units or runs of one shard. The rule gives it one path template per kind of
output, e.g. ``results/md/{unit}/{ensemble}/{temperature}K/r{replica}``, filled per unit or
run with :func:`fill`; the files inside such a directory have fixed names (each stage's
``FILES``). The job

* reuses a unit's or run's outputs when their record carries the stamp of the same
  parameters and inputs (:func:`stamp`, :func:`is_current`): a shard whose membership
  changed, or a rerun after a failure, redoes only what is missing or out of date;
* goes on when one item fails, and fails at the end naming every failed item
  (:class:`ShardError`), after the others' outputs are written;
* writes the shard's manifest last (:func:`write_manifest`): the one output the rule declares,
  listing what the job wrote or reused, so a shard's outputs are known without a directory walk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mdxrd.io import read_json, write_json

log = logging.getLogger(__name__)

T = TypeVar("T")


class ShardError(RuntimeError):
    """Some units or runs of a shard failed; the others are written. The message names each failure."""


def fill(template: str, **fields: Any) -> Path:
    """The path of ``template`` (a rule's path template, ``{unit}`` etc.) for one unit or run."""
    return Path(template.format(**{k: str(v) for k, v in fields.items()}))


def stamp(*parts: Any) -> str:
    """SHA-256 of the parameters and input records that made an output (canonical JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_current(record: str | Path, expected_stamp: str, files: Iterable[str | Path] = ()) -> bool:
    """True when ``record`` (a JSON file) exists with ``"stamp": expected_stamp`` and every one of ``files`` exists."""
    try:
        if read_json(record).get("stamp") != expected_stamp:
            return False
    except (OSError, ValueError):
        return False
    return all(Path(f).is_file() for f in files)


def run_all(items: Sequence[T], work: Callable[[T], Any], name: Callable[[T], str], workers: int = 1
            ) -> tuple[list[Any], list[str]]:
    """Apply ``work`` to every item (in ``workers`` processes when > 1); go on past failures.

    Returns
    -------
    (results, failures)
        ``results[i]`` is item i's return value or None where it failed; ``failures`` one line per
        failed item, ``"<name>: <error>"``.
    """
    results: list[Any] = [None] * len(items)
    failures: list[str] = []
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
            futures = [pool.submit(work, item) for item in items]
            for i, future in enumerate(futures):
                try:
                    results[i] = future.result()
                except Exception as err:  # noqa: BLE001 - reported per item
                    failures.append(f"{name(items[i])}: {type(err).__name__}: {err}")
                    log.error("%s failed: %s", name(items[i]), err)
    else:
        for i, item in enumerate(items):
            try:
                results[i] = work(item)
            except Exception as err:  # noqa: BLE001 - reported per item
                failures.append(f"{name(item)}: {type(err).__name__}: {err}")
                log.error("%s failed: %s", name(item), err)
    return results, failures


def write_manifest(path: str | Path, stage: str, entries: list[dict[str, Any]], started: float) -> None:
    """Write the shard's manifest: stage, one entry per unit or run (its directories, reused or made), wall time."""
    write_json(path, {"stage": stage, "entries": entries, "wall_s": time.perf_counter() - started,
                      "reused": sum(1 for e in entries if e.get("reused")), "made": sum(1 for e in entries
                                                                                     if not e.get("reused"))})


def fail_if(failures: list[str], what: str, total: int) -> None:
    """Raise :class:`ShardError` listing ``failures`` (of ``total`` ``what``) when there are any."""
    if failures:
        raise ShardError(f"{len(failures)} of {total} {what} failed (the others are written):\n" + "\n".join(failures))
