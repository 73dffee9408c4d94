"""A training step recorded once as a CUDA graph and replayed (`cuda_graph = true`).

Why: the paper's presets take 80-320 classes (160-640 images) per step. On a GPU such a
step is a few hundred small kernels, and launching them from Python takes longer than
running them, so the device idles (results/speed/speed-gpu.json). A CUDA graph launches the
whole step -- forward, backward, Adam, the memory's lookups and write -- as one unit.

What a step must be for that, and why gaussmem's MA-VAE step is (docs/memory.md, "On an
accelerator"):

* Fixed shapes and no host syncs: a graph replays the kernels it recorded, so it cannot
  branch on values. The memory's training calls read nothing back (tested under
  `torch.cuda.set_sync_debug_mode("error")`); a sync during capture raises.
* State that lives in tensors updated in place: parameters, Adam's moments and step
  (`capturable=True`), the memory's slots, labels, counts and ages, the generator that
  draws the reparameterization noise. A Python number read during the step would be
  recorded once and replayed forever; so the learning rate is a tensor the loop fills in
  place (`set_learning_rate`), and whatever changes per step on the host (drawing the
  batch, clearing the memory for a new episode, the schedule) stays outside the graph.
* Inputs and outputs at fixed addresses: each call copies its inputs into the tensors
  the graph was recorded with, and returns copies of the recorded outputs (the next
  replay overwrites them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: Eager steps before recording: the first step creates Adam's moments, and cuDNN and
#: cuBLAS pick their kernels in the first calls; a graph must record none of that.
WARMUP_STEPS = 3

Step = Callable[..., dict[str, torch.Tensor]]


class CapturedStep:
    """`step(*inputs)` run eagerly for `warmup` calls, then recorded and replayed.

    `step` takes device tensors of fixed shapes and returns a dict of tensors; it must
    meet the conditions in this module's docstring. Each call is one real step: the
    warm-up calls train as any step does (on a side stream, as graph capture requires),
    and the call that records the graph then replays it once.
    """

    def __init__(self, step: Step, warmup: int = WARMUP_STEPS) -> None:
        self.step = step
        self.warmup = warmup
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._outputs: dict[str, torch.Tensor] = {}

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is None and self.eager_calls < self.warmup:
            self.eager_calls += 1
            return self._run_on_side_stream(inputs)
        if self.graph is None:
            self._record(inputs)
        else:
            if len(inputs) != len(self._inputs):
                raise ValueError(f"the step was recorded with {len(self._inputs)} inputs, "
                                 f"got {len(inputs)}")
            for static, new in zip(self._inputs, inputs, strict=True):
                if new.shape != static.shape:
                    raise ValueError("a CUDA graph replays fixed shapes: recorded "
                                     f"{tuple(static.shape)}, got {tuple(new.shape)}")
                static.copy_(new)
        self.graph.replay()
        return {name: value.clone() for name, value in self._outputs.items()}

    def _run_on_side_stream(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _record(self, inputs: tuple[torch.Tensor, ...]) -> None:
        # clone keeps each input's memory format (channels_last images stay so).
        self._inputs = tuple(value.clone() for value in inputs)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self.step(*self._inputs)
        self.graph = graph


def capturable_adam(parameters: Any, lr: float, device: torch.device, **options: Any
                    ) -> torch.optim.Adam:
    """Adam whose step a graph can record: its step counts live on the device and its
    learning rate is a device tensor, filled in place by `set_learning_rate`."""
    return torch.optim.Adam(parameters, lr=torch.tensor(lr, device=device), capturable=True,
                            **options)


def make_capturable_(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Bring an optimizer loaded from a portable state (`portable_optimizer_state`) back
    to the capturable form: device learning rates, device step counts."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = torch.as_tensor(state["step"], dtype=torch.float32,
                                            device=device)


def portable_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """`optimizer.state_dict()` as a plain (non-capturable) Adam would save it: float
    learning rates and `capturable` off, so the checkpoint resumes anywhere, on the CPU
    or with `cuda_graph = false`, and `make_capturable_` turns it back."""
    groups = [{**group, "capturable": False, "lr": float(group["lr"])}
              for group in state["param_groups"]]
    return {**state, "param_groups": groups}


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor rate (a recorded graph reads it from
    its address) is filled in place."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
