"""Checkpoints never run code: safetensors + JSON, legacy pickles refused, explicit
conversion, validation of what is read, fuzzing, and exact resume after kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import synthetic_set
from gaussmem.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from gaussmem.cli import main
from gaussmem.errors import CheckpointError, GaussmemError
from gaussmem.evaluate import evaluate_checkpoint
from gaussmem.plumbing.seeding import set_global_rng_state
from gaussmem.presets import resolve
from gaussmem.train import LAST_CHECKPOINT, build_trainer, checkpoint_dict, train, train_step

SOURCE = Path(__file__).resolve().parents[1] / "src"


class MarkerPayload:
    """Unpickling this creates a directory: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def trained_checkpoint(tmp_path: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The checkpoint dict of a smoke run after two steps (optimizer state, moved RNGs)."""
    dataset = synthetic_set()
    trainer = build_trainer(resolve("smoke", overrides=list(overrides)), tmp_path, dataset,
                            dataset)
    train_step(trainer)
    train_step(trainer)
    return checkpoint_dict(trainer)


def legacy_bytes(checkpoint: dict[str, Any], path: Path, **options: Any) -> None:
    """What gaussmem's version-1 `save_checkpoint` wrote: a torch.save pickle."""
    torch.save({"format": FORMAT, "version": 1, **checkpoint}, path, **options)


def assert_same(expected: Any, actual: Any, where: str = "") -> None:
    """Equal values and types, tensors and arrays bit for bit with their dtypes."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(expected) == list(actual), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), where
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and np.array_equal(actual, expected), where
    elif isinstance(expected, list | tuple):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_same(left, right, f"{where}/{index}")
    else:
        assert type(actual) is type(expected), where
        assert actual == expected or (actual != actual and expected != expected), where


# --- round trip -----------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [(), ("optim.ema_decay=0.5", "augment.max_shift=0.1")],
                         ids=["plain", "average-and-augment"])
def test_round_trip_is_exact_and_restores_the_random_streams(
        tmp_path: Path, overrides: tuple[str, ...]) -> None:
    checkpoint = trained_checkpoint(tmp_path, overrides)
    checkpoint["extra"]["odd"] = {"nan": float("nan"), "big": 2**100, 3: (1, None),
                                  "__tuple__": "a key that looks like a tag"}
    save_checkpoint(tmp_path / "a.ckpt", checkpoint)
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert_same(checkpoint, loaded)
    assert list(loaded["optimizer"]["state"]) == list(range(len(
        loaded["optimizer"]["state"])))  # integer keys: Adam finds its moments again

    set_global_rng_state(checkpoint["rng"])
    expected = (torch.rand(4), np.random.random(4), random.random())
    torch.rand(7), np.random.random(7), random.random()
    set_global_rng_state(loaded["rng"])
    actual = (torch.rand(4), np.random.random(4), random.random())
    assert torch.equal(expected[0], actual[0]) and np.array_equal(expected[1], actual[1])
    assert expected[2] == actual[2]


def test_the_file_is_safetensors_with_json_metadata(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.ckpt", trained_checkpoint(tmp_path))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.ckpt"), framework="pt") as reader:
        metadata = reader.metadata()
        names = set(reader.keys())
    assert metadata["format"] == FORMAT and metadata["version"] == "2"
    assert json.loads(metadata["checkpoint"])["step"] == 2
    assert "rng/torch" in names and any(name.startswith("model/") for name in names)


# --- code in the file is never run ----------------------------------------------------
def hostile_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A bare pickle named .ckpt, and a valid old checkpoint hiding a payload, both as a
    zip (torch >= 1.6) and in torch's older plain-pickle serialization."""
    files = {"pickle": tmp_path / "pickle.ckpt", "zip": tmp_path / "zip.ckpt",
             "plain": tmp_path / "plain.ckpt"}
    files["pickle"].write_bytes(pickle.dumps(MarkerPayload(marker)))
    checkpoint = trained_checkpoint(tmp_path)
    checkpoint["extra"]["note"] = MarkerPayload(marker)
    legacy_bytes(checkpoint, files["zip"])
    legacy_bytes(checkpoint, files["plain"], _use_new_zipfile_serialization=False)
    assert not marker.exists()
    return files


def test_pickled_payloads_are_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    for kind, path in hostile_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError, match="checkpoint convert") as caught:
            load_checkpoint(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), kind
        assert not marker.exists(), kind


