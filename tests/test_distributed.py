"""Training on two processes (gloo, CPU): one memory shared by the ranks, DDP gradients
equal to one process's over the same classes, and the real torchrun launch."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.distributed import Distributed, current, exit_rank, rank_seed
from gaussmem.methods.mavae_training import MAVAETraining, forward_losses
from gaussmem.metrics_log import read_metrics
from gaussmem.models.vae import GaussianVAE
from gaussmem.presets import preset
from gaussmem.train import TrainingClassSampler, TrainingError, build_trainer, train_step

WORLD_SIZE = 2
#: Seconds a spawned pair of ranks may take before the test fails (a deadlock ends here).
SPAWN_TIMEOUT = 60
#: One process and two ranks sum the same float32 numbers in another order.
RELATIVE_TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_config(batch_episodes: int, augment: bool = False):
    """The smoke preset at float32 with `batch_episodes` 4-way episodes per process."""
    config = preset("smoke")
    config.precision = "float32"
    config.episodes.batch_episodes = batch_episodes
    config.episodes.memory_support = 1
    config.num_threads = 1
    if augment:
        config.augment.max_rotation_degrees = 10.0
        config.augment.max_shift = 0.05
    return config


def run_and_exit(target, rank: int, port: int, out: Path) -> None:
    """Run `target(rank, port, out)` and, when it returns, leave with status 0 as a
    trained rank of `gaussmem train` does (`exit_rank`: DDP's process group outlives
    `destroy_process_group` and could abort the interpreter's shutdown); a target that
    raises still exits non-zero."""
    target(rank, port, out)
    exit_rank(0)


def run_ranks(target, out: Path) -> None:
    """Run `target(rank, port, out)` on `WORLD_SIZE` spawned processes."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_and_exit, args=(target, rank, port, out))
                 for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(SPAWN_TIMEOUT)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * WORLD_SIZE


def join_group(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE)


def on_rank(rank: int, port: int, out: Path) -> None:
    """Both two-rank checks in one launch (spawning costs seconds): the equivalence's
    second-step loss and gradients, then three training steps' weights and memory."""
    join_group(rank, port)
    try:
        plain_reparameterize = GaussianVAE.__dict__["reparameterize"]
        GaussianVAE.reparameterize = staticmethod(lambda gaussian: gaussian.mean)
        trainer = build_trainer(tiny_config(1), out, synthetic_set(40), None)
        loss, gradients = one_step_loss_and_gradients(trainer.method)
        dist.all_reduce(loss)
        tensors = {"loss": loss / WORLD_SIZE}
        tensors.update({f"grad{i}": g.contiguous() for i, g in enumerate(gradients)})
        if rank == 0:
            save_file(tensors, str(out / "equivalence.safetensors"))

        GaussianVAE.reparameterize = plain_reparameterize
        trainer = build_trainer(tiny_config(1, augment=True), out, synthetic_set(40), None)
        trainer.method.model.train()
        for _ in range(3):
            train_step(trainer)
        # What the training loop does before it validates or writes a checkpoint.
        current().average_buffers_(trainer.model)
        tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        tensors.update({f"memory.{k}": v for k, v in trainer.memory.state_dict().items()
                        if isinstance(v, torch.Tensor)})
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(out / f"steps{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    run_ranks(on_rank, out)
    return out


def one_step_loss_and_gradients(method: MAVAETraining) -> tuple[torch.Tensor, list]:
    """A first full step (support write, optimizer step, gathered write), then the
    second step's loss and its (DDP-averaged) gradients."""
    method.model.eval()  # BatchNorm from running statistics: see the equivalence test
    method.train_step()
    images = method.to_training_images(method.sampler.next_batch())
    terms, _ = forward_losses(method.model, method.memory, images, method.labels,
                              method.sampler.n_classes, method.config,
                              networks=method.networks)
    method.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    return terms["loss"].detach(), [p.grad.clone() for p in method.model.parameters()]


def test_ranks_hold_identical_weights_and_one_shared_memory(two_ranks: Path) -> None:
    """Three steps (an episode boundary, its support write, augmentation): every weight,
    BatchNorm statistic and memory buffer is bit-identical on both ranks, and the memory
    holds both ranks' classes (labels 0..2C-1)."""
    ranks = [load_file(str(two_ranks / f"steps{rank}.safetensors")) for rank in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    labels = ranks[0]["memory.labels"][ranks[0]["memory.valid"]]
    assert set(labels.tolist()) == set(range(2 * 4))


def test_two_ranks_equal_one_process_over_the_same_classes(
        two_ranks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ranks x 1 episode against 1 process x 2 episodes, float32, over two steps: the
    same classes, drawings, memory and loss, and DDP's averaged gradients equal the one
    process's to `RELATIVE_TOLERANCE` (float32 sums in another order). The noise of
    z = mean + std * eps is per rank by design and BatchNorm normalizes each rank's
    share, so the comparison uses z = mean and BatchNorm's running statistics."""
    ranks = load_file(str(two_ranks / "equivalence.safetensors"))
    monkeypatch.setattr(GaussianVAE, "reparameterize",
                        staticmethod(lambda gaussian: gaussian.mean))
    trainer = build_trainer(tiny_config(2), tmp_path, synthetic_set(40), None)
    loss, gradients = one_step_loss_and_gradients(trainer.method)
    torch.testing.assert_close(ranks["loss"], loss, rtol=RELATIVE_TOLERANCE, atol=0)
    for index, gradient in enumerate(gradients):
        scale = float(gradient.abs().max())
        torch.testing.assert_close(ranks[f"grad{index}"], gradient,
                                   rtol=RELATIVE_TOLERANCE,
                                   atol=RELATIVE_TOLERANCE * scale)


def fail_on_rank_one(rank: int, port: int, out: Path) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    (out / "rank0-done").touch()


def test_a_rank_that_raises_fails_the_launch(tmp_path: Path) -> None:
    """The harness's early exit reports success only for a target that returned."""
    with pytest.raises(AssertionError, match=r"\[0, 1\]"):
        run_ranks(fail_on_rank_one, tmp_path)
    assert (tmp_path / "rank0-done").exists()


def test_averaging_batch_norm_statistics_once_equals_averaging_every_step() -> None:
    """Why the ranks average BatchNorm's running statistics only before validation and
    checkpoints: two ranks' moving averages, averaged at the end, equal the moving
    average that averaging after every step keeps."""
    torch.manual_seed(0)
    batches = [[torch.randn(8, 3, 5, 5) * (1 + rank) + rank for rank in range(2)]
               for _ in range(6)]
    apart = [torch.nn.BatchNorm2d(3) for _ in range(2)]
    together = [torch.nn.BatchNorm2d(3) for _ in range(2)]
    for step_batches in batches:
        for rank, batch in enumerate(step_batches):
            apart[rank](batch)
            together[rank](batch)
        for name in ("running_mean", "running_var"):
            mean = (getattr(together[0], name) + getattr(together[1], name)) / 2
            for norm in together:
                getattr(norm, name).copy_(mean)
    for name in ("running_mean", "running_var"):
        averaged_once = (getattr(apart[0], name) + getattr(apart[1], name)) / 2
        assert not torch.allclose(getattr(apart[0], name), getattr(apart[1], name))
        torch.testing.assert_close(averaged_once, getattr(together[0], name))


def test_ranks_split_the_classes_one_process_would_draw() -> None:
    dataset = synthetic_set(40)
    whole = TrainingClassSampler(dataset, 8, 2, 2, seed=3, support=1)
    shares = [TrainingClassSampler(dataset, 4, 2, 2, seed=3, support=1, rank=rank,
                                   world_size=2) for rank in range(2)]
    for _ in range(3):
        batch = whole.next_batch()
        parts = [share.next_batch() for share in shares]
        assert np.array_equal(batch, np.concatenate(parts, axis=1))
        assert np.array_equal(whole.classes, np.concatenate([s.classes for s in shares]))
    assert np.array_equal(whole.episode_support(),
                          np.concatenate([s.episode_support() for s in shares], axis=1))
    with pytest.raises(TrainingError, match="rank 2 of a world of 2"):
        TrainingClassSampler(dataset, 4, 2, 2, seed=3, rank=2, world_size=2)


def test_rank_seeds_differ_but_rank_zero_keeps_the_seed() -> None:
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, rank) for rank in range(4)}) == 4
    assert rank_seed(7, 1, step=5) != rank_seed(7, 1)


def test_baselines_refuse_several_processes(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setattr("gaussmem.train.current", lambda: Distributed(0, 2))
    with pytest.raises(TrainingError, match="'protonet' trains in one process"):
        build_trainer(preset("protonet-cpu"), tmp_path, synthetic_set(40), None)


def test_torchrun_needs_a_named_run_directory(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gaussmem.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--preset", "smoke"]) == 2
    assert "under torchrun, pass --run-dir" in capsys.readouterr().err


def torchrun_command() -> list[str]:
    """torchrun as this interpreter's module: a `torchrun` on PATH may belong to
    another Python, without gaussmem."""
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.data
def test_torchrun_trains_checkpoints_and_resumes(real_data_dir: Path, real_cache_dir: Path,
                                                 tmp_path: Path) -> None:
    """The real launch: 2 ranks train the smoke preset and write one run (checkpoints
    from rank 0, weights without DDP's wrapper); 2 ranks resume it; then one process
    resumes and validates the 2-rank checkpoint."""
    run = tmp_path / "run"
    data = ["--data-dir", str(real_data_dir), "--cache-dir", str(real_cache_dir),
            "--no-progress", "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [*torchrun_command(), "--standalone", "--nproc_per_node=2", "-m", "gaussmem"]

    def gaussmem(*command: str, via: list[str]) -> dict:
        done = subprocess.run([*via, *command, *data], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        done_lines = [line for line in done.stdout.splitlines()
                      if line.startswith("gaussmem train: done")]
        assert len(done_lines) == 1, done.stdout  # rank 0 alone reports
        return json.loads((run / "summary.json").read_text())

    first = gaussmem("train", "--preset", "smoke", "--max-steps", "3", via=launch)
    assert first["world_size"] == 2 and first["step"] == 3
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 3
    assert not any(name.startswith("module.") for name in checkpoint["model"])
    assert gaussmem("train", "--resume", "--max-steps", "5", via=launch)["step"] == 5
    alone = gaussmem("train", "--resume", "--max-steps", "6",
                     via=[sys.executable, "-m", "gaussmem"])
    assert alone["world_size"] == 1 and alone["step"] == 6
    records = read_metrics(run / "metrics.jsonl")
    # Every 3 steps, and at the end of each budget.
    assert [r["step"] for r in records if r["kind"] == "val"] == [3, 5, 6]
