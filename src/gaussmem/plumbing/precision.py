"""Mixed precision for training: bfloat16 autocast around the networks, float32 elsewhere.

On CPUs with native bfloat16 (AVX512-BF16 or AMX) and on recent GPUs, convolutions in
bfloat16 run much faster than in float32 (measured: `python
benchmarks/train_step_speed.py` -> results/speed/speed-cpu.json). Only the networks'
convolutions and linear layers run in bfloat16; weights, optimizer state, the posterior
heads (see `GaussianHead`), the memory's divergences and every loss stay float32.
bfloat16 has float32's exponent range, so no loss scaling is needed. On a CPU without
native bfloat16 autocast is emulated and several times slower than float32, so a preset
says "auto": bfloat16 where the device has it natively, float32 elsewhere.
"""

from __future__ import annotations

import torch

from gaussmem.plumbing.cpu_features import cpu_bfloat16_flags

#: What a run can train in.
PRECISIONS = ("float32", "bfloat16")
#: What a config can ask for: a precision, or "auto" (`resolve_precision`).
PRECISION_SETTINGS = (*PRECISIONS, "auto")


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bfloat16_flags())


def resolve_precision(setting: str, device: torch.device | str,
                      supported: tuple[str, ...] = PRECISIONS) -> str:
    """The precision a run on `device` trains in: `setting` itself, or for "auto"
    bfloat16 where the device has it natively and `supported` (the method's) includes
    it, else float32."""
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {PRECISION_SETTINGS}, got {setting!r}")
    if setting != "auto":
        return setting
    return "bfloat16" if "bfloat16" in supported and native_bfloat16(device) else "float32"


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