def test_the_commands_refuse_pickled_payloads_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    files = hostile_files(tmp_path, marker)
    run_dir = tmp_path / "run"
    (run_dir / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (run_dir / LAST_CHECKPOINT).write_bytes(files["zip"].read_bytes())
    commands = [["evaluate", "--checkpoint", str(files["pickle"]), "--episodes", "2"],
                ["evaluate", "--checkpoint", str(files["zip"]), "--episodes", "2"],
                ["generate", "--checkpoint", str(files["plain"]), "--out",
                 str(tmp_path / "x.png")],
                ["train", "--resume", "--run-dir", str(run_dir), "--no-progress"]]
    for command in commands:
        assert main(command) == 2, command
        error = capsys.readouterr().err.strip()
        assert "old-format" in error and len(error.splitlines()) == 1, command
    completed = subprocess.run(
        [sys.executable, "-m", "gaussmem", "evaluate", "--checkpoint", str(files["zip"])],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SOURCE)},
        check=False)
    assert completed.returncode == 2, completed.stderr
    assert "gaussmem checkpoint convert" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not marker.exists()


# --- explicit conversion --------------------------------------------------------------
def test_convert_needs_trust_and_gives_a_checkpoint_that_evaluates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = trained_checkpoint(tmp_path)
    checkpoint.pop("trained_model")  # as in version-1 files written before it existed
    old, new = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    legacy_bytes(checkpoint, old)

    assert main(["checkpoint", "convert", str(old), str(new)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not new.exists()
    assert main(["checkpoint", "convert", str(old), str(new), "--trust-pickle"]) == 0
    assert str(new) in capsys.readouterr().out
    converted = load_checkpoint(new)
    assert_same({**checkpoint, "trained_model": None}, converted)

    direct = tmp_path / "direct.ckpt"
    save_checkpoint(direct, {**checkpoint, "trained_model": None})
    reports = [evaluate_checkpoint(path, n_way=3, n_shot=1, n_query=2, episodes=3, seed=0,
                                   dataset=synthetic_set())["result"] for path in (new, direct)]
    for report in reports:
        report.pop("seconds")
    assert reports[0] == reports[1]

    assert main(["checkpoint", "convert", str(new), str(tmp_path / "again.ckpt"),
                 "--trust-pickle"]) == 2
    assert "need no conversion" in capsys.readouterr().err


# --- validation -----------------------------------------------------------------------
def rewritten(source: Path, target: Path, edit: Any) -> Path:
    """`source` with its tensors and JSON contents passed through `edit`."""
    tensors = safetensors.torch.load_file(source)
    with open(source, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(size))["__metadata__"]
    edit(tensors, metadata)
    safetensors.torch.save_file(tensors, target, metadata=metadata)
    return target


def _set_document(metadata: dict[str, str], change: Any) -> None:
    document = json.loads(metadata["checkpoint"])
    change(document)
    metadata["checkpoint"] = json.dumps(document)


EDITS = {
    "not gaussmem": (lambda t, m: m.update(format="something-else"), "not a gaussmem"),
    "version": (lambda t, m: m.update(version="7"), "version '7'"),
    "bad json": (lambda t, m: m.update(checkpoint="{not json"), "corrupt"),
    "missing key": (lambda t, m: _set_document(m, lambda d: d.pop("sampler")), "lacks sampler"),
    "step": (lambda t, m: _set_document(m, lambda d: d.update(step=-3)), "step -3"),
    "rng dtype": (lambda t, m: t.update({"rng/torch": t["rng/torch"].float()}), "uint8"),
    "odd dtype": (lambda t, m: t.update({"model/extra": torch.zeros(2, dtype=torch.uint16)}),
                  "uint16"),
    "dangling": (lambda t, m: t.pop("rng/torch"), "names no tensor"),
    "unnamed": (lambda t, m: t.update(stray=torch.zeros(1)), "do not name"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_malformed_checkpoints_are_one_line_errors_naming_the_file(
        tmp_path: Path, edit: tuple[Any, str]) -> None:
    save_checkpoint(tmp_path / "good.ckpt", trained_checkpoint(tmp_path))
    change, message = edit
    bad = rewritten(tmp_path / "good.ckpt", tmp_path / "bad.ckpt", change)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(bad)
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


def test_garbage_and_truncated_files_are_checkpoint_errors(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "good.ckpt", trained_checkpoint(tmp_path))
    data = (tmp_path / "good.ckpt").read_bytes()
    for name, content in {"empty": b"", "text": b"hello world\n", "half": data[:len(data) // 2],
                          "header only": data[:100]}.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name)


# --- fuzzing --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real but tiny checkpoint (one linear layer) so mutations mostly hit the header."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    from gaussmem.plumbing.seeding import global_rng_state

    sampler = np.random.Generator(np.random.PCG64(5)).bit_generator.state
    path = tmp_path_factory.mktemp("small") / "small.ckpt"
    save_checkpoint(path, {"config": {"method": "mavae"}, "method": "mavae",
                           "model": model.state_dict(), "trained_model": None,
                           "optimizer": optimizer.state_dict(), "memory": None, "step": 1,
                           "elapsed_seconds": 0.5, "rng": global_rng_state(),
                           "sampler": {"rng": sampler}, "best": {}, "extra": {}})
    return path.read_bytes()


def load_only_own_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.ckpt"
    path.write_bytes(content)
    with contextlib.suppress(GaussmemError):
        load_checkpoint(path)


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(content=st.binary(max_size=2048)
       | st.binary(max_size=64).map(lambda tail: b"PK\x03\x04" + tail)
       | st.binary(max_size=64).map(lambda tail: len(tail).to_bytes(8, "little") + b"{" + tail))
def test_random_bytes_give_only_gaussmem_errors(tmp_path: Path, content: bytes) -> None:
    load_only_own_errors(tmp_path, content)


@FUZZ
@given(data=st.data())
def test_mutated_checkpoints_give_only_gaussmem_errors(tmp_path: Path, small_checkpoint: bytes,
                                                       data: st.DataObject) -> None:
    content = bytearray(small_checkpoint)
    header_end = 8 + int.from_bytes(content[:8], "little")
    for _ in range(data.draw(st.integers(1, 8))):
        limit = data.draw(st.sampled_from([header_end, len(content)])) - 1
        position = data.draw(st.integers(0, limit))
        content[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(content)))
    load_only_own_errors(tmp_path, bytes(content[:cut]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["model/weight", "model/bias", "rng/torch"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["__tensor__", "__tuple__", "__items__", "__ndarray__",
                                       "dtype", "shape", "data", "step", "rng", "torch"]),
                      inner, max_size=3),
    max_leaves=20)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(
    ["config", "method", "model", "trained_model", "optimizer", "memory", "step",
     "elapsed_seconds", "rng", "sampler", "best", "extra"]), json_values))
def test_any_json_contents_give_only_gaussmem_errors(tmp_path: Path, small_checkpoint: bytes,
                                                      document: dict[str, Any]) -> None:
    source = tmp_path / "source.ckpt"
    source.write_bytes(small_checkpoint)
    target = rewritten(source, tmp_path / "target.ckpt",
                       lambda tensors, metadata: metadata.update(checkpoint=json.dumps(document)))
    load_only_own_errors(tmp_path, target.read_bytes())


# --- kill -9 ----------------------------------------------------------------------------
CHILD = """
import sys, time
from pathlib import Path
import gaussmem.checkpoint as checkpoint
from conftest import synthetic_set
from gaussmem.presets import resolve
from gaussmem.train import train

run_dir, ready = Path(sys.argv[1]), Path(sys.argv[2])
write, saves = checkpoint.write_bytes_atomic, []

def write_then_hang(path, payload):
    saves.append(path)
    if Path(path).name == "last.ckpt" and saves.count(path) == 2:
        # Killed halfway through writing the second last.ckpt.
        (Path(path).parent / ".last.ckpt.torn.tmp").write_bytes(payload[: len(payload) // 2])
        ready.touch()
        time.sleep(600)
    write(path, payload)

checkpoint.write_bytes_atomic = write_then_hang
dataset = synthetic_set()
train(resolve("smoke", overrides=["budget.max_steps=8"]), run_dir, dataset, dataset,
      progress=False)
"""


def test_kill_9_while_saving_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["budget.max_steps=8"])
    ready = tmp_path / "ready"
    tests_dir = Path(__file__).resolve().parent
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "killed"), str(ready)],
        # The child computes with as many threads as this process: float sums depend on
        # how they are split.
        env={**os.environ, "PYTHONPATH": f"{SOURCE}{os.pathsep}{tests_dir}",
             "OMP_NUM_THREADS": str(torch.get_num_threads())})
    try:
        for _ in range(3000):  # waits for the child, at most ~5 minutes
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the child never reached its second checkpoint"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)["step"] == 3
    result = train(config, tmp_path / "killed", dataset, dataset, resume=True, progress=False)
    assert result.step == 8
    train(config, tmp_path / "straight", dataset, dataset, progress=False)
    straight = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)
    resumed = load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)
    for entry in ("model", "memory"):
        assert_same(straight[entry], resumed[entry], entry)
    assert_same(straight["optimizer"], resumed["optimizer"], "optimizer")
    assert_same(straight["sampler"], resumed["sampler"], "sampler")
    assert_same(straight["rng"], resumed["rng"], "rng")
