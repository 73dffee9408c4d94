"""Converting old-format checkpoints (torch.save pickles, layout version 1).

Unpickling runs whatever code the file names, so this is the one place in gaussmem that
unpickles, and only when the caller states that it trusts the file (`trust_pickle`,
the CLI's `--trust-pickle`). `load_checkpoint` refuses these files and points here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from gaussmem.checkpoint import (
    FORMAT,
    LEGACY_VERSION,
    is_legacy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from gaussmem.errors import CheckpointError


def convert_legacy_checkpoint(old_path: str | Path, new_path: str | Path, *,
                              trust_pickle: bool) -> dict[str, Any]:
    """Read the version-1 pickle checkpoint `old_path` (running its pickle: trusted files
    only) and write it to `new_path` in the current safe format; returns the new
    checkpoint as `load_checkpoint` reads it back."""
    old_path, new_path = Path(old_path), Path(new_path)
    if not trust_pickle:
        raise CheckpointError(f"converting {old_path} unpickles it, which runs any code it "
                              "holds; pass --trust-pickle only for a file you made or trust")
    if not old_path.is_file():
        raise CheckpointError(f"checkpoint {old_path} does not exist")
    data = old_path.read_bytes()
    if not is_legacy_checkpoint(data):
        raise CheckpointError(f"{old_path} is not an old-format (torch.save) checkpoint; "
                              "current checkpoints need no conversion")
    try:
        legacy = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read old-format checkpoint {old_path}: {error}"
                              ) from error
    if not isinstance(legacy, dict) or legacy.get("format") != FORMAT:
        raise CheckpointError(f"{old_path} is not a gaussmem checkpoint")
    if legacy.get("version") != LEGACY_VERSION:
        raise CheckpointError(f"{old_path}: old-format checkpoint version "
                              f"{legacy.get('version')!r} (expected {LEGACY_VERSION})")
    checkpoint = {key: value for key, value in legacy.items()
                  if key not in ("format", "version")}
    # Version-1 checkpoints written before weight averages existed lack this entry.
    checkpoint.setdefault("trained_model", None)
    save_checkpoint(new_path, checkpoint)
    return load_checkpoint(new_path)
