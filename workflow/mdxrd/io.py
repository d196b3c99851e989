"""Small I/O helpers shared by the stages: atomic writes and JSON."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A job killed mid-write leaves only a ``.tmp`` file, never a file that looks
    finished. On an exception the temporary file is removed and the error re-raised.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; finished outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_cache(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as compact JSON to a cache file atomically; a read-only directory only skips the write."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, sort_keys=True))
    except OSError:
        pass


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON from ``path``."""
    return json.loads(Path(path).read_text())


def load_params(spec: str) -> Any:
    """Parameters given on a command line: JSON text, or a JSON file with an optional section.

    ``spec`` is either JSON text (starting with ``{`` or ``[``) or ``PATH`` or
    ``PATH#key/key/...``: the JSON file at PATH, descended into by the keys after
    ``#``. The workflow passes ``results/params/{crystal}/{stage}.json`` (and e.g.
    ``qc.json#runs``), so no per-crystal data travels on a command line (Linux refuses
    single arguments over 128 KiB).

    Raises
    ------
    ValueError
        Not JSON, file missing, or a key not in the file; the message names the spec.
    """
    text = spec.lstrip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON: {err}") from None
    path, _, pointer = spec.partition("#")
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: parameter file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON: {err}") from None
    for key in filter(None, pointer.split("/")):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{spec}: no section {key!r} in {path}")
        data = data[key]
    return data
