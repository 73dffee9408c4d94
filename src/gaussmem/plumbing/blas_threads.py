"""NumPy's BLAS held to one thread.

The memory multiplies its CPU search matrices with NumPy's BLAS (see
`gaussmem.memory.GaussianMemory._entry_scores`). NumPy's default, one BLAS thread per
core, would put threads on top of torch's (one per rank under torchrun, the server's
request threads), and a multithreaded BLAS's workers keep spinning after each product,
taking the cores from torch's convolutions: training ran slower with them.
"""

from __future__ import annotations

import threading

from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_controller: ThreadpoolController | None = None
_applied: int | None = None


def single_blas_thread() -> None:
    """Limit NumPy's BLAS to one thread (once per process; cheap after)."""
    global _controller, _applied
    threads = 1
    if threads == _applied:
        return
    with _lock:
        if _controller is None:
            # Finding the loaded BLAS libraries takes a few milliseconds: once.
            _controller = ThreadpoolController()
        _controller.limit(limits=threads, user_api="blas")
        _applied = threads
