"""Mixed precision for training: bfloat16 autocast around the networks, float32 elsewhere.

On CPUs with native bfloat16 (AVX512-BF16 or AMX) and on recent GPUs, convolutions in
bfloat16 run much faster than in float32 (measured: `python
benchmarks/train_step_speed.py` -> results/speed/speed-cpu.json). Only the networks'
convolutions and linear layers run in bfloat16; weights, optimizer state, the posterior
heads (see `GaussianHead`), the memory's divergences and every loss stay float32.
bfloat16 has float32's exponent range, so no loss scaling is needed. On a CPU without
native bfloat16 it can be slower than float32: measure before choosing it.
"""

from __future__ import annotations

import torch

PRECISIONS = ("float32", "bfloat16")


def autocast(precision: str, device: torch.device | str, cache: bool = True
             ) -> torch.autocast:
    """A context that runs autocast-eligible ops in bfloat16 when `precision` says so
    (a disabled, do-nothing autocast for "float32").

    `cache`: reuse each weight's bfloat16 copy within the context; a CUDA graph must be
    recorded without the cache (PyTorch's CUDA graph notes).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bfloat16", cache_enabled=cache)
