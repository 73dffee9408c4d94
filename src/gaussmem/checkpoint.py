"""Checkpoints: one safetensors file whose metadata holds the non-tensor state as JSON.

Loading a checkpoint someone sent you never runs code: tensors are raw safetensors
buffers and everything else is JSON, decoded into a closed set of types (dicts, lists,
tuples, numbers, strings, None, NumPy arrays of plain dtypes). Old-format checkpoints
(torch.save pickles, version 1) are recognized by their first bytes, without unpickling,
and refused; `gaussmem checkpoint convert` (gaussmem.legacy_checkpoint) converts one
whose origin the user vouches for.

Layout (every key always present; `augment` only where the method has one):

    {"config": resolved TrainConfig as nested dicts, "method": str,
     "model": state_dict (the weights classifiers use: the moving average of the
     trained ones where `optim.ema_decay` > 0), "trained_model": state_dict or None (the
     optimizer's weights, where they differ from "model"),
     "optimizer": state_dict, "memory": state_dict or None,
     "step": int, "elapsed_seconds": float, "rng": global RNG states,
     "sampler": training sampler state, "best": {"val_accuracy", "step", ...},
     "extra": dict}

On disk the nested dict is one JSON document (metadata key "checkpoint") in which each
tensor is replaced by `{"__tensor__": name}`, its name being its key path ("model/fc.weight").
JSON cannot say tuple, non-string dict key or array, so those are tagged too
(`_TAGS`); a dict that would look like a tag is written as `__items__`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from gaussmem.errors import CheckpointError
from gaussmem.plumbing.atomic import write_bytes_atomic

FORMAT = "gaussmem-checkpoint"
VERSION = 2
#: What `gaussmem checkpoint convert` reads: torch.save pickles of the version-1 layout.
LEGACY_VERSION = 1

REQUIRED_KEYS = ("config", "method", "model", "trained_model", "optimizer", "memory",
                 "step", "elapsed_seconds", "rng", "sampler", "best", "extra")
#: Tensor dtypes a checkpoint may hold (weights, statistics, counters, RNG states).
TENSOR_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64,
                           torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                           torch.bool})
#: NumPy array dtypes the JSON may carry (the legacy NumPy RNG state is uint32).
ARRAY_DTYPES = frozenset({"bool", "uint8", "uint32", "uint64", "int32", "int64",
                          "float32", "float64"})
_TAGS = frozenset({"__tensor__", "__tuple__", "__items__", "__ndarray__"})


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` (the layout above) atomically to `path` as safetensors + JSON."""
    _check_layout(path, checkpoint)
    tensors: dict[str, torch.Tensor] = {}
    document = _encode(checkpoint, "", tensors)
    metadata = {"format": FORMAT, "version": str(VERSION),
                "checkpoint": json.dumps(document, separators=(",", ":"))}
    write_bytes_atomic(path, safetensors.torch.save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` onto the CPU; runs no code from
    the file. Raises CheckpointError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not _is_safetensors(data) and is_legacy_checkpoint(data):
        raise CheckpointError(
            f"{path} is an old-format (pickle) checkpoint, which can run code when loaded, "
            f"so it is not read; if you trust where it came from, convert it with "
            f"`gaussmem checkpoint convert {path} NEW.ckpt --trust-pickle`")
    metadata = _metadata(path, data)
    try:
        # Third-party parser of untrusted bytes: whatever it raises means "corrupt".
        tensors = safetensors.torch.load(data)
    except Exception as error:
        raise CheckpointError(f"{path}: corrupt checkpoint tensors: {_one_line(error)}"
                              ) from error
    for name, tensor in tensors.items():
        if tensor.dtype not in TENSOR_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {tensor.dtype}, which "
                                  "no checkpoint holds")
    try:
        document = json.loads(metadata["checkpoint"])
        unused = set(tensors)
        checkpoint = _decode(document, tensors, unused)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: corrupt checkpoint contents: {_one_line(error)}"
                              ) from error
    if unused:
        raise CheckpointError(f"{path}: holds tensors its contents do not name: "
                              f"{sorted(unused)[:3]}")
    _check_layout(path, checkpoint)
    return checkpoint


def is_legacy_checkpoint(data: bytes) -> bool:
    """Whether `data` starts like a torch.save file: a zip archive (torch >= 1.6) or a
    pickle stream (PROTO opcode, protocol 2-5). Looks at bytes only; unpickles nothing."""
    return data.startswith(b"PK\x03\x04") or (data[:1] == b"\x80"
                                              and data[1:2] in (b"\x02", b"\x03", b"\x04",
                                                                b"\x05"))


def _is_safetensors(data: bytes) -> bool:
    """8-byte little-endian header length, then a JSON object."""
    return len(data) >= 10 and data[8:9] == b"{"


def _metadata(path: Path, data: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__`, checked to be a current gaussmem one."""
    if not _is_safetensors(data):
        raise CheckpointError(f"{path} is not a gaussmem checkpoint (not a safetensors file)")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > len(data) - 8:
        raise CheckpointError(f"{path}: truncated checkpoint (header of {header_size} bytes, "
                              f"file of {len(data)})")
    try:
        header = json.loads(data[8:8 + header_size])
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: corrupt checkpoint header: {_one_line(error)}"
                              ) from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gaussmem checkpoint (safetensors file "
                              "without gaussmem metadata)")
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(f"{path}: checkpoint version {metadata.get('version')!r} is "
                              f"not supported (expected {VERSION})")
    if not isinstance(metadata.get("checkpoint"), str):
        raise CheckpointError(f"{path}: checkpoint metadata lacks its contents")
    return metadata


def _encode(value: Any, key_path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON-ready data; tensors move to `tensors` under their key path."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        if key_path in tensors:
            raise CheckpointError(f"two checkpoint tensors share the name {key_path!r}")
        # A copy: safetensors refuses tensors that share storage, and CUDA ones.
        tensors[key_path] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key_path}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in ARRAY_DTYPES:
            raise CheckpointError(f"checkpoint entry {key_path!r}: NumPy dtype "
                                  f"{value.dtype} cannot be saved")
        return {"__ndarray__": {"dtype": value.dtype.name, "shape": list(value.shape),
                                "data": value.ravel().tolist()}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, f"{key_path}/{index}", tensors)
                              for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{key_path}/{index}", tensors) for index, item in enumerate(value)]
    if isinstance(value, dict):
        plain = all(isinstance(key, str) for key in value) and not (
            len(value) == 1 and next(iter(value)) in _TAGS)
        if plain:
            return {key: _encode(item, _join(key_path, key), tensors)
                    for key, item in value.items()}
        return {"__items__": [[_encode(key, key_path, tensors),
                               _encode(item, _join(key_path, str(key)), tensors)]
                              for key, item in value.items()]}
    raise CheckpointError(f"checkpoint entry {key_path!r}: cannot save a "
                          f"{type(value).__name__}")


def _join(key_path: str, key: str) -> str:
    return f"{key_path}/{key}" if key_path else key


def _decode(value: Any, tensors: dict[str, torch.Tensor], unused: set[str]) -> Any:
    """Inverse of `_encode`; raises ValueError for anything `_encode` cannot write."""
    if isinstance(value, list):
        return [_decode(item, tensors, unused) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in _TAGS:
        return {key: _decode(item, tensors, unused) for key, item in value.items()}
    tag, content = next(iter(value.items()))
    if tag == "__tensor__":
        if not isinstance(content, str) or content not in unused:
            raise ValueError(f"tensor reference {content!r} names no tensor (or one twice)")
        unused.discard(content)
        return tensors[content]
    if tag == "__tuple__":
        if not isinstance(content, list):
            raise ValueError("a tuple that is not a list")
        return tuple(_decode(item, tensors, unused) for item in content)
    if tag == "__items__":
        if not (isinstance(content, list)
                and all(isinstance(pair, list) and len(pair) == 2 for pair in content)):
            raise ValueError("dict items that are not [key, value] pairs")
        pairs = [(_decode(key, tensors, unused), _decode(item, tensors, unused))
                 for key, item in content]
        try:
            return dict(pairs)
        except TypeError as error:
            raise ValueError(f"a dict key that cannot be hashed: {error}") from error
    return _decode_array(content)


def _decode_array(content: Any) -> np.ndarray:
    if not (isinstance(content, dict) and set(content) == {"dtype", "shape", "data"}
            and content["dtype"] in ARRAY_DTYPES and isinstance(content["shape"], list)
            and isinstance(content["data"], list)
            and all(isinstance(size, int) and size >= 0 for size in content["shape"])
            and all(isinstance(item, int | float) for item in content["data"])):
        raise ValueError("a malformed NumPy array")
    if math.prod(content["shape"]) != len(content["data"]):
        raise ValueError(f"an array of shape {content['shape']} with "
                         f"{len(content['data'])} values")
    try:
        array = np.array(content["data"], dtype=content["dtype"])
    except (OverflowError, TypeError) as error:
        raise ValueError(f"array values do not fit {content['dtype']}: {error}") from error
    return array.reshape(content["shape"])


def _check_layout(path: str | Path, checkpoint: Any) -> None:
    """The layout in the module docstring, with the types every reader relies on."""
    def fail(message: str) -> None:
        raise CheckpointError(f"{path}: {message}")

    if not isinstance(checkpoint, dict):
        fail("checkpoint contents are not a dict")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        fail(f"checkpoint lacks {', '.join(missing)}")
    for key in ("config", "optimizer", "rng", "sampler", "best", "extra"):
        if not isinstance(checkpoint[key], dict):
            fail(f"checkpoint entry {key!r} is a {type(checkpoint[key]).__name__}, not a dict")
    if not isinstance(checkpoint["method"], str):
        fail("checkpoint entry 'method' is not a string")
    step, seconds = checkpoint["step"], checkpoint["elapsed_seconds"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        fail(f"checkpoint step {step!r} is not a count")
    if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
            or not math.isfinite(seconds) or seconds < 0):
        fail(f"checkpoint elapsed_seconds {seconds!r} is not a duration")
    for key in ("model", "trained_model", "memory"):
        state = checkpoint[key]
        if state is None and key != "model":
            continue
        if not isinstance(state, dict) or not all(isinstance(name, str) for name in state):
            fail(f"checkpoint entry {key!r} is not a state dict")
        if key != "memory" and not all(isinstance(tensor, torch.Tensor)
                                       for tensor in state.values()):
            fail(f"checkpoint entry {key!r} holds something other than tensors")
    rng = checkpoint["rng"]
    cuda = rng.get("cuda", [])
    generator_states = (([rng["torch"]] if "torch" in rng else [])
                        + (list(cuda) if isinstance(cuda, list | tuple) else [cuda]))
    for state in generator_states:
        if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8
                and state.dim() == 1):
            fail("a torch RNG state in the checkpoint is not a 1-D uint8 tensor")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, recorded in results so a number names its checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
