"""The `gaussmem` command line: a thin dispatcher over `gaussmem.commands.*`.

Each subcommand lives in its own module under `gaussmem.commands` and exposes
`register(subparsers)`, which adds its parser and sets `handler` to a function taking the
parsed arguments and returning an exit status. Errors a user can fix (`GaussmemError`)
print one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gaussmem import __version__
from gaussmem.commands import DefaultsHelpFormatter
from gaussmem.errors import GaussmemError

# Order here is the order `gaussmem --help` lists the subcommands in.
COMMAND_MODULES: tuple[str, ...] = ("data", "train", "evaluate", "figures", "checkpoint",
                                    "recognize", "serve")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="gaussmem",
        description="One-shot learning with a memory of Gaussian embeddings "
        "(Tseran & Harada 2017). Run `gaussmem COMMAND --help` for each command.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gaussmem {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"gaussmem.commands.{module_name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except GaussmemError as error:
        print(f"gaussmem: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gaussmem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
