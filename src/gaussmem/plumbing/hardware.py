"""Describe the machine and code a number was measured with, for every results JSON.

A figure without its hardware cannot be compared or trusted, so benchmarks, training
runs and evaluations all record this dictionary beside what they measured. Two runs
with the same config can still differ in code (a trunk reordered, a memory rewritten),
so the dictionary names gaussmem's version and, in a git checkout, its commit.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaussmem import __version__
from gaussmem.plumbing.cpu_features import cpu_bfloat16_flags, cpu_model

#: The package's source folder: `<checkout>/src/gaussmem` in a git checkout.
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """gaussmem's version; from a git checkout also its commit, and ".dirty" when the
    library's source (`src/`) has uncommitted changes, e.g. "0.1.0+g1a2b3c4d5e6f.dirty".

    Only a checkout whose `src/gaussmem` is `package_dir` counts: an installed copy inside
    some other repository (a virtual environment in a project) reports the version alone.
    """
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(package_dir), *arguments], check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if (top / "src" / "gaussmem").resolve() != package_dir.resolve():
            return __version__
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(top / "src"))
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def describe_hardware(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU model and cores, accelerator (if any), and library and gaussmem versions: the
    one hardware record of every results JSON (training, evaluation, benchmarks).

    `device`: where the measured work ran; its GPU is the one named (`gpu`), and a CPU
    device names none. None: the first GPU where torch sees one.
    """
    description: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_bfloat16": cpu_bfloat16_flags(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gaussmem": code_version(),
        "platform": platform.platform(),
        # Shared machines are noisy: a figure taken under load says so.
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    if device is None and torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(0)
    elif device is not None and torch.device(device).type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return description


def cpu_in_words(hardware: dict[str, Any], *, bfloat16: bool = False) -> str:
    """A `describe_hardware` record's CPU in words, e.g. "2-core CPU (AMD EPYC)" (older
    records name the cores `cores`); `bfloat16` adds ", native bfloat16" where it has it."""
    cores = hardware.get("cpu_cores", hardware.get("cores", "?"))
    native = ", native bfloat16" if bfloat16 and hardware.get("cpu_bfloat16") else ""
    return f"{cores}-core CPU ({hardware.get('cpu', '?')}{native})"


def other_running_tasks(samples: int = 10, interval_s: float = 0.05) -> float | None:
    """Tasks running or waiting for a CPU right now besides this one: the median over
    `samples` readings of /proc/loadavg's running count, minus this process. None where
    there is no /proc (not Linux).

    Not the load average: that is a one-minute mean, so work that has just finished
    (a test suite, an install) would still count as running.
    """
    readings = []
    try:
        for index in range(samples):
            if index:
                time.sleep(interval_s)
            with open("/proc/loadavg") as handle:
                readings.append(int(handle.read().split()[3].split("/")[0]))
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, float(np.median(readings)) - 1)


def busy_cpu_warning(other_tasks: float, cores: int, threads: int) -> str | None:
    """A warning when the training threads and the tasks already running want more
    cores than there are, else None.

    PyTorch splits each CPU operation over its threads and waits for the slowest, so a
    thread whose core another process holds stalls every operation
    (results/speed/cpu_contention.json).

    `cores` must count the same CPUs as `other_tasks`: in a container /proc/loadavg is
    usually the host's, so pass every CPU the system reports, not the container's share,
    or a busy host would warn on every run.
    """
    if other_tasks < 1 or threads + other_tasks <= cores + 0.5:
        return None
    busy = (f"the CPU is busy ({other_tasks:g} other tasks running, {cores} cores) and "
            f"training will run {threads} thread{'s' if threads != 1 else ''}: beside other "
            "work that can make steps several times slower, with stalls of seconds")
    if threads == 1:  # no fewer threads to suggest
        return f"{busy}; steps will be slower until the other work ends"
    suggested = max(1, min(threads - 1, cores - math.ceil(other_tasks - 0.5)))
    return f"{busy}; --set num_threads={suggested} leaves the other work its cores"


def command_line() -> str:
    """The command that is running, as a user would retype it."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    if program.endswith(".py"):
        program = f"python {os.path.relpath(sys.argv[0])}"
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])
