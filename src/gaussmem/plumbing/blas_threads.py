"""NumPy's BLAS held to one thread, but for the large searches that ask for more.

The memory multiplies its CPU search matrices with NumPy's BLAS (see
`gaussmem.memory.GaussianMemory._entry_scores`). NumPy's default, one BLAS thread per
core, would put threads on top of torch's (one per rank under torchrun, the server's
request threads), and a multithreaded BLAS's workers keep spinning after each product,
taking the cores from torch's convolutions: training ran slower with them. A batch
enrollment into a large gallery is the opposite case: one product of hundreds of queries
by every entry is most of its time, so it runs with as many BLAS threads as torch has.
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
def blas_threads_like_torch() -> Iterator[None]:
    """NumPy's BLAS at torch's thread count inside the block, one thread again after:
    for work whose time is one large matrix product, not for work that interleaves
    small products with torch's own."""
    single_blas_thread()
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    with _controller().limit(limits=threads, user_api="blas"):
        yield
