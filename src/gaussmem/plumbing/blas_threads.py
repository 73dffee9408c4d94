"""NumPy's BLAS kept at the thread count torch was given.

The memory multiplies its CPU search matrices with NumPy's BLAS (see
`gaussmem.memory.GaussianMemory._entry_scores`). A process that asked torch for n
threads (`torch.set_num_threads`, a config's `num_threads`, one per rank under torchrun)
must not get NumPy's default of one thread per core on top of them: the ranks or the
server's threads would then fight over the cores.
"""

from __future__ import annotations

import threading

import torch
from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_controller: ThreadpoolController | None = None
_applied: int | None = None


def match_torch_threads() -> None:
    """Limit NumPy's BLAS to `torch.get_num_threads()` threads (cheap when unchanged)."""
    global _controller, _applied
    threads = torch.get_num_threads()
    if threads == _applied:
        return
    with _lock:
        if _controller is None:
            # Finding the loaded BLAS libraries takes a few milliseconds: once.
            _controller = ThreadpoolController()
        _controller.limit(limits=threads, user_api="blas")
        _applied = threads
