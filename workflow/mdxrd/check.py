"""``mdxrd check PATH``: check a configuration file or a structure file before anything runs.

A configuration (``.yaml``/``.yml``) is validated with :func:`mdxrd.config.load_config`
(schema, ranges, grid consistency, every CIF it names, reusing and filling the checked
records under ``results/checked`` as the workflow does); any other file is read as a
structure with :func:`mdxrd.structure.read_checked_structure`. A bad input prints one line
naming the file, the field and what is allowed, and exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mdxrd.cli import UserError
from mdxrd.config import ConfigError, load_config
from mdxrd.grid import runs
from mdxrd.structure import StructureError, read_checked_structure

#: Checked records of structure files, shared with the workflow (relative to the working directory).
CACHE_DIR = "results/checked"


def check_path(path: str | Path) -> str:
    """Check ``path`` (config or structure); return a one-line summary.

    Raises
    ------
    mdxrd.config.ConfigError, mdxrd.structure.StructureError
        What is wrong, naming file and field.
    """
    path = Path(path)
    if path.suffix.lower() in {".yaml", ".yml"}:
        config = load_config(path, cache_dir=CACHE_DIR)
        return f"{path}: OK, {len(config['crystals'])} crystal(s), {len(runs(config))} MD run(s)"
    structure = read_checked_structure(path)
    return f"{path}: OK, {structure.composition.reduced_formula}, {len(structure)} atoms per cell"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mdxrd check``."""
    p = subparsers.add_parser("check", help="check a config (YAML) or structure (CIF) file")
    p.add_argument("path", help="config.yaml or a structure file")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        print(check_path(args.path))
    except (ConfigError, StructureError) as err:
        raise UserError(str(err)) from None
    return 0
