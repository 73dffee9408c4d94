"""`cuda_graph = true`: the MA-VAE's training step recorded as a CUDA graph.

On the CPU: the settings it refuses, the learning rate it fills in place, and the
checkpoint it writes (resumable anywhere). On a GPU (`-m gpu`): a recorded step trains
as the eager one does, and an MA-VAE run records, replays, checkpoints and resumes.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.errors import ConfigError
from gaussmem.losses import scaled_similarity
from gaussmem.memory import GaussianMemory
from gaussmem.plumbing.cuda_graphs import (
    CapturedStep,
    capturable_adam,
    make_capturable_,
    portable_optimizer_state,
    set_learning_rate,
)
from gaussmem.presets import resolve
from gaussmem.train import LAST_CHECKPOINT, TrainingError, build_trainer, train

CUDA = torch.device("cuda")


@pytest.mark.parametrize(("overrides", "named"), [
    (["method=protonet"], "method='protonet'"),
    (["loss.memory_term=softmax"], "loss.memory_term='softmax'"),
    (["optim.ema_decay=0.99"], "optim.ema_decay=0.99"),
])
def test_cuda_graph_refuses_what_it_cannot_record(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"cuda_graph=true .*{named}"):
        resolve("smoke", overrides=["cuda_graph=true", *overrides])


def test_cuda_graph_on_the_cpu_is_refused_naming_the_device(tmp_path: Path) -> None:
    config = resolve("smoke", overrides=["cuda_graph=true", "device=cpu"])
    with pytest.raises(TrainingError, match=r"trains on cpu \(device='cpu'\)"):
        build_trainer(config, tmp_path, synthetic_set(), None)


def test_set_learning_rate_fills_a_tensor_rate_in_place_and_assigns_a_float() -> None:
    parameter = nn.Parameter(torch.zeros(3))
    rate = torch.tensor(1e-3)
    with_tensor = torch.optim.Adam([parameter], lr=rate)
    with_float = torch.optim.Adam([parameter], lr=1e-3)
    set_learning_rate(with_tensor, 0.25)
    set_learning_rate(with_float, 0.25)
    # A recorded graph reads the rate from its address: the tensor must stay the same one.
    assert with_tensor.param_groups[0]["lr"] is rate and float(rate) == 0.25
    assert with_float.param_groups[0]["lr"] == 0.25


def test_portable_optimizer_state_resumes_in_a_plain_adam_and_turns_back() -> None:
    parameter = nn.Parameter(torch.ones(3))
    # capturable=True needs a GPU; a tensor rate stands for the capturable state here.
    source = torch.optim.Adam([parameter], lr=torch.tensor(0.5))
    parameter.grad = torch.ones(3)
    source.step()
    state = source.state_dict()
    state["param_groups"][0]["capturable"] = True
    portable = portable_optimizer_state(state)
    group = portable["param_groups"][0]
    assert group["lr"] == 0.5 and isinstance(group["lr"], float) and not group["capturable"]
    assert state["param_groups"][0]["capturable"], "the live state is left alone"
    plain = torch.optim.Adam([parameter], lr=1.0)
    plain.load_state_dict(portable)
    plain.step()  # a plain Adam steps from it
    assert float(plain.state[parameter]["step"]) == 2
    make_capturable_(plain, torch.device("cpu"))
    group = plain.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    assert float(group["lr"]) == 0.5
    assert plain.state[parameter]["step"].dtype == torch.float32


def test_a_training_run_checkpoints_its_optimizer_in_the_portable_form(tmp_path: Path
                                                                        ) -> None:
    train(resolve("smoke"), tmp_path / "run", synthetic_set(), None, progress=False)
    group = load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)["optimizer"]["param_groups"][0]
    assert isinstance(group["lr"], float) and not group["capturable"]


def test_the_mavae_device_step_reads_nothing_back(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    # What a graph records must not branch on values. On PyTorch's meta device every
    # read-back (`.item()`, `nonzero`, boolean indexing) raises, so a whole step --
    # forward, loss, backward, clipping, Adam, the memory's lookups and write -- that
    # runs there reads nothing back. (Autocast has no meta device; float32 needs none.)
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    method = build_trainer(resolve("smoke", overrides=["device=cpu"]), tmp_path,
                           synthetic_set(), None).method
    method.model.to("meta")
    method.memory = method.memory.to("meta")
    # The foreach implementation, as on a GPU (capturable Adam refuses the meta device).
    method.optimizer = torch.optim.Adam(method.model.parameters(), lr=1e-3, foreach=True)
    images = torch.zeros(method.images_per_step, 1, 28, 28, device="meta")
    labels = method.labels.to("meta")
    for _ in range(2):  # from an empty memory to one with entries
        terms = method.device_step(images, labels)
    assert terms["loss"].device.type == "meta" and "grad_norm" in terms
    # The diagnostic a recorded step leaves out reads back, and meta catches it.
    with pytest.raises(RuntimeError, match="meta"):
        method.device_step(images, labels, measure=True)


class RerunGraph:
    """Stands in for `torch.cuda.CUDAGraph` on the CPU: "recording" remembers the step,
    a replay runs it again on the recorded inputs (what a real replay computes)."""

    recording: RerunGraph | None = None

    def __init__(self) -> None:
        self.rerun = None

    def replay(self) -> None:
        self.rerun()


class RecordInto:
    """Stands in for `torch.cuda.graph(g)`: the step inside runs once, as a capture's
    does not; the fake replays it instead."""

    def __init__(self, graph: RerunGraph) -> None:
        self.graph = graph

    def __enter__(self) -> None:
        RerunGraph.recording = self.graph

    def __exit__(self, *exc: object) -> None:
        RerunGraph.recording = None


def test_captured_step_feeds_each_call_s_inputs_to_the_recording_and_copies_outputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.Tensor] = []
    total = torch.zeros(())

    def step(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if RerunGraph.recording is not None:  # capture: record, do not run
            graph = RerunGraph.recording
            graph.rerun = lambda: step_body(inputs)
            return {"total": total}
        return step_body(inputs)

    def step_body(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(inputs.clone())
        total.add_(inputs.sum())
        return {"total": total}

    class NoStream:
        def wait_stream(self, other: object) -> None:
            del other

    monkeypatch.setattr(torch.cuda, "CUDAGraph", RerunGraph)
    monkeypatch.setattr(torch.cuda, "graph", RecordInto)
    monkeypatch.setattr(torch.cuda, "Stream", NoStream)
    monkeypatch.setattr(torch.cuda, "current_stream", NoStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    captured = CapturedStep(step, warmup=2)
    outputs = [captured(torch.full((3,), float(value))) for value in range(5)]
    # Two eager calls, the recording call (replayed once), two replays on new inputs.
    assert captured.eager_calls == 2 and captured.graph is not None
    assert [float(batch[0]) for batch in calls] == [0, 1, 2, 3, 4]
    # Each call's outputs are its own copy, not the recording's buffer.
    assert [float(output["total"]) for output in outputs[2:]] == [9, 18, 30]
    with pytest.raises(ValueError, match=r"recorded \(3,\), got \(2,\)"):
        captured(torch.zeros(2))


def toy_step_parts(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, GaussianMemory]:
    torch.manual_seed(seed)
    model = nn.Linear(8, 8).to(CUDA)
    return model, capturable_adam(model.parameters(), 1e-2, CUDA), GaussianMemory(
        64, 8, seed=0).to(CUDA)


def toy_step(model: nn.Module, optimizer: torch.optim.Optimizer, memory: GaussianMemory):
    """The MA-VAE step in miniature: search, loss, clipped Adam step, memory write."""
    def step(inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        mu = model(inputs)
        var = nn.functional.softplus(mu) + 0.1
        positive = memory.nearest_with_label(mu, var, labels)
        loss = mu.square().mean() - scaled_similarity(positive.divergence).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        memory.update_(mu.detach(), var.detach(), labels)
        return {"loss": loss.detach()}
    return step


@pytest.mark.gpu
def test_a_recorded_step_trains_as_the_eager_step_does() -> None:
    generator = torch.Generator(CUDA).manual_seed(1)
    inputs = [torch.randn(16, 8, generator=generator, device=CUDA) for _ in range(8)]
    labels = torch.arange(16, device=CUDA) % 4
    eager_parts, graph_parts = toy_step_parts(0), toy_step_parts(0)
    eager, recorded = toy_step(*eager_parts), CapturedStep(toy_step(*graph_parts), warmup=2)
    eager_losses, recorded_losses = [], []
    for step, batch in enumerate(inputs):
        # The schedule changes the rate between replays; the graph must see each value.
        for parts in (eager_parts, graph_parts):
            set_learning_rate(parts[1], 1e-2 / (1 + step))
        eager_losses.append(eager(batch, labels)["loss"])
        recorded_losses.append(recorded(batch, labels)["loss"])
    assert recorded.graph is not None and recorded.eager_calls == 2
    # Kernels may differ between a recording and eager calls: close, not bit-equal.
    tolerance = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(torch.stack(recorded_losses), torch.stack(eager_losses),
                               **tolerance)
    for eager_value, graph_value in zip(eager_parts[0].parameters(),
                                        graph_parts[0].parameters(), strict=True):
        torch.testing.assert_close(graph_value, eager_value, **tolerance)
    eager_memory, graph_memory = eager_parts[2], graph_parts[2]
    assert torch.equal(graph_memory.labels, eager_memory.labels)
    assert torch.equal(graph_memory.counts, eager_memory.counts)
    assert int(graph_memory.counts.max()) > 1, "the replays merged into entries"
    torch.testing.assert_close(graph_memory.means, eager_memory.means, **tolerance)
    with pytest.raises(ValueError, match="fixed shapes"):
        recorded(inputs[0][:8], labels[:8])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_an_mavae_run_records_its_step_and_resumes_with_or_without_a_graph(
        precision: str, tmp_path: Path) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["device=cuda", "cuda_graph=true",
                                         f"precision={precision}", "budget.max_steps=10",
                                         "log_every=1"])
    result = train(config, tmp_path / "run", dataset, dataset, progress=False)
    assert result.step == 10 and result.device.startswith("cuda")
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    # Non-finite values are logged as null.
    assert len(losses) == 10 and all(loss is not None for loss in losses)
    assert not any("triplet_grad_norm" in record for record in records)
    # Resumes with the graph on the GPU, and without one on the CPU.
    config.budget.max_steps = 14
    resumed = train(config, tmp_path / "run", dataset, dataset, progress=False, resume=True)
    assert resumed.step == 14
    config.budget.max_steps, config.device, config.cuda_graph = 16, "cpu", False
    on_cpu = train(config, tmp_path / "run", dataset, dataset, progress=False, resume=True)
    assert on_cpu.step == 16 and on_cpu.device == "cpu"
