"""Command-line interface: ``mdxrd <subcommand>``.

Each stage module that offers a subcommand defines ``add_parser(subparsers)``
which registers its parser and sets ``func`` to a callable taking the parsed
``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mdxrd import __version__
from mdxrd.shard import ShardError

#: Modules that register subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = (
    "mdxrd.check",
    "mdxrd.relax",
    "mdxrd.md",
    "mdxrd.post",
    "mdxrd.qc",
    "mdxrd.dataset",
    "mdxrd.xrd",
)


class UserError(Exception):
    """Bad input from the user: printed as one message, no traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="mdxrd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mdxrd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a stage not written yet
            if err.name == name:
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mdxrd`` console script; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"mdxrd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ShardError as err:  # some units or runs failed, the others are written: the message names them
        print(f"mdxrd {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
