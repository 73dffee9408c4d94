"""Nearest gallery labels of query Gaussians: the search a recognizer runs per image.

A gallery label may own several memory entries (an example the memory confused gets its
own entry), so "top k" means the k nearest distinct labels, each scored by its nearest
entry. `EntrySearch` is the one call that depends on how entries are found: `ExactSearch`
is the memory's own exact torch search; an approximate index (FAISS over the lifted
Gaussians) plugs in by implementing the same `search`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from gaussmem.memory import NOT_FOUND, GaussianMemory, SearchResult


class EntrySearch(Protocol):
    """Finds the k nearest entries of a memory; `GaussianMemory.query`'s contract."""

    def search(self, memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
               k: int) -> SearchResult:
        """Top-k entries `(n_queries, k)` by symmetric KL, nearest first, NOT_FOUND
        padded; `mu`, `var` `(n_queries, dim)`."""
        ...


class ExactSearch:
    """The memory's exact search (blocked GEMM plus exact re-ranking)."""

    def search(self, memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
               k: int) -> SearchResult:
        return memory.query(mu, var, k)


class LabelCandidates(NamedTuple):
    """The nearest distinct labels per query, nearest first; fields `(n_queries, k)`.

    `labels` NOT_FOUND and `divergence` +inf where the gallery has fewer labels; `slots`
    is each label's nearest entry.
    """

    divergence: torch.Tensor
    labels: torch.Tensor
    slots: torch.Tensor


def nearest_labels(search: EntrySearch, memory: GaussianMemory, mu: torch.Tensor,
                   var: torch.Tensor, k: int) -> LabelCandidates:
    """The k nearest distinct labels of each query `(mu, var)` `(n_queries, dim)`.

    Asks for twice as many entries as labels and doubles that while some query's entries
    name fewer than k labels and more entries exist, so a label with many entries never
    hides the runner-up.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_entries = len(memory)
    width = min(max(n_entries, 1), 2 * k)
    while True:
        found = search.search(memory, mu, var, width)
        candidates = _distinct(found, k)
        enough = (candidates.labels != NOT_FOUND).sum(dim=1) >= min(k, n_entries)
        if bool(enough.all()) or width >= n_entries:
            return candidates
        width = min(n_entries, 2 * width)


def _distinct(found: SearchResult, k: int) -> LabelCandidates:
    """Keep each label's first (nearest) entry per row, then the first k of those."""
    n_queries, width = found.labels.shape
    divergence = torch.full((n_queries, k), torch.inf, dtype=found.divergence.dtype)
    labels = torch.full((n_queries, k), NOT_FOUND, dtype=torch.int64)
    slots = torch.full((n_queries, k), NOT_FOUND, dtype=torch.int64)
    rows_labels = found.labels.tolist()
    divergences = found.divergence.detach()
    for row, row_labels in enumerate(rows_labels):
        seen: set[int] = set()
        for column in range(width):
            label = row_labels[column]
            if label == NOT_FOUND or label in seen:
                continue
            position = len(seen)
            seen.add(label)
            divergence[row, position] = divergences[row, column]
            labels[row, position] = label
            slots[row, position] = found.slots[row, column]
            if len(seen) == k:
                break
    return LabelCandidates(divergence, labels, slots)
