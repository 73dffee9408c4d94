"""Which torch device a run trains and embeds on.

`device = "auto"` (the default) takes the first CUDA GPU when torch sees one, else the
CPU; "cpu", "cuda" and "cuda:N" ask for one. A config names its device as text, checked
for syntax when the config is built (a config written on a laptop may be meant for a GPU
machine) and resolved to a `torch.device`, with a clear error if absent, when a run or
an evaluation starts.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from gaussmem.errors import DeviceError

_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """`name` if it is "auto", "cpu", "cuda" or "cuda:N"; else a `DeviceError`."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
        raise DeviceError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """The `torch.device` that `name` means on this machine."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but torch {torch.__version__} sees "
                              "no CUDA GPU here; use device 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but torch sees "
                              f"{torch.cuda.device_count()} CUDA GPU(s)")
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s parameters (the CPU for a module without any)."""
    parameter = next(module.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device
