"""The FAISS gallery search over the symmetric-KL lift against a brute-force float64
oracle (faiss tests/test_index.py style: small seeded data)."""

from __future__ import annotations

import sys

import pytest
import torch

from gaussmem.gaussian import symmetric_kl_diag

pytest.importorskip("faiss")

from gaussmem.errors import GallerySearchError
from gaussmem.search_faiss import NOT_FOUND, LiftedGaussianIndex, entry_vectors, query_vectors

DIM = 8


def gallery(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means N(0, 1), log-variances uniform in [-3, 1]: the range a trained encoder gives."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(count, DIM, generator=generator)
    variances = torch.exp(4 * torch.rand(count, DIM, generator=generator) - 3)
    return means, variances


def near_queries(means: torch.Tensor, variances: torch.Tensor, count: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """New views of random entries: the entry's mean moved by half its spread."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(len(means), (count,), generator=generator)
    query_means = means[source] + 0.5 * variances[source].sqrt() * torch.randn(
        count, DIM, generator=generator)
    query_variances = variances[source] * torch.exp(0.3 * torch.randn(count, DIM,
                                                                      generator=generator))
    return query_means, query_variances


def brute_force(query_means, query_variances, means, variances, k):
    divergences = symmetric_kl_diag(query_means.double()[:, None],
                                    query_variances.double()[:, None],
                                    means.double()[None], variances.double()[None])
    return divergences.topk(k, dim=1, largest=False)


def test_the_lift_is_the_divergence_up_to_the_query_offset() -> None:
    means, variances = gallery(50, 0)
    query_means, query_variances = near_queries(means, variances, 7, 1)
    inner = torch.from_numpy(query_vectors(query_means, query_variances)).double() @ \
        torch.from_numpy(entry_vectors(means, variances)).double().T
    skl = symmetric_kl_diag(query_means.double()[:, None], query_variances.double()[:, None],
                            means.double()[None], variances.double()[None])
    gap = (inner + skl)  # offset(query) on every entry of a row
    torch.testing.assert_close(gap, gap[:, :1].expand_as(gap), atol=1e-2, rtol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_agrees_with_exact_search(kind: str) -> None:
    means, variances = gallery(2000, 0)
    labels = torch.arange(2000) % 37
    index = LiftedGaussianIndex(DIM, kind=kind, n_lists=8, nprobe=8, candidates=16,
                                threads=1)
    index.add(means[:1500], variances[:1500], labels[:1500])  # IVF: trained here
    index.add(means[1500:], variances[1500:], labels[1500:])  # ids continue
    assert len(index) == 2000
    query_means, query_variances = near_queries(means, variances, 100, 1)
    result = index.search(query_means, query_variances, k=5)
    expected = brute_force(query_means, query_variances, means, variances, 5)
    # nprobe = n_lists scans everything: both kinds are exact after the re-ranking.
    assert torch.equal(result.ids, expected.indices)
    torch.testing.assert_close(result.divergences, expected.values, rtol=1e-12, atol=1e-9)
    assert torch.equal(result.labels, labels[expected.indices])
    assert result.divergences.dtype == torch.float64


def test_ivf_recall_with_few_lists_probed() -> None:
    means, variances = gallery(20000, 2)
    index = LiftedGaussianIndex(DIM, kind="ivf", n_lists=64, nprobe=8, candidates=8,
                                threads=1)
    index.add(means, variances, torch.zeros(20000, dtype=torch.int64))
    query_means, query_variances = near_queries(means, variances, 300, 3)
    found = index.search(query_means, query_variances, k=1).ids[:, 0]
    exact = brute_force(query_means, query_variances, means, variances, 1).indices[:, 0]
    assert (found == exact).double().mean() >= 0.9


def test_small_galleries_pad_and_bad_inputs_fail_early() -> None:
    index = LiftedGaussianIndex(DIM, candidates=4)
    empty = index.search(*gallery(2, 0), k=2)
    assert (empty.ids == NOT_FOUND).all() and torch.isinf(empty.divergences).all()
    means, variances = gallery(3, 0)
    index.add(means, variances, torch.tensor([5, 6, 7]))
    result = index.search(means, variances, k=5)
    assert torch.equal(result.ids[:, 0], torch.arange(3))
    assert (result.ids[:, 3:] == NOT_FOUND).all() and (result.labels[:, 3:] == NOT_FOUND).all()
    with pytest.raises(GallerySearchError, match=r"shape \(n, 8\)"):
        index.add(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2))
    with pytest.raises(GallerySearchError, match="finite"):
        index.search(torch.full((1, DIM), float("nan")), torch.ones(1, DIM))
    with pytest.raises(GallerySearchError, match="holds only 3 entries"):
        LiftedGaussianIndex(DIM, kind="ivf", n_lists=8).add(means, variances,
                                                             torch.zeros(3))
    with pytest.raises(GallerySearchError, match="'flat' or 'ivf'"):
        LiftedGaussianIndex(DIM, kind="hnsw")


def test_missing_faiss_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(GallerySearchError, match=r"gaussmem\[faiss\]"):
        LiftedGaussianIndex(DIM)


def test_searches_use_blas_for_small_batches_and_restore_the_setting() -> None:
    import faiss

    from gaussmem.search_faiss import BLAS_THRESHOLD, blas_for_small_batches

    before = faiss.cvar.distance_compute_blas_threshold
    with blas_for_small_batches(faiss):
        assert faiss.cvar.distance_compute_blas_threshold <= BLAS_THRESHOLD
    assert faiss.cvar.distance_compute_blas_threshold == before
