"""The JSON record a benchmark, experiment or report writes: what ran, where, and what
it measured.

Every script under `benchmarks/` and `experiments/` (and the figure commands) stamps its
record with the same command line and hardware record, writes it atomically and, where
runs add up in one file, replaces only the record of the same identity; doing that in
one place keeps the files that `scripts/make_results_table.py` reads in one shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

from gaussmem.plumbing.atomic import write_text_atomic
from gaussmem.plumbing.hardware import command_line, describe_hardware


def provenance(hardware: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"command": ..., "hardware": ...}`: the running command as a user would retype it
    and the machine's hardware record (`hardware` where the caller already took one,
    e.g. before a long measurement, else taken now)."""
    return {"command": command_line(),
            "hardware": describe_hardware() if hardware is None else hardware}


def write_json(path: str | os.PathLike[str], document: Any, *, indent: int | None = 2,
               sort_keys: bool = False) -> None:
    """Write `document` as JSON with a final newline, atomically (a reader never sees
    half a record, even when the script is killed mid-write); `indent` None: one line."""
    write_text_atomic(path, json.dumps(document, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON document at `path`, or None when there is no file yet (a first run)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def merge_by_identity(records: Iterable[dict[str, Any]], record: dict[str, Any],
                      identity: Callable[[dict[str, Any]], Hashable]) -> list[dict[str, Any]]:
    """`records` without those whose `identity` is `record`'s, then `record`: a rerun
    replaces its own record and keeps everyone else's."""
    key = identity(record)
    return [old for old in records if identity(old) != key] + [record]
