"""NumPy's BLAS thread count around the memory's searches."""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_info

from gaussmem.plumbing.blas_threads import blas_threads_like_torch, single_blas_thread


def blas_thread_counts() -> set[int]:
    return {library["num_threads"] for library in threadpool_info()
            if library["user_api"] == "blas"}


def test_a_large_search_takes_torchs_threads_and_gives_them_back() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        single_blas_thread()
        assert blas_thread_counts() == {1}
        with blas_threads_like_torch():
            assert blas_thread_counts() == {2}
        assert blas_thread_counts() == {1}
        torch.set_num_threads(1)
        with blas_threads_like_torch():
            assert blas_thread_counts() == {1}
    finally:
        torch.set_num_threads(threads)
