"""NumPy's BLAS and torch's thread counts around the memory's large searches."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from gaussmem.plumbing.blas_threads import cores_to_blas, single_blas_thread


def blas_thread_counts() -> set[int]:
    return {library["num_threads"] for library in threadpool_info()
            if library["user_api"] == "blas"}


def test_a_large_search_takes_the_cores_from_torch_and_gives_them_back() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        single_blas_thread()
        assert blas_thread_counts() == {1}
        with cores_to_blas():
            assert blas_thread_counts() == {2} and torch.get_num_threads() == 1
        assert blas_thread_counts() == {1} and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), cores_to_blas():
            raise RuntimeError("inside")
        assert blas_thread_counts() == {1} and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        with cores_to_blas():
            assert blas_thread_counts() == {1} and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
