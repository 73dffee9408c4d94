"""Training on several processes (torchrun + DistributedDataParallel): who this process
is, and the few collectives the training loop and the MA-VAE's shared memory need.

`torchrun` starts one process per rank and describes it in environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); `process_group` joins them
(nccl on GPUs, gloo on CPUs). Everything else asks `current()`, which reads the joined
group, so a plain `gaussmem train` (no group) runs exactly as it always did. The library
never starts processes itself: the launcher owns that (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist

from gaussmem.errors import DistributedError

#: torchrun's description of a process; all of them must be set to join a group.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: How long a rank waits at a collective for the others: rank 0 validates and writes
#: checkpoints while the others wait, so this bounds a validation, not a step.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True inside a joined process group (even of one process)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes the run's files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building a data cache, say), the others after it
        has finished, so that they find its files instead of racing to write them."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def agree(self, signal_number: int | None, elapsed_seconds: float
              ) -> tuple[int | None, float]:
        """The decisions every rank must share to take the same steps: a stop signal
        received by any rank, and rank 0's clock (budgets and the cosine schedule read
        it). One small all-reduce; alone, the values themselves."""
        if not self.enabled:
            return signal_number, elapsed_seconds
        values = torch.tensor([float(signal_number or 0),
                               elapsed_seconds if self.is_main else 0.0],
                              dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        agreed_signal = int(values[0].item())
        return (agreed_signal or None), float(values[1].item())

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank passes the same keys)."""
        if not self.enabled:
            return values
        names = sorted(values)
        summed = torch.tensor([values[name] for name in names], dtype=torch.float64,
                              device=self.collective_device)
        dist.all_reduce(summed)
        return {name: float(total) / self.world_size
                for name, total in zip(names, summed.tolist(), strict=True)}

    @torch.no_grad()
    def average_buffers_(self, module: torch.nn.Module) -> None:
        """Replace `module`'s floating-point buffers (BatchNorm's running statistics) by
        their mean over ranks, in one all-reduce: each rank updated them from its own
        share of the batch, and what is validated or saved must hold every rank's."""
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not self.enabled or self.world_size == 1 or not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])
        dist.all_reduce(flat)
        flat /= self.world_size
        for buffer, mean in zip(buffers, flat.split([b.numel() for b in buffers]),
                                strict=True):
            buffer.copy_(mean.view_as(buffer))

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's `rows (n, ...)` (same shape on every rank): `(world_size, n, ...)`
        in rank order, on every rank. No gradient flows through it."""
        if not self.enabled:
            return rows.detach()[None]
        parts = [torch.empty_like(rows) for _ in range(self.world_size)]
        dist.all_gather(parts, rows.detach().contiguous())
        return torch.stack(parts)

    @property
    def collective_device(self) -> torch.device:
        """Where tensors handed to the group's backend must live (nccl: this GPU)."""
        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def current() -> Distributed:
    """This process's rank and the world size of the joined group (0 of 1 if none)."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    return Distributed()


def launched_by_torchrun() -> bool:
    """True when the environment describes a rank of a multi-process launch."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def backend_for(device_type: str) -> str:
    """nccl for CUDA ranks, gloo for CPU ranks."""
    return "nccl" if device_type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[Distributed]:
    """Join the launch's process group for the block (backend from `device_type`, GPU
    `LOCAL_RANK` for nccl) when torchrun started this process; alone otherwise."""
    if not launched_by_torchrun() or current().enabled:
        yield current()
        return
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} "
                               "is not: launch with torchrun (docs/distributed.md)")
    backend = backend_for(device_type)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def exit_rank(status: int) -> NoReturn:
    """End this rank's process with `status` at once, after flushing the standard
    streams, skipping the interpreter's shutdown.

    Why: DistributedDataParallel keeps its process group alive past
    `destroy_process_group`, so gloo's worker threads (and rank 0's rendezvous store
    thread) still run while the interpreter shuts down, and one of them that then needs
    the interpreter lock aborts the process: a run that finished and wrote everything
    would exit with SIGABRT, and the launcher would report it failed. Call it only once
    every file is closed (the training loop closes its own)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank `rank`'s own global random stream (reparameterization noise)
    from step `step`: `seed` itself for rank 0 at step 0, so that one process draws what
    a plain run draws. Ranks other than 0 reseed so on resume (a checkpoint holds rank
    0's streams only)."""
    if rank == 0 and step == 0:
        return seed
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0]
    return int(state >> 1)
