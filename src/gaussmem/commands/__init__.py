"""One module per `gaussmem` subcommand; each exposes `register(subparsers)`."""

import argparse

from gaussmem.plumbing.settings import (
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    default_cache_dir,
    default_data_dir,
)


def add_data_location_arguments(parser: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """`--data-dir` (and `--cache-dir`), worded the same in every command that reads data."""
    parser.add_argument("--data-dir", default=None,
                        help=f"dataset root holding omniglot/ (and lfw/); default: "
                        f"${DATA_ENV_VAR}, else {default_data_dir()}")
    if cache:
        parser.add_argument("--cache-dir", default=None,
                            help=f"where preprocessed arrays are cached; default: "
                            f"${CACHE_ENV_VAR}, else {default_cache_dir()}")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """States every default in `--help`, except `None`, whose meaning the help text gives
    (e.g. "default: $GAUSSMEM_DATA, else ~/.local/share/gaussmem")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)
