"""Reading a `GaussianMemory` file that someone else may have written.

A memory (or gallery) file is safetensors: tensors plus string metadata, so reading it
never runs code. It can still lie: a capacity of 10**12, shapes that disagree with the
metadata, a NaN mean that would win every search, a negative variance, float labels. So
everything is checked in an order that trusts nothing early: the metadata's types and
bounds, then every tensor's dtype and shape against the metadata (from the header, before
any tensor is read), then the values. Any problem is one `MemoryFileError` line naming
the file; nothing is allocated from the metadata alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors
import torch

from gaussmem.errors import MemoryFileError

FILE_FORMAT = "gaussmem.GaussianMemory/1"
#: Per-slot tensors a memory file holds, with their safetensors dtypes (the key tensors
#: may be float32 or float64; they must agree).
SLOT_TENSORS = {
    "means": ("F32", "F64"),
    "variances": ("F32", "F64"),
    "labels": ("I64",),
    "counts": ("I64",),
    "ages": ("I64",),
    "valid": ("BOOL",),
}
_GENERATOR_STATE = "noise_generator_state"
#: The CPU generator's state: a flat uint8 tensor of this length.
_GENERATOR_STATE_SIZE = torch.Generator().get_state().numel()
#: Ages times capacity must fit int64: the slot allocator orders slots by that product.
_MAX_AGE_TIMES_CAPACITY = 2**62


@dataclass(frozen=True)
class MemoryFile:
    """A memory file's validated content: metadata values and CPU tensors."""

    capacity: int
    dim: int
    age_noise: float
    seed: int
    tensors: dict[str, torch.Tensor]


def read_memory_file(path: str | os.PathLike[str]) -> MemoryFile:
    """Read and check a memory file; raises `MemoryFileError` naming the file."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            names = set(reader.keys())
            capacity, dim, age_noise, seed = _check_metadata(path, metadata, names)
            dtypes = _check_header(path, reader, capacity, dim)
            tensors = {name: reader.get_tensor(name) for name in (*SLOT_TENSORS,
                                                                   _GENERATOR_STATE)}
    except FileNotFoundError as error:
        raise MemoryFileError(f"{path}: memory file not found") from error
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError) as error:
        raise MemoryFileError(
            f"{path}: not a readable safetensors memory file (truncated or corrupt?): "
            f"{_one_line(error)}"
        ) from error
    if dtypes["means"] != dtypes["variances"]:
        raise MemoryFileError(f"{path}: means are {dtypes['means']} but variances are "
                              f"{dtypes['variances']}; they must agree")
    check_memory_values(tensors, str(path))
    return MemoryFile(capacity, dim, age_noise, seed, tensors)


def check_memory_values(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Check a memory's slot tensors for values a search or merge cannot survive.

    `tensors` holds `SLOT_TENSORS` with shapes already checked; `source` names the file
    in the `MemoryFileError`.
    """
    means, variances = tensors["means"], tensors["variances"]
    labels, counts, ages, valid = (tensors[name] for name in ("labels", "counts", "ages",
                                                               "valid"))
    problems = [
        (not bool(torch.isfinite(means).all()), "means are not all finite (NaN or inf)"),
        (not bool(torch.isfinite(variances).all()),
         "variances are not all finite (NaN or inf)"),
        (bool((variances <= 0).any()), "variances are not all > 0"),
        (bool((labels[valid] < 0).any()), "a valid slot has a negative label"),
        (bool((labels < -1).any()), "labels are below -1 (the empty-slot label)"),
        (bool((counts < 0).any()), "counts are not all >= 0"),
        (bool((counts[valid] < 1).any()), "a valid slot has a count below 1"),
        (bool((ages < 0).any()), "ages are not all >= 0"),
        (len(ages) > 0 and int(ages.max()) > _MAX_AGE_TIMES_CAPACITY // max(1, len(ages)),
         "ages are too large for the slot allocator"),
    ]
    for failed, problem in problems:
        if failed:
            raise MemoryFileError(f"{source}: {problem}")


def _check_metadata(
    path: Path, metadata: dict[str, str], names: set[str]
) -> tuple[int, int, float, int]:
    """Format, tensor names and parsed metadata `(capacity, dim, age_noise, seed)`."""
    if metadata.get("format") != FILE_FORMAT:
        raise MemoryFileError(f"{path}: format {metadata.get('format')!r} is not "
                              f"{FILE_FORMAT!r}")
    missing = sorted({*SLOT_TENSORS, _GENERATOR_STATE} - names)
    if missing:
        raise MemoryFileError(f"{path}: missing tensors {missing}")
    capacity = _metadata_int(path, metadata, "capacity", 1, 2**62)
    dim = _metadata_int(path, metadata, "dim", 1, 2**62)
    seed = _metadata_int(path, metadata, "seed", 0, 2**64 - 1)
    try:
        age_noise = float(metadata.get("age_noise", ""))
    except ValueError:
        age_noise = math.nan
    if not (math.isfinite(age_noise) and age_noise >= 0):
        raise MemoryFileError(f"{path}: metadata age_noise {metadata.get('age_noise')!r} "
                              "is not a finite number >= 0")
    return capacity, dim, age_noise, seed


def _metadata_int(path: Path, metadata: dict[str, str], key: str, low: int, high: int) -> int:
    text = metadata.get(key)
    value = None
    if text is not None and len(text) <= 20 and text.strip().isdigit():
        value = int(text)
    if value is None or not low <= value <= high:
        raise MemoryFileError(f"{path}: metadata {key} {text!r} is not an integer in "
                              f"[{low}, {high}]")
    return value


def _check_header(
    path: Path, reader: safetensors.safe_open, capacity: int, dim: int
) -> dict[str, str]:
    """Every tensor's dtype and shape from the header, before any tensor is read."""
    expected_shapes = {name: (capacity, dim) if name in ("means", "variances") else (capacity,)
                       for name in SLOT_TENSORS}
    expected_shapes[_GENERATOR_STATE] = (_GENERATOR_STATE_SIZE,)
    allowed_dtypes = {**SLOT_TENSORS, _GENERATOR_STATE: ("U8",)}
    dtypes = {}
    for name, shape in expected_shapes.items():
        header = reader.get_slice(name)
        dtype, found = header.get_dtype(), tuple(header.get_shape())
        if dtype not in allowed_dtypes[name]:
            raise MemoryFileError(f"{path}: tensor {name!r} has dtype {dtype}, expected "
                                  f"{' or '.join(allowed_dtypes[name])}")
        if found != shape:
            raise MemoryFileError(
                f"{path}: tensor {name!r} has shape {found}, the metadata says {shape} "
                f"(capacity {capacity}, dim {dim})"
            )
        dtypes[name] = dtype
    return dtypes


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
