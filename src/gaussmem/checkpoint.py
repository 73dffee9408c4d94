"""Checkpoints: plain dicts written atomically, so an interrupted save never corrupts one.

Layout (every key always present):

    {"format": "gaussmem-checkpoint", "version": 1,
     "config": resolved TrainConfig as nested dicts, "method": str,
     "model": state_dict (the weights classifiers use: the moving average of the
     trained ones where `optim.ema_decay` > 0), "trained_model": state_dict or None (the
     optimizer's weights, where they differ from "model"; older checkpoints lack it),
     "optimizer": state_dict, "memory": state_dict or None,
     "step": int, "elapsed_seconds": float, "rng": global RNG states,
     "sampler": training sampler state, "best": {"val_accuracy", "step"}, "extra": dict}
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from gaussmem.atomic import write_bytes_atomic
from gaussmem.errors import GaussmemError

FORMAT = "gaussmem-checkpoint"
VERSION = 1


class CheckpointError(GaussmemError):
    """A checkpoint that is missing, unreadable or not a gaussmem checkpoint."""


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Serialize `checkpoint` with torch.save and write it atomically to `path`."""
    payload = {"format": FORMAT, "version": VERSION, **checkpoint}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` onto the CPU.

    `weights_only=False` because the dict holds Python/NumPy RNG states; only load
    checkpoints you or gaussmem wrote (pickle can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gaussmem checkpoint")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')} "
                              f"is not supported (expected {VERSION})")
    return checkpoint


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, recorded in results so a number names its checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
