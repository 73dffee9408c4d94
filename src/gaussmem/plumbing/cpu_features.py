"""What the CPU says of itself in /proc/cpuinfo: its model and the instruction sets that
decide how fast training runs (bfloat16, gaussmem.plumbing.precision)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo (Linux), or None where unavailable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_bfloat16_flags() -> list[str]:
    """The CPU's native bfloat16 instruction sets (empty if none or unknown): bfloat16
    training is fast only with them (gaussmem.plumbing.precision)."""
    flags = (cpuinfo_field("flags") or "").split()
    return sorted(flag for flag in flags if flag in ("avx512_bf16", "amx_bf16"))
