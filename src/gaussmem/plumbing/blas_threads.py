"""NumPy's BLAS held to one thread, but for the large searches that ask for the cores.

The memory multiplies its CPU search matrices with NumPy's BLAS (see
`gaussmem.memory.GaussianMemory._entry_scores`). NumPy's default, one BLAS thread per
core, would put threads on top of torch's (one per rank under torchrun, the server's
request threads), and a multithreaded BLAS's workers keep spinning after each product,
taking the cores from torch's convolutions: training ran slower with them. A batch
enrollment into a large gallery is the opposite case: its time is large products with
small torch operations between them, so for its duration the BLAS gets torch's threads
and torch one. Giving the BLAS the threads while torch kept its own measured slower
than neither: each pool's idle workers spun on the cores the other needed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from threadpoolctl import ThreadpoolController


@functools.cache
def _controller() -> ThreadpoolController:
    # Finding the loaded BLAS libraries takes a few milliseconds: once per process.
    return ThreadpoolController()


@functools.cache
def single_blas_thread() -> None:
    """Limit NumPy's BLAS to one thread; the first call does it, later calls return at
    once."""
    _controller().limit(limits=1, user_api="blas")


@contextlib.contextmanager
def cores_to_blas() -> Iterator[None]:
    """Inside the block NumPy's BLAS runs torch's thread count and torch one thread;
    both are restored after, also on an error. For work whose time is large products
    through NumPy, not for work that runs torch's own heavy operations."""
    single_blas_thread()
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        with _controller().limit(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)
