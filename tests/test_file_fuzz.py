"""Random and mutated bytes fed to the file loaders a user may point at files they did
not make: only the project's own errors come out, and nothing non-finite gets in."""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaussmem.data.array_cache import load_or_build
from gaussmem.errors import MemoryFileError
from gaussmem.memory import NOT_FOUND, GaussianMemory

FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _memory_file_bytes() -> bytes:
    generator = torch.Generator().manual_seed(0)
    memory = GaussianMemory(6, 3, seed=0, age_noise=0.5)
    memory.update_(torch.randn(4, 3, generator=generator), torch.rand(4, 3, generator=generator)
                   + 0.1, torch.tensor([0, 1, 2, 0]))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "memory.safetensors"
        memory.save(path)
        return path.read_bytes()


MEMORY_FILE = _memory_file_bytes()
HEADER_END = 8 + int.from_bytes(MEMORY_FILE[:8], "little")


ALL_MUTATIONS = ("flip", "flip_header", "poison", "truncate", "edit_header", "append", "random")


@st.composite
def mutated(draw: st.DrawFn, original: bytes, header_end: int,
            kinds: tuple[str, ...] = ALL_MUTATIONS) -> bytes:
    """The original bytes with bit flips (often in the header), a hostile value written
    over the data (NaN, inf, -1.0 or a huge integer), a truncation, an edit of a header
    token, appended bytes, or replaced by random bytes."""
    kind = draw(st.sampled_from(kinds))
    payload = bytearray(original)
    if kind == "poison":
        value = draw(st.sampled_from([struct.pack("<f", math.nan), struct.pack("<f", math.inf),
                                      struct.pack("<f", -1.0), struct.pack("<q", -(2**62)),
                                      struct.pack("<q", 2**62)]))
        # Mostly within the first few hundred bytes: the slot tensors, before the long
        # generator state.
        last = min(len(payload) - header_end - len(value), draw(st.sampled_from([320, 10**9])))
        position = draw(st.integers(0, last // 4)) * 4
        payload[header_end + position: header_end + position + len(value)] = value
    elif kind in ("flip", "flip_header"):
        end = header_end if kind == "flip_header" else len(payload)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, end - 1))
            payload[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del payload[draw(st.integers(0, len(payload) - 1)):]
    elif kind == "edit_header":
        header = payload[8:header_end].decode("latin-1")
        tokens = sorted({token for token in header.replace(",", " ").replace(":", " ")
                         .replace("[", " ").replace("]", " ").replace("{", " ")
                         .replace("}", " ").split()})
        old = draw(st.sampled_from(tokens))
        new = draw(st.sampled_from(['"F64"', '"I64"', '"BOOL"', '"F16"', "0", "1", "-1",
                                    "99999999999", '"nan"', '"1e12"', "null", '""',
                                    "[]", "1.5", '"a"']))
        header = header.replace(old, new, 1).encode("latin-1")
        header = header.ljust(header_end - 8) if len(header) < header_end - 8 else header
        payload[:header_end] = len(header).to_bytes(8, "little") + header
    elif kind == "append":
        payload += draw(st.binary(min_size=1, max_size=64))
    else:
        payload = bytearray(draw(st.binary(max_size=512)))
    return bytes(payload)


def _check_loaded(memory: GaussianMemory) -> None:
    """A memory that loaded is safe to search and to write to."""
    assert torch.isfinite(memory.means).all() and torch.isfinite(memory.variances).all()
    assert (memory.variances > 0).all()
    queries = torch.zeros(2, memory.dim)
    found = memory.query(queries, torch.ones(2, memory.dim), k=2)
    assert not found.divergence.isnan().any()
    assert ((found.slots == NOT_FOUND) | memory.valid[found.slots.clamp_min(0)]).all()


@FUZZ
@given(payload=mutated(MEMORY_FILE, HEADER_END))
def test_memory_loader_raises_only_memory_file_errors(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "memory.safetensors"
        path.write_bytes(payload)
        try:
            memory = GaussianMemory.load(path)
        except MemoryFileError as error:
            assert "memory.safetensors" in str(error) and "\n" not in str(error)
        else:
            _check_loaded(memory)
        into = GaussianMemory(6, 3, seed=0)
        try:
            into.restore_(path)
        except MemoryFileError:
            pass
        else:
            _check_loaded(into)


@FUZZ
@given(payload=st.binary(max_size=2048))
def test_memory_loader_refuses_random_bytes(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "memory.safetensors"
        path.write_bytes(payload)
        with pytest.raises(MemoryFileError, match="memory.safetensors"):
            GaussianMemory.load(path)


# --- the preprocessed-data cache ---------------------------------------------------------
KEY = {"source": "synthetic", "image_size": 4}
ARRAY = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)


def _build() -> tuple[np.ndarray, dict]:
    return ARRAY.copy(), {"classes": ["a", "b"]}


def _cache_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as directory:
        cached = load_or_build(Path(directory), "fuzz", KEY, _build)
        return {path.name: path.read_bytes() for path in cached.directory.iterdir()}


CACHE_FILES = _cache_files()
NPY_HEADER_END = 10 + int.from_bytes(CACHE_FILES["images.npy"][8:10], "little")


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(CACHE_FILES)))
def test_cache_loader_rebuilds_any_damaged_cache(data: st.DataObject, name: str) -> None:
    """A cache file's damage is either harmless or detected: the loader returns the
    array the build makes, rebuilt if needed, and never raises."""
    if name == "images.npy":
        payload = data.draw(mutated(CACHE_FILES[name], NPY_HEADER_END))
    else:
        text_damage = mutated(CACHE_FILES[name], len(CACHE_FILES[name]),
                              ("flip", "truncate", "append", "random"))
        payload = data.draw(st.one_of(text_damage, _edited_meta()))
    with tempfile.TemporaryDirectory() as directory:
        first = load_or_build(Path(directory), "fuzz", KEY, _build)
        (first.directory / name).write_bytes(payload)
        again = load_or_build(Path(directory), "fuzz", KEY, _build)
        np.testing.assert_array_equal(np.asarray(again.array), ARRAY)
        assert again.metadata == {"classes": ["a", "b"]}
        assert again.status == "hit" or again.status.startswith("rebuilt: ")


@st.composite
def _edited_meta(draw: st.DrawFn) -> bytes:
    """meta.json with one field replaced by another JSON value, or not an object at all."""
    meta = json.loads(CACHE_FILES["meta.json"])
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                          max_leaves=6)
    if draw(st.booleans()):
        meta[draw(st.sampled_from(sorted(meta)))] = draw(values)
    elif draw(st.booleans()):
        del meta[draw(st.sampled_from(sorted(meta)))]
    else:
        meta = draw(values)
    return json.dumps(meta).encode()
