"""`gaussmem checkpoint convert OLD NEW --trust-pickle`: old checkpoints to the safe format."""

from __future__ import annotations

import argparse

from gaussmem.commands import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "checkpoint", help="checkpoint files: convert old-format (pickle) checkpoints",
        description="Checkpoints are safetensors + JSON and load without running code. "
        "Checkpoints written by older gaussmem versions are pickles and are refused; "
        "`convert` rewrites one in the current format.",
        formatter_class=DefaultsHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    convert = actions.add_parser(
        "convert", help="rewrite an old-format checkpoint in the current format",
        description="Read OLD, an old-format checkpoint, and write NEW in the current "
        "format. Reading OLD unpickles it, which runs any code the file holds: "
        "--trust-pickle states that you made the file or trust whoever did.",
        formatter_class=DefaultsHelpFormatter)
    convert.add_argument("old", metavar="OLD", help="old-format checkpoint (.ckpt)")
    convert.add_argument("new", metavar="NEW", help="checkpoint to write (atomically)")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="required: OLD is trusted to run code when unpickled")
    convert.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from gaussmem.legacy_checkpoint import convert_legacy_checkpoint

    checkpoint = convert_legacy_checkpoint(args.old, args.new, trust_pickle=args.trust_pickle)
    print(f"wrote {args.new} ({checkpoint['method']} checkpoint at step {checkpoint['step']})")
    return 0
