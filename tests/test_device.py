"""Devices: names, resolution, who may train/embed where, and (on a GPU) CUDA runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gaussmem.evaluate as evaluate_module
import gaussmem.methods.training as training_module
from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.errors import ConfigError, DeviceError
from gaussmem.evaluate import evaluate_checkpoint
from gaussmem.memory import GaussianMemory
from gaussmem.plumbing.device import check_device_name, resolve_device
from gaussmem.presets import resolve
from gaussmem.train import LAST_CHECKPOINT, TrainingError, build_trainer, train

CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_names_accepted(name: str) -> None:
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "CPU", "mps"])
def test_bad_device_names_are_refused_naming_the_value(name: str) -> None:
    with pytest.raises(DeviceError, match=repr(name).replace("(", r"\(")):
        check_device_name(name)
    with pytest.raises(ConfigError, match="device must be"):
        resolve("smoke", overrides=[f"device={name}" if name else "device="])


def test_auto_follows_cuda_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'cuda' asked for, but .* sees no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA


def test_baselines_train_on_the_cpu_and_refuse_an_explicit_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the machine has a GPU: "auto" must still give a baseline the CPU.
    monkeypatch.setattr(training_module, "resolve_device", lambda name: CUDA)
    dataset = synthetic_set()
    auto = build_trainer(resolve("smoke", overrides=["method=protonet"]), Path("/unused"),
                         dataset, dataset)
    assert auto.method.device == torch.device("cpu")
    with pytest.raises(TrainingError, match="'cuda': method 'protonet' trains on cpu only"):
        build_trainer(resolve("smoke", overrides=["method=protonet", "device=cuda"]),
                      Path("/unused"), dataset, dataset)


def test_evaluation_refuses_a_gpu_for_cpu_only_methods(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["method=protonet", "budget.max_steps=2"])
    result = train(config, tmp_path / "run", dataset, dataset, progress=False)
    assert result.device == "cpu"
    monkeypatch.setattr(evaluate_module, "resolve_device", lambda name: CUDA)
    arguments = dict(n_way=3, n_shot=1, n_query=2, episodes=2, dataset=dataset)
    with pytest.raises(DeviceError, match="'cuda': method 'protonet' embeds on cpu only"):
        evaluate_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, device="cuda", **arguments)
    report = evaluate_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, device="auto",
                                 **arguments)
    assert report["device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mavae_trains_on_cuda_resumes_on_cpu_and_evaluates_alike(
        precision: str, tmp_path: Path) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["device=cuda", f"precision={precision}"])
    result = train(config, tmp_path / "run", dataset, dataset, progress=False)
    assert result.device.startswith("cuda") and result.step == 6
    checkpoint = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)
    assert all(tensor.device.type == "cpu" for tensor in checkpoint["model"].values())
    arguments = dict(n_way=3, n_shot=2, n_query=3, episodes=5, seed=1, dataset=dataset)
    on_gpu = evaluate_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, device="cuda",
                                 **arguments)
    on_cpu = evaluate_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, device="cpu",
                                 **arguments)
    assert on_gpu["device"].startswith("cuda") and on_cpu["device"] == "cpu"
    assert abs(on_gpu["result"]["accuracy"]["mean"]
               - on_cpu["result"]["accuracy"]["mean"]) <= 10.0
    # A GPU run resumes on the CPU: the device given on resume replaces the saved one.
    config.budget.max_steps = 8
    config.device = "cpu"
    resumed = train(config, tmp_path / "run", dataset, dataset, progress=False, resume=True)
    assert resumed.step == 8 and resumed.device == "cpu"


@pytest.mark.gpu
def test_memory_calls_of_a_training_step_never_wait_for_the_gpu() -> None:
    # The CUDA counterpart of tests/test_memory.py's meta-device check: PyTorch's sync
    # debug mode raises at any call that makes the host wait for the device.
    generator = torch.Generator(CUDA).manual_seed(0)
    memory = GaussianMemory(256, 8, seed=0).to(CUDA)
    labels = torch.arange(32, device=CUDA) % 8
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):  # from empty to merging into entries
            mu = torch.randn(32, 8, generator=generator, device=CUDA)
            var = torch.rand(32, 8, generator=generator, device=CUDA).add(0.1)
            memory.nearest_with_label(mu, var, labels)
            memory.nearest_with_other_label(mu, var, labels)
            memory.update_(mu, var, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(memory.valid.sum()) > 0 and int(memory.counts.max()) > 1
