"""NumPy's BLAS held to one thread.

The memory multiplies its CPU search matrices with NumPy's BLAS (see
`gaussmem.memory.GaussianMemory._entry_scores`). NumPy's default, one BLAS thread per
core, would put threads on top of torch's (one per rank under torchrun, the server's
request threads), and a multithreaded BLAS's workers keep spinning after each product,
taking the cores from torch's convolutions: training ran slower with them.
"""

from __future__ import annotations

import functools

from threadpoolctl import ThreadpoolController


@functools.cache
def single_blas_thread() -> None:
    """Limit NumPy's BLAS to one thread; the first call does it (finding the loaded
    BLAS libraries takes a few milliseconds), later calls return at once."""
    ThreadpoolController().limit(limits=1, user_api="blas")
