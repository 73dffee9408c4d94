"""One module per `gaussmem` subcommand; each exposes `register(subparsers)`."""

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """States every default in `--help`, except `None`, whose meaning the help text gives
    (e.g. "default: $GAUSSMEM_DATA, else ~/.local/share/gaussmem")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)
