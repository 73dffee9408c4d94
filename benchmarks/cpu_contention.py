"""Training on a CPU that another process also uses: how many threads should training take?

    python benchmarks/cpu_contention.py [--steps 30] [--json results/speed/cpu_contention.json]

Times `gaussmem.train.train_step` of cpu-quick (512 classes x 2 drawings per step, random
pixels) with `num_threads` = every core and = 1, first alone, then beside a competing
process that keeps as many threads as there are cores busy with matrix products (a second
training run, a test suite). Reports per condition the median, mean and largest step
time and the part spent in the memory's lookups and write. PyTorch's CPU kernels split each
operation over `num_threads` threads and wait for the slowest: when another process holds
a core, every operation waits for a thread that is not running. `gaussmem train` warns
when other tasks are running on the CPU as it starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaussmem.data.class_images import ClassImageSet
from gaussmem.plumbing.allocator import keep_freed_memory
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.presets import resolve
from gaussmem.train import build_trainer, train_step

ROOT = Path(__file__).resolve().parents[1]

MEMORY_CALLS = ("nearest_with_label", "nearest_with_other_label", "update_")


def competitor_code(threads: int) -> str:
    """A process that keeps `threads` threads busy until it is killed."""
    return (f"import torch\ntorch.set_num_threads({threads})\na = torch.randn(512, 512)\n"
            "while True:\n    a @ a\n")


def time_memory_calls(memory: torch.nn.Module) -> Callable[[], float]:
    """Wrap the memory's training calls with a clock; returns a reader that gives the
    seconds spent in them since it was last read."""
    spent = [0.0]

    def timed(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    for name in MEMORY_CALLS:
        setattr(memory, name, timed(getattr(memory, name)))

    def read() -> float:
        value, spent[0] = spent[0], 0.0
        return value
    return read


def time_condition(threads: int, steps: int, dataset: ClassImageSet) -> dict[str, Any]:
    config = resolve("cpu-quick", overrides=["device=cpu", f"num_threads={threads}"])
    trainer = build_trainer(config, Path("/tmp/gaussmem-contention"), dataset, None)
    memory_seconds = time_memory_calls(trainer.method.memory)
    for _ in range(3):
        train_step(trainer)
    step_ms, memory_ms = [], []
    for _ in range(steps):
        memory_seconds()
        start = time.perf_counter()
        train_step(trainer)
        step_ms.append(1e3 * (time.perf_counter() - start))
        memory_ms.append(1e3 * memory_seconds())
    return {"num_threads": threads, "step_ms": summary(step_ms),
            "memory_ms": summary(memory_ms)}


def summary(values: list[float]) -> dict[str, float]:
    """Median, mean and largest: a stalled step shows in the mean and the largest."""
    return {"median": float(np.median(values)), "mean": float(np.mean(values)),
            "max": float(max(values))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    dataset = ClassImageSet(rng.integers(0, 256, (600, 20, 28, 28), dtype=np.uint8),
                            [str(i) for i in range(600)], "random")
    keep_freed_memory()  # as `gaussmem train` does
    report: dict[str, Any] = {**provenance(), "cores": cores,
                              "steps": args.steps, "conditions": []}
    for competing in (False, True):
        competitor = (subprocess.Popen([sys.executable, "-c", competitor_code(cores)])
                      if competing else None)
        try:
            if competitor is not None:
                time.sleep(2)  # let it start spinning
            for threads in sorted({cores, 1}, reverse=True):
                row = {"competing_threads": cores if competing else 0,
                       **time_condition(threads, args.steps, dataset)}
                report["conditions"].append(row)
                print(f"competing threads {row['competing_threads']}, training threads "
                      f"{threads}: step median {row['step_ms']['median']:.0f} ms, mean "
                      f"{row['step_ms']['mean']:.0f}, max {row['step_ms']['max']:.0f}; "
                      "memory calls median "
                      f"{row['memory_ms']['median']:.0f} ms", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
