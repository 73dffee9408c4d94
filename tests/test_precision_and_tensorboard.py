"""Mixed-precision training (bfloat16 autocast) and TensorBoard logging."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.errors import ConfigError, GaussmemError
from gaussmem.memory import GaussianMemory
from gaussmem.methods.mavae_training import forward_losses
from gaussmem.metrics_log import MetricsLog, read_metrics
from gaussmem.models.encoders import GaussianHead
from gaussmem.models.vae import GaussianVAE
from gaussmem.plumbing import precision as precision_module
from gaussmem.plumbing.precision import autocast, resolve_precision
from gaussmem.presets import preset, resolve
from gaussmem.train import LAST_CHECKPOINT, train


def test_gaussian_head_stays_float32_under_bfloat16_autocast() -> None:
    head = GaussianHead(32, 8, init_scale=1.0)
    features = torch.randn(5, 32)
    with autocast("bfloat16", "cpu"):
        assert torch.nn.functional.linear(features, head.mean.weight).dtype == torch.bfloat16
        mean, log_var = head(features.bfloat16())
    assert mean.dtype == log_var.dtype == torch.float32
    expected_mean, expected_log_var = head(features.bfloat16().float())
    assert torch.equal(mean, expected_mean) and torch.equal(log_var, expected_log_var)


def test_bfloat16_step_gives_float32_terms_close_to_float32_step() -> None:
    dataset = synthetic_set()
    images = torch.from_numpy(dataset.images[:4, :2].reshape(8, 1, 28, 28)).float() / 255
    labels = torch.arange(4).repeat(2)
    results = {}
    for precision in ("float32", "bfloat16"):
        config = resolve("smoke", overrides=[f"precision={precision}"])
        torch.manual_seed(0)
        vae = GaussianVAE(config.model)
        memory = GaussianMemory(16, config.model.content_dim)
        memory.update_(torch.randn(4, config.model.content_dim),
                       torch.ones(4, config.model.content_dim), torch.arange(4))
        torch.manual_seed(1)
        terms, content = forward_losses(vae, memory, images, labels, 4, config)
        assert content.mean.dtype == torch.float32
        assert all(value.dtype == torch.float32 for value in terms.values())
        terms["loss"].backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in vae.parameters())
        results[precision] = terms
    for key in ("triplet", "latent", "generative_self"):
        assert results["bfloat16"][key].item() == pytest.approx(
            results["float32"][key].item(), rel=0.05, abs=1e-3), key
    assert not torch.equal(results["bfloat16"]["generative_self"],
                           results["float32"]["generative_self"])


def test_precision_is_checked_and_only_the_mavae_takes_bfloat16() -> None:
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve("smoke", overrides=["precision=float16"])
    with pytest.raises(ConfigError, match="not implemented for method 'protonet'"):
        resolve("protonet-cpu", overrides=["precision=bfloat16"])
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("half", "cpu")


def test_auto_precision_is_bfloat16_only_where_the_device_has_it_natively(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_bfloat16_flags", lambda: ["avx512_bf16"])
    assert resolve_precision("auto", "cpu") == "bfloat16"
    assert resolve_precision("auto", "cpu", supported=("float32",)) == "float32"
    monkeypatch.setattr(precision_module, "cpu_bfloat16_flags", lambda: [])
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", "cpu")


def test_a_preset_asking_auto_trains_and_records_what_the_device_chose(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert preset("cpu-quick").precision == "auto"
    dataset = synthetic_set()
    for flags, chosen in (([], "float32"), (["amx_bf16"], "bfloat16")):
        monkeypatch.setattr(precision_module, "cpu_bfloat16_flags", lambda flags=flags: flags)
        config = resolve("smoke", overrides=["precision=auto", "budget.max_steps=2"])
        run_dir = tmp_path / chosen
        train(config, run_dir, dataset, dataset, progress=False)
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["precision"] == chosen
        assert load_checkpoint(run_dir / LAST_CHECKPOINT)["config"]["precision"] == chosen
    # A baseline has no bfloat16 step: "auto" is float32 for it on any device.
    baseline = resolve("smoke", overrides=["method=protonet", "precision=auto",
                                           "budget.max_steps=1"])
    train(baseline, tmp_path / "protonet", dataset, dataset, progress=False)
    saved = json.loads((tmp_path / "protonet" / "config.json").read_text())
    assert saved["precision"] == "float32"


def test_bfloat16_training_run_learns_and_saves_float32_weights(tmp_path: Path) -> None:
    dataset = synthetic_set()
    config = preset("smoke")
    config.precision = "bfloat16"
    config.budget.max_steps = 12
    result = train(config, tmp_path / "run", dataset, dataset, progress=False)
    assert result.step == 12
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert all(loss is not None for loss in losses) and losses[-1] < losses[0]
    checkpoint = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)
    assert all(value.dtype in (torch.float32, torch.int64)
               for value in checkpoint["model"].values())


def test_tensorboard_events_hold_the_logged_scalars(tmp_path: Path) -> None:
    # The `test` extra installs tensorboard; `tensorboard=true` without it is an error
    # that names the package (MetricsLog).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset = synthetic_set()
    config = preset("smoke")
    config.tensorboard = True
    train(config, tmp_path / "run", dataset, dataset, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/triplet", "train/images_per_second",
            "val/val_accuracy"} <= tags
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    logged = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    written = {event.step: event.value for event in events.Scalars("train/loss")}
    assert written.keys() == logged.keys()
    for step, loss in logged.items():
        assert written[step] == pytest.approx(loss, rel=1e-6)


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(GaussmemError, match="pip install tensorboard"):
        MetricsLog(tmp_path / "run", tensorboard=True)
