"""Training-step and embedding throughput on this machine, per training variant.

    python benchmarks/train_step_speed.py [--steps 10] [--json results/speed/speed-cpu.json]
    python benchmarks/train_step_speed.py --device cuda --classes 80,512,2048 --steps 30 \
        --json results/speed/speed-gpu.json

Times `gaussmem.train.train_step` on cpu-quick with 256 classes x 2 drawings = 512
images per step (pinned: the preset itself now trains 512 classes; `--classes` times
other step sizes, e.g. the paper's 80 classes per step and the larger steps a GPU
needs to be busy) on random uint8 data (throughput does not depend on the pixels)
for each variant in `VARIANTS` (memory layout, precision, decoder width; on CUDA also
`GRAPH_VARIANTS`, the step replayed as a CUDA graph), today's settings
once more with the trunk's blocks in the textbook order (ReLU before the max-pool; the
library pools first, the same function), and the evaluation encoder at several batch
sizes. Reports the median, mean and 95% CI over steps (and, on CUDA, how many times a
step makes the host wait for the device); the variants run one after another in this
process, so compare them within one report (the machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gaussmem.data.class_images import ClassImageSet
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.plumbing.allocator import keep_freed_memory
from gaussmem.plumbing.cuda_graphs import WARMUP_STEPS
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.presets import resolve
from gaussmem.train import Trainer, build_trainer, train_step

ROOT = Path(__file__).resolve().parents[1]


def summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    ci = 1.96 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else 0.0
    return {"median": float(np.median(array)), "mean": float(array.mean()),
            "ci95": float(ci), "n": len(array)}


#: name -> cpu-quick overrides
VARIANTS: dict[str, list[str]] = {
    "float32, NCHW": ["channels_last=false", "precision=float32",
                      "model.decoder_hidden_channels=64"],
    "float32, channels_last": ["precision=float32", "model.decoder_hidden_channels=64"],
    "float32, channels_last, decoder 32": ["precision=float32",
                                           "model.decoder_hidden_channels=32"],
    "bfloat16, channels_last": ["precision=bfloat16", "model.decoder_hidden_channels=64"],
    "bfloat16, channels_last, decoder 32": ["precision=bfloat16",
                                            "model.decoder_hidden_channels=32"],
}


#: The variant with today's cpu-quick settings.
TODAY = "bfloat16, channels_last, decoder 32"

#: On CUDA only: the step recorded once as a CUDA graph and replayed (`cuda_graph`),
#: for the paper presets' float32 model and for today's cpu-quick.
GRAPH_VARIANTS: dict[str, list[str]] = {
    f"{name}, cuda graph": [*VARIANTS[name], "cuda_graph=true"]
    for name in ("float32, channels_last", TODAY)
}


def use_textbook_block_order(backbone: torch.nn.Module) -> None:
    """Move each conv block's ReLU back before its max-pool (conv -> BatchNorm -> ReLU ->
    pool): the function the library computes as conv -> BatchNorm -> pool -> ReLU, so
    timing both shows what that order saves."""
    for block in backbone.blocks:
        block[2], block[3] = block[3], block[2]


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a host clock times what the device did."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_training(name: str, overrides: list[str], steps: int, dataset: ClassImageSet,
                  textbook_block_order: bool = False, device: str = "cpu",
                  classes: int = 256) -> dict:
    # cpu-quick's episodes are 32-way x 16; `classes` = 16 x n_way (n_way >= 5 = 80).
    config = resolve("cpu-quick", overrides=[f"episodes.n_way={classes // 16}",
                                             f"device={device}", *overrides])
    trainer = build_trainer(config, Path("/tmp/gaussmem-speed"), dataset, None)
    if textbook_block_order:
        use_textbook_block_order(trainer.vae.backbone)
    images_per_step = config.episodes.n_classes * config.episodes.images_per_class
    # Past the eager warm-up and the recording step of a `cuda_graph` variant.
    for _ in range(WARMUP_STEPS + 2):
        train_step(trainer)
    rates = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        train_step(trainer)
        synchronize(device)
        rates.append(images_per_step / (time.perf_counter() - start))
    return {"variant": name, "overrides": overrides, "device": device,
            "classes_per_step": config.episodes.n_classes, "images_per_step": images_per_step,
            "textbook_block_order": textbook_block_order, "images_per_second": summary(rates),
            "host_syncs_per_step": host_syncs_per_step(trainer, device)}


def host_syncs_per_step(trainer: Trainer, device: str, steps: int = 3) -> float | None:
    """How many times a training step makes the host wait for the GPU (PyTorch's sync
    debug mode warns at each such call); None off CUDA, where nothing waits."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                train_step(trainer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught) / steps


def time_embedding(batch_size: int, dataset: ClassImageSet, device: str = "cpu") -> dict:
    config = resolve("cpu-quick", overrides=[f"device={device}"])
    trainer = build_trainer(config, Path("/tmp/gaussmem-speed"), dataset, None)
    classifier = MemoryAugmentedVAE(trainer.vae, embed_batch_size=batch_size).eval()
    images = torch.rand(2048, 1, 28, 28)
    classifier.embed(images[:256])
    rates = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        classifier.embed(images)
        synchronize(device)
        rates.append(len(images) / (time.perf_counter() - start))
    return {"embed_batch_size": batch_size, "device": device,
            "images_per_second": summary(rates)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--classes", default="256",
                        help="comma-separated classes per step to time (multiples of 16, "
                        ">= 80; each drawn twice)")
    args = parser.parse_args()
    sizes = [int(value) for value in args.classes.split(",")]
    variants = {**VARIANTS, **(GRAPH_VARIANTS if args.device.startswith("cuda") else {})}
    if any(size < 80 or size % 16 for size in sizes):
        parser.error(f"--classes must be multiples of 16 and >= 80, got {args.classes}")
    rng = np.random.default_rng(0)
    # Enough classes for any step: the embedding timings build today's cpu-quick, which
    # draws 512 classes per step.
    n_classes = max(600, *sizes)
    dataset = ClassImageSet(rng.integers(0, 256, (n_classes, 20, 28, 28), dtype=np.uint8),
                            [str(i) for i in range(n_classes)], "random")
    keep_freed_memory()  # as `gaussmem train` does
    report = {**provenance(),
              "warmup_steps": WARMUP_STEPS + 2,
              "training": [*(time_training(name, overrides, args.steps, dataset,
                                           device=args.device, classes=size)
                             for size in sizes for name, overrides in variants.items()),
                           *(time_training(f"{TODAY}, ReLU before pool", VARIANTS[TODAY],
                                           args.steps, dataset, textbook_block_order=True,
                                           device=args.device, classes=size)
                             for size in sizes)],
              "embedding": [time_embedding(size, dataset, args.device)
                            for size in (64, 128, 256, 512)]}
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
