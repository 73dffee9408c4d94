"""The paper's memory (Tseran & Harada 2017, 3.1): diagonal-Gaussian class embeddings in
the slots of a `gaussmem.slot_memory.SlotMemory`, addressed by symmetric KL through one
GEMM of lifted features and merged by moment matching. Writes (`update_` and
`write_support_`) follow the slot memory's batch write semantics.

Keys never get gradients: writes run under `torch.no_grad()` on detached inputs, and all
state lives in buffers (saved by `state_dict`, moved by `.to()`, absent from
`parameters()`).

"Not found" (empty memory, fewer than k matching entries, no entry with/without the
label): slot `NOT_FOUND` (-1), label `NOT_FOUND` (-1), divergence +inf, similarity 0.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal, NamedTuple

import numpy as np
import safetensors.torch
import torch

from gaussmem.bfloat16_screen import EntryScreen, lower_bound_of, product_ceiling
from gaussmem.errors import MemoryFileError
from gaussmem.gaussian import (
    LiftedGaussians,
    clamp_variance,
    lift_entries,
    lift_queries,
    lift_rounding_factor,
    merge_running_,
    similarity_from_divergence,
    squared_column_norms,
    symmetric_kl_diag,
)
from gaussmem.memory_file import FILE_FORMAT, SLOT_TENSORS, read_memory_file
from gaussmem.plumbing.atomic import write_bytes_atomic
from gaussmem.plumbing.blas_threads import single_blas_thread
from gaussmem.plumbing.precision import native_bfloat16
from gaussmem.row_selection import smallest_per_row
from gaussmem.slot_memory import (
    DEFAULT_MAX_BLOCK_ELEMENTS,
    NOT_FOUND,
    SlotMemory,
    excluded_in_block,
    put_rows_,
)

#: GEMM candidates per query beyond k that the Gaussian memory re-scores exactly. The
#: GEMM form cancels large terms in float32 (see `pairwise_symmetric_kl`); an error bound
#: then shows whether the exact order of these candidates is certain (it is, for almost
#: every query in realistic ranges) or whether the query is searched again in float64.
_EXTRA_CANDIDATES = 8

#: With `search_screen="auto"`, searches over at least this many slots run their matrix
#: product through the bfloat16 screen on a CPU with native bfloat16
#: (`gaussmem.bfloat16_screen`). Below it the product is too small for the screen's copy
#: of the entries to pay, and training's memories stay on the float32 path.
SCREEN_MIN_SLOTS = 2**16
#: Fewest queries a screened product multiplies at once: for fewer, the bfloat16 product
#: (a matrix-vector product, bound by memory) is no faster than the float32 one.
SCREEN_MIN_QUERIES = 32
#: Screened candidates per query beyond k re-scored exactly, this many plus
#: `_SCREEN_EXTRA_PER_K` per k: the screen's bounds are looser than float32's, so more
#: entries can crowd under the k-th nearest one's divergence (the more, the larger k),
#: and an unproven query costs another pass over the gallery.
_SCREEN_EXTRA_CANDIDATES = 32
_SCREEN_EXTRA_PER_K = 4
#: Entries whose typical magnitudes set the screen's per-coordinate scale: enough for a
#: stable average, few enough to lift in a moment.
_SCREEN_SAMPLE = 4096
#: Entries per query and slot block that a screened re-search scores exactly before it
#: turns to float32 scores for that block instead.
_SCREEN_MOST_NEAR = 64

SearchBackend = Literal["torch", "faiss"]
SearchScreen = Literal["auto", "bfloat16", "off"]


class _LiftedQueries(NamedTuple):
    """A search's lifted queries (`LiftedGaussians`' fields) and, where the search
    screens in bfloat16, their screen rows (`EntryScreen.queries`)."""

    features: torch.Tensor
    offsets: torch.Tensor
    screen: torch.Tensor | None


class SearchResult(NamedTuple):
    """Top-k entries per query, nearest first; every field `(n_queries, k)`.

    `divergence` is differentiable with respect to the query (never the memory).
    """

    divergence: torch.Tensor
    similarity: torch.Tensor
    labels: torch.Tensor
    slots: torch.Tensor


class NearestResult(NamedTuple):
    """Nearest entry per query under a label condition; both fields `(n_queries,)`."""

    divergence: torch.Tensor
    slots: torch.Tensor


class GaussianMemory(SlotMemory):
    """Memory of diagonal-Gaussian class embeddings, addressed by symmetric KL.

    Args:
        capacity: number of slots.
        dim: embedding dimension (the paper's z_c).
        age_noise: half-width of the uniform noise added to ages when choosing the slot to
            overwrite (Kaiser et al.); 0 makes "oldest" exact.
        dtype: float32 (default) or float64 for means, variances and the cached lift.
        seed: seeds the age-noise generator; None draws one (stored in `seed`).
        max_block_elements: bound on one temporary score block.
        search_backend: "torch" (blocked GEMM) or "faiss" (exact flat inner-product
            index over the lifted vectors; needs `pip install gaussmem[faiss]`; used by
            `query` on CPU, label-filtered searches stay on torch).
        search_screen: how the torch backend's CPU searches multiply: "bfloat16" screens
            candidates with a bfloat16 product whose rounding is bounded
            (`gaussmem.bfloat16_screen`; the answer stays exact), "off" multiplies in
            float32, "auto" screens searches of at least `SCREEN_MIN_QUERIES` queries
            over at least `SCREEN_MIN_SLOTS` slots on a CPU with native bfloat16.
            Float32 memories only (`screens_search` says what a search will do).

    Buffers: `means`, `variances` `(capacity, dim)`; `labels`, `counts`, `ages`, `valid`
    `(capacity,)`; the non-persistent lift cache `entry_lift` `(4 * dim + 1, capacity)`:
    the entries' features (`entry_features`) and, in its last row, their offsets
    (`entry_offsets`, +inf at empty slots so they never match), by dimension, so a
    search's matrix product reads the entries' values of each dimension contiguously
    and, against a query's lift with a 1 appended, adds the offsets as one more product
    term instead of in a second pass over the scores. Rebuilt after `load_state_dict`,
    `.to()` and `grow_`.
    """

    means: torch.Tensor
    variances: torch.Tensor
    entry_lift: torch.Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        age_noise: float = 0.0,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        search_backend: SearchBackend = "torch",
        search_screen: SearchScreen = "auto",
    ) -> None:
        super().__init__(
            capacity, age_noise=age_noise, seed=seed, max_block_elements=max_block_elements
        )
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        if search_backend not in ("torch", "faiss"):
            raise ValueError(f"search_backend must be 'torch' or 'faiss', got {search_backend!r}")
        if search_backend == "faiss":
            _import_faiss()
        if search_screen not in ("auto", "bfloat16", "off"):
            raise ValueError(
                f"search_screen must be 'auto', 'bfloat16' or 'off', got {search_screen!r}")
        self.dim = dim
        self.search_backend = search_backend
        self.search_screen = search_screen
        self._entry_screen: EntryScreen | None = None
        self._faiss_index: Any = None
        self._faiss_slots: torch.Tensor | None = None
        self._entry_scale: tuple[float, float] | None = None
        self.register_buffer("means", torch.zeros(capacity, dim, dtype=dtype))
        self.register_buffer("variances", torch.ones(capacity, dim, dtype=dtype))
        self.register_buffer(
            "entry_lift", torch.zeros(4 * dim + 1, capacity, dtype=dtype), persistent=False
        )
        self.register_load_state_dict_post_hook(lambda module, _keys: module._keys_changed_(None))
        self._keys_changed_(None)

    @property
    def entry_features(self) -> torch.Tensor:
        """`(4 * dim, capacity)`: the entries' lifted features (a view of `entry_lift`)."""
        return self.entry_lift[:-1]

    @property
    def entry_offsets(self) -> torch.Tensor:
        """`(capacity,)`: the entries' lift offsets, +inf at empty slots (a view)."""
        return self.entry_lift[-1]

    def extra_repr(self) -> str:
        return (
            f"capacity={self.capacity}, dim={self.dim}, dtype={self.means.dtype}, "
            f"age_noise={self.age_noise}, search_backend={self.search_backend!r}, "
            f"search_screen={self.search_screen!r}"
        )

    def _apply(self, fn: Any, recurse: bool = True) -> GaussianMemory:
        # A float32 lift cast to float64 keeps float32's rounding; recompute it instead.
        super()._apply(fn, recurse)
        self._keys_changed_(None)
        return self

    # --- queries ----------------------------------------------------------------------
    def query(self, mu: torch.Tensor, var: torch.Tensor, k: int = 1) -> SearchResult:
        """The k nearest entries by symmetric KL, nearest first.

        Args:
            mu, var: `(n_queries, dim)` query means and variances.
            k: entries per query; rows with fewer valid entries are padded with NOT_FOUND.
        Returns: `SearchResult`, fields `(n_queries, k)`. Candidates come from the GEMM
        form and are re-ranked by their exact divergence (a query whose float32 GEMM
        might have missed a nearer entry is searched again in float64; see
        `_refine_candidates`); their divergences are then recomputed with
        `symmetric_kl_diag` (differentiable in the query) and re-sorted. Entries whose
        values are not finite never match.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        mu, var = self._as_queries(mu, var)
        if self.search_backend == "faiss" and mu.device.type == "cpu":
            slots = self._faiss_search(mu, var, k)
        else:
            slots = self._search_slots((mu, var), k, certify=True)
        divergence, slots = self._exact_divergence(mu, var, slots)
        labels = torch.where(slots == NOT_FOUND, NOT_FOUND, self.labels[slots.clamp_min(0)])
        return SearchResult(divergence, similarity_from_divergence(divergence), labels, slots)

    def nearest_with_label(
        self, mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor
    ) -> NearestResult:
        """Nearest entry whose label equals the query's (the triplet loss's positive).

        Args: `mu`, `var` `(n_queries, dim)`; `labels` `(n_queries,)`.
        Returns: `NearestResult` `(n_queries,)`; NOT_FOUND / +inf where no entry has it.
        """
        return self._nearest_by_label(mu, var, labels, same_label=True)

    def nearest_with_other_label(
        self, mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor
    ) -> NearestResult:
        """Nearest entry whose label differs from the query's (the triplet's negative).

        Args: `mu`, `var` `(n_queries, dim)`; `labels` `(n_queries,)`.
        Returns: `NearestResult` `(n_queries,)`; NOT_FOUND / +inf where every entry has
        the query's label or the memory is empty.
        """
        return self._nearest_by_label(mu, var, labels, same_label=False)

    def divergences_to_entries(
        self, mu: torch.Tensor, var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric KL from every query to every slot up to the last occupied one.

        Returns `(divergence (n_queries, extent), labels (extent,))` for slots
        `0..extent-1`, extent = one past the last valid slot (every slot on an
        accelerator, see `_searched_extent`); +inf and NOT_FOUND at empty slots among
        them. One GEMM of the lifted queries with the cached entry lift
        (`pairwise_symmetric_kl`'s form and accuracy), differentiable in the queries; the
        entries are constants. For losses over the whole memory; to find neighbours,
        `query` is cheaper in memory.
        """
        mu, var = self._as_queries(mu, var)
        extent = self._searched_extent()
        lifted = lift_queries(mu, var)
        divergence = self._entry_scores(lifted.features, slice(0, extent))
        return (divergence + lifted.offsets[:, None]).clamp_min(0), self.labels[:extent]

    def entries(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances at `slots` (any shape), each `slots.shape + (dim,)`.

        NOT_FOUND slots give slot 0's values: mask them with `slots >= 0`.
        """
        safe = slots.clamp_min(0)
        return self.means[safe], self.variances[safe]

    def _nearest_by_label(
        self, mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, *, same_label: bool
    ) -> NearestResult:
        mu, var = self._as_queries(mu, var)
        labels = self._as_labels(labels, len(mu))
        slots = self._search_slots((mu, var), 1, labels, same_label)
        divergence, slots = self._exact_divergence(mu, var, slots)
        return NearestResult(divergence[:, 0], slots[:, 0])

    def _exact_divergence(
        self, mu: torch.Tensor, var: torch.Tensor, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact SKL to `(n, k)` slots, re-sorted ascending; +inf at NOT_FOUND."""
        entry_mu, entry_var = self.entries(slots)
        divergence = symmetric_kl_diag(mu[:, None, :], var[:, None, :], entry_mu, entry_var)
        divergence = divergence.masked_fill(slots == NOT_FOUND, torch.inf)
        if slots.shape[1] == 1:
            return divergence, slots
        order = torch.sort(divergence.detach(), dim=1, stable=True).indices
        return divergence.gather(1, order), slots.gather(1, order)

    # --- writes -----------------------------------------------------------------------
    @torch.no_grad()
    def update_(self, mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The paper's write rule for a batch (see the module docstring for batch order).

        An item whose nearest entry has its label merges into it (moment matching with
        w = (k-1)/k, 1/k; count + 1, age 0); any other item writes a new entry.

        Args: `mu`, `var` `(batch, dim)` (detached here); `labels` `(batch,)`.
        Returns: `(batch,)` the slot each item was written or merged into.
        """
        mu, var = self._as_writes(mu, var)
        labels = self._as_labels(labels, len(mu))
        nearest = self._search_slots((mu, var), 1)[:, 0]
        nearest_labels = self.labels[nearest.clamp_min(0)]
        hits = (nearest != NOT_FOUND) & (nearest_labels == labels)
        merge_slots = torch.where(hits, nearest, NOT_FOUND)
        creator_of = torch.arange(len(labels), device=labels.device)
        return self._commit_batch_((mu, var), labels, merge_slots, creator_of)

    @torch.no_grad()
    def write_support_(
        self, mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Write an N-way K-shot support set: one entry per class, shots merged into it.

        An item whose label already has an entry merges into the nearest such entry
        (looked up before the batch). Otherwise the label's first item in the batch
        creates an entry and its later items merge into it, whatever their nearest.

        Args: `mu`, `var` `(n_way * n_shot, dim)`; `labels` `(n_way * n_shot,)`.
        Returns: `(n_way * n_shot,)` the slot each item was written or merged into.
        """
        mu, var = self._as_writes(mu, var)
        labels = self._as_labels(labels, len(mu))
        merge_slots = self._search_slots((mu, var), 1, labels, same_label=True)[:, 0]
        positions = torch.arange(len(labels), device=labels.device)
        creator_of = positions.clone()
        unseen = positions[merge_slots == NOT_FOUND]
        if len(unseen):
            _, label_group = torch.unique(labels[unseen], return_inverse=True)
            first_item = torch.full(
                (int(label_group.max()) + 1,), len(labels), device=labels.device
            )
            first_item.scatter_reduce_(0, label_group, unseen, reduce="amin")
            creator_of[unseen] = first_item[label_group]
        return self._commit_batch_((mu, var), labels, merge_slots, creator_of)

    # --- SlotMemory hooks -------------------------------------------------------------
    def _lift_query_keys(self, keys: tuple[torch.Tensor, ...]) -> _LiftedQueries:
        lifted = lift_queries(*keys)
        screen = None
        if self.screens_search(len(lifted.features)):
            if self._entry_screen is None:
                self._entry_screen = EntryScreen(self.entry_lift, *self._typical_entries())
            screen = self._entry_screen.queries(lifted.features, lifted.offsets)
        return _LiftedQueries(lifted.features, lifted.offsets, screen)

    def screens_search(self, n_queries: int) -> bool:
        """Whether a search of `n_queries` now runs its product through the bfloat16
        screen."""
        if (self.search_screen == "off" or self.entry_lift.device.type != "cpu"
                or self.entry_lift.dtype != torch.float32):
            return False
        if self.search_screen == "auto" and not (
                _cpu_has_native_bfloat16() and n_queries >= SCREEN_MIN_QUERIES
                # capacity first: a training memory is smaller and skips the slot scan
                and self.capacity >= SCREEN_MIN_SLOTS
                and self._searched_extent() >= SCREEN_MIN_SLOTS):
            return False
        return bool(torch.isfinite(self.entry_offsets).any())   # something to match

    def _typical_entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances of up to `_SCREEN_SAMPLE` matchable entries, evenly spread
        over the slots: what the screen scales its coordinates by."""
        matchable = torch.isfinite(self.entry_offsets).nonzero()[:, 0]
        picks = torch.linspace(0, len(matchable) - 1, min(len(matchable), _SCREEN_SAMPLE))
        slots = matchable[picks.round().long()]
        return self.means[slots], self.variances[slots]

    def _score_block(
        self,
        lifted_queries: _LiftedQueries,
        query_rows: slice,
        slot_rows: slice,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # SKL minus the per-query offset, or the screen's product (`_divergence_floor`
        # reads either); the +inf offsets of empty slots propagate.
        if lifted_queries.screen is None:
            return self._entry_scores(lifted_queries.features[query_rows], slot_rows, out)
        assert self._entry_screen is not None   # built with the queries' screen
        return self._entry_screen.products(lifted_queries.screen, query_rows, slot_rows, out)

    def _entry_scores(self, query_features: torch.Tensor, slot_rows: slice,
                      out: torch.Tensor | None = None) -> torch.Tensor:
        """`(queries, slots)`: each lifted query's inner product with each entry's lift,
        plus the entry's offset (into `out` when given).

        On the CPU the product runs through NumPy's BLAS, which on some processors (AMD's,
        where PyTorch's MKL takes a slower path) multiplies these shapes in well under
        the time, and the offsets ride in it (a 1 appended to each query meets
        `entry_lift`'s offset row), so the scores are written once and never re-read;
        elsewhere through `torch.addmm`.
        """
        if self.entry_lift.device.type != "cpu" or (torch.is_grad_enabled()
                                                    and query_features.requires_grad):
            # NumPy would drop the queries' gradient (`divergences_to_entries` keeps it).
            return torch.addmm(self.entry_offsets[slot_rows], query_features,
                               self.entry_features[:, slot_rows], out=out)
        entries = self.entry_lift[:, slot_rows]
        ones = query_features.new_ones(len(query_features), 1)
        queries = torch.cat([query_features.detach(), ones], 1)
        if out is None:
            out = torch.empty(len(queries), entries.shape[1], dtype=entries.dtype)
        single_blas_thread()
        np.matmul(queries.numpy(), entries.numpy(), out=out.numpy())
        return out

    def _candidate_width(self, k: int, lifted_queries: _LiftedQueries) -> int:
        # One past the re-scored candidates: the first other entry's GEMM score bounds
        # every non-candidate's divergence from below.
        return k + _extra_candidates(lifted_queries, k) + 1

    def _divergence_floor(self, lifted_queries: _LiftedQueries, query_rows: slice,
                          scores: torch.Tensor) -> torch.Tensor:
        """Float64 lower bounds on the divergences behind `_score_block`'s `scores`
        `(rows, columns)` for `query_rows`: the GEMM score plus the query's offset less
        its rounding bound, or the screen's product less its final rounding."""
        if lifted_queries.screen is not None:
            return lower_bound_of(scores)
        bound = self._score_error_bound(lifted_queries, query_rows)
        return scores.double() + (lifted_queries.offsets[query_rows].double() - bound)[:, None]

    def _score_ceiling(self, lifted_queries: _LiftedQueries, query_rows: slice,
                       divergence: torch.Tensor) -> torch.Tensor:
        """`(rows,)` float64: the largest `_score_block` score whose divergence floor is
        at most `divergence` `(rows,)`; an entry scoring above it is farther."""
        if lifted_queries.screen is not None:
            return product_ceiling(divergence)
        bound = self._score_error_bound(lifted_queries, query_rows)
        return divergence - lifted_queries.offsets[query_rows].double() + bound

    def _refine_candidates(
        self,
        keys: tuple[torch.Tensor, ...],
        lifted_queries: _LiftedQueries,
        query_rows: slice,
        scores: torch.Tensor,
        slots: torch.Tensor,
        k: int,
        query_labels: torch.Tensor | None,
        same_label: bool,
        certify: bool,
        excluded: torch.Tensor | None,
    ) -> torch.Tensor:
        """Re-rank the GEMM candidates by their exact float64 divergence, then re-score
        exactly, for every query whose candidates may miss a nearer entry, each entry
        whose score could place it among the k nearest (`_rescore_near`). The bfloat16
        screen's scores are read through their own floor (`_divergence_floor`).

        On an accelerator that second step runs only with `certify` (`query` sets it):
        reading the certificate back would make the host wait for the device on every
        training step, and the exact re-rank of the candidates already corrects the
        GEMM's order in realistic ranges.
        """
        mu, var = (key[query_rows] for key in keys)
        n_candidates = min(slots.shape[1], k + _extra_candidates(lifted_queries, k))
        candidates = slots[:, :n_candidates]
        entry_mu, entry_var = self.entries(candidates)
        exact = symmetric_kl_diag(
            mu[:, None].double(), var[:, None].double(), entry_mu.double(), entry_var.double()
        ).masked_fill(candidates == NOT_FOUND, torch.inf)
        exact, order = torch.sort(exact, dim=1, stable=True)
        best = candidates.gather(1, order)[:, :k]
        if (scores.dtype == torch.float64 or not (certify or self.valid.device.type == "cpu")
                or slots.shape[1] <= n_candidates):
            return best  # float64 is the reference, or every qualifying slot was re-scored
        # The lowest divergence any non-candidate can have.
        floor = self._divergence_floor(lifted_queries, query_rows,
                                       scores[:, n_candidates: n_candidates + 1])[:, 0]
        kth = exact[:, best.shape[1] - 1]
        doubtful = (kth > floor).nonzero()[:, 0]
        if len(doubtful):
            rows = torch.arange(query_rows.start, query_rows.stop, device=slots.device)[doubtful]
            screen = lifted_queries.screen
            doubtful_queries = _LiftedQueries(
                lifted_queries.features[rows], lifted_queries.offsets[rows],
                screen[rows] if screen is not None and self.screens_search(len(rows))
                else None)
            labels = None if query_labels is None else query_labels[doubtful]
            again = self._rescore_near(mu[doubtful], var[doubtful], doubtful_queries,
                                       kth[doubtful], k, labels, same_label,
                                       None if excluded is None else excluded[doubtful])
            best[doubtful] = again[:, : best.shape[1]]
        return best

    def _rescore_near(
        self,
        mu: torch.Tensor,
        var: torch.Tensor,
        lifted_queries: _LiftedQueries,
        kth: torch.Tensor,
        k: int,
        query_labels: torch.Tensor | None,
        same_label: bool,
        excluded: torch.Tensor | None,
    ) -> torch.Tensor:
        """The k nearest qualifying slots `(rows, k)` by exact float64 divergence among
        those whose score for `lifted_queries` could put them within `kth` `(rows,)`
        float64, NOT_FOUND where fewer qualify (`excluded`: as in `_search_slots`, the
        rows' own).

        Near-duplicate entries make the GEMM's ranking uncertain for many queries at
        once; re-scoring only the entries that could win costs a GEMM and a few exact
        divergences, where lifting every entry again in float64 cost several times the
        search itself.
        """
        n_slots = self._searched_extent()
        _, slot_step = self._block_shape(len(mu), n_slots)
        every_row = slice(0, len(mu))
        ceiling = self._score_ceiling(lifted_queries, every_row, kth)
        unscreened = lifted_queries._replace(screen=None)
        unscreened_ceiling = (ceiling if lifted_queries.screen is None
                              else self._score_ceiling(unscreened, every_row, kth))
        block_divergences, block_slots = [], []
        for slot_start in range(0, n_slots, slot_step):
            slot_rows = slice(slot_start, min(slot_start + slot_step, n_slots))
            qualifies = torch.ones((), dtype=torch.bool, device=kth.device)
            if query_labels is not None:
                equal = query_labels[:, None] == self.labels[None, slot_rows]
                qualifies = equal if same_label else ~equal
            if excluded is not None:
                qualifies = qualifies & ~excluded_in_block(excluded, slot_rows,
                                                           slot_rows.stop - slot_rows.start)
            scores = self._score_block(lifted_queries, every_row, slot_rows)
            near = (scores.double() <= ceiling[:, None]) & qualifies
            if (lifted_queries.screen is not None
                    and int(near.sum()) > _SCREEN_MOST_NEAR * len(mu)):
                # The screen's bound is too loose here (say, means far from the origin):
                # float32 scores, whose bound is tighter, keep the exact work small.
                scores = self._entry_scores(unscreened.features, slot_rows)
                near = (scores.double() <= unscreened_ceiling[:, None]) & qualifies
            rows, columns = near.nonzero(as_tuple=True)
            entries = columns + slot_start
            divergence = torch.full(scores.shape, torch.inf, dtype=torch.float64,
                                    device=scores.device)
            divergence[rows, columns] = symmetric_kl_diag(
                mu[rows].double(), var[rows].double(), self.means[entries].double(),
                self.variances[entries].double())
            smallest, columns = smallest_per_row(divergence, k)
            block_divergences.append(smallest)
            block_slots.append(columns + slot_start)
        divergence, order = smallest_per_row(torch.cat(block_divergences, 1), k)
        found = torch.cat(block_slots, 1).gather(1, order)
        return found.masked_fill(divergence == torch.inf, NOT_FOUND)

    def _score_error_bound(
        self, lifted_queries: _LiftedQueries, query_rows: slice
    ) -> torch.Tensor:
        """Bound `(rows,)` float64 on the float32 error of GEMM score plus query offset.

        `lift_rounding_factor` of the terms' magnitudes, whose products' sum
        Cauchy-Schwarz bounds by the product of the rows' norms.
        """
        if self._entry_scale is None:
            self._entry_scale = self._scale_of(None)
        feature_norm, offset_max = self._entry_scale
        query_norm = lifted_queries.features[query_rows].double().norm(dim=1)
        query_offset = lifted_queries.offsets[query_rows].double().abs()
        magnitude = query_norm * feature_norm + query_offset + offset_max + self.dim
        return lift_rounding_factor(self.dim) * magnitude

    def _scale_of(self, slots: torch.Tensor | None) -> tuple[float, float]:
        """Largest feature norm and |offset| among the finite entries at `slots` (None:
        all), in float64; (0, 0) where there are none."""
        rows = slice(None) if slots is None else slots
        offsets = self.entry_offsets[rows]
        finite = self.valid[rows] & torch.isfinite(offsets)
        if not bool(finite.any()):
            return 0.0, 0.0
        squared = squared_column_norms(self.entry_features[:, rows])
        return (float(squared.masked_fill(~finite, 0).max().sqrt()),
                float(offsets.double().abs().masked_fill(~finite, 0).max()))

    def _store_keys_(
        self, slots: torch.Tensor, keys: tuple[torch.Tensor, ...], stores: torch.Tensor
    ) -> None:
        mu, var = keys
        put_rows_(self.means, slots, mu, stores)
        put_rows_(self.variances, slots, clamp_variance(var), stores)

    def _merge_keys_(
        self, slots: torch.Tensor, keys: tuple[torch.Tensor, ...], merges: torch.Tensor
    ) -> None:
        mu, var = keys
        merge_running_(self.means, self.variances, self.counts, slots, mu, var, merges)

    def _empty_slot_values(self) -> dict[str, Any]:
        # entry_lift is by dimension, not by slot: `_keys_changed_` sizes it.
        return {**super()._empty_slot_values(), "means": 0.0, "variances": 1.0}

    def _keys_changed_(self, slots: torch.Tensor | None) -> None:
        rows = slice(None) if slots is None else slots
        lifted = self._finite_lift(self.means[rows], self.variances[rows], self.valid[rows])
        if self.entry_lift.shape[1] != self.capacity:   # grown
            self.entry_lift = self.entry_lift.new_empty((4 * self.dim + 1, self.capacity))
        self.entry_lift[:-1, rows] = lifted.features.T
        self.entry_lift[-1, rows] = lifted.offsets
        self._faiss_index = None
        if self._entry_screen is not None:
            if slots is None:
                self._entry_screen = None   # rebuilt by the next screened search
            else:
                self._entry_screen.update_(slots, self.entry_lift[:, slots])
        if slots is None or self._entry_scale is None or slots.device.type != "cpu":
            self._entry_scale = None
        else:
            # Only the written slots can raise the maxima; a cleared or merged entry that
            # lowers them leaves a larger, still valid, bound. Recomputing over every
            # entry after each write cost as much as the search of a 1e5-entry gallery.
            written = self._scale_of(slots)
            self._entry_scale = (max(self._entry_scale[0], written[0]),
                                 max(self._entry_scale[1], written[1]))

    @staticmethod
    def _finite_lift(
        means: torch.Tensor, variances: torch.Tensor, valid: torch.Tensor
    ) -> LiftedGaussians:
        """The entries' lift with offset +inf and features 0 where the slot is empty or
        its lift is not finite, so such a slot scores +inf (never NaN) against any query."""
        lifted = lift_entries(means, variances)
        finite = torch.isfinite(lifted.features).all(dim=1) & torch.isfinite(lifted.offsets)
        return LiftedGaussians(
            lifted.features.masked_fill(~finite[:, None], 0.0),
            lifted.offsets.masked_fill(~(valid & finite), torch.inf),
        )

    # --- validation -------------------------------------------------------------------
    def _as_queries(self, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mu.ndim != 2 or mu.shape[1] != self.dim or var.shape != mu.shape:
            raise ValueError(
                f"expected mu and var of shape (n, {self.dim}), got {tuple(mu.shape)} and "
                f"{tuple(var.shape)}"
            )
        return mu.to(self.means), var.to(self.means)

    def _as_writes(self, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_as_queries`, refusing non-finite values: one NaN entry would win searches
        and spread NaN through every merge into it."""
        mu, var = self._as_queries(mu, var)
        finite = torch.isfinite(mu).all() & torch.isfinite(var).all()
        message = "memory writes need finite means and variances (got NaN or inf)"
        if mu.device.type == "cpu":
            if not bool(finite):
                raise ValueError(message)
        else:
            # As for labels: checked on the device, failing a later synchronising call.
            torch._assert_async(finite, message)
        return mu, var

    def _as_labels(self, labels: torch.Tensor, n_items: int) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if labels.shape != (n_items,):
            raise ValueError(f"expected labels of shape ({n_items},), got {tuple(labels.shape)}")
        message = f"labels must be >= 0 ({NOT_FOUND} marks empty slots)"
        if labels.device.type == "cpu":
            if n_items and int(labels.min()) < 0:
                raise ValueError(message)
        else:
            # Reading device labels back would make the host wait for the device every
            # step; the check runs on the device and fails a later synchronising call.
            torch._assert_async((labels >= 0).all(), message)
        return labels.to(self.labels.device, torch.int64)

    # --- FAISS backend ----------------------------------------------------------------
    def _faiss_search(self, mu: torch.Tensor, var: torch.Tensor, k: int) -> torch.Tensor:
        """Exact maximum-inner-product search: argmin SKL = argmax <[-lift_a, -1], [lift_b, off_b]>.

        The per-query offset is constant along a row, so dropping it keeps the ranking.
        The flat index holds only valid slots and is rebuilt after any write.
        """
        faiss = _import_faiss()
        if not torch.isfinite(self.entry_offsets).any():
            return torch.full((len(mu), k), NOT_FOUND, dtype=torch.int64)
        if self._faiss_index is None:
            occupied = torch.isfinite(self.entry_offsets).nonzero()[:, 0]
            vectors = self.entry_lift[:, occupied].T
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors.float().contiguous().numpy())
            self._faiss_index, self._faiss_slots = index, occupied
        lifted = lift_queries(mu.detach(), var.detach())
        query_vectors = torch.cat([-lifted.features, -torch.ones_like(lifted.offsets)[:, None]], 1)
        _, found = self._faiss_index.search(query_vectors.float().contiguous().numpy(), k)
        found = torch.from_numpy(found)
        return torch.where(found >= 0, self._faiss_slots[found.clamp_min(0)], NOT_FOUND)

    # --- files ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the memory to a safetensors file atomically (no lift cache: it is derived)."""
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in SLOT_TENSORS}
        tensors["noise_generator_state"] = self._noise_generator.get_state()
        metadata = {
            "format": FILE_FORMAT,
            "capacity": str(self.capacity),
            "dim": str(self.dim),
            "age_noise": repr(self.age_noise),
            "seed": str(self.seed),
        }
        write_bytes_atomic(path, safetensors.torch.save(tensors, metadata=metadata))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], map_location: str | torch.device | None = None
    ) -> GaussianMemory:
        """Read a memory written by `save`, checked before anything is allocated from it
        (see `gaussmem.memory_file`); raises MemoryFileError naming the file."""
        memory_file = read_memory_file(path)
        memory = cls(
            memory_file.capacity,
            memory_file.dim,
            age_noise=memory_file.age_noise,
            dtype=memory_file.tensors["means"].dtype,
            seed=memory_file.seed,
        )
        memory._copy_state_(memory_file.tensors, path)
        return memory if map_location is None else memory.to(map_location)

    @torch.no_grad()
    def restore_(self, path: str | os.PathLike[str]) -> None:
        """Replace this memory's state by a file's; its capacity and dim must match."""
        self._copy_state_(read_memory_file(path).tensors, path)

    def _copy_state_(self, tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
        expected = {
            "means": (self.capacity, self.dim),
            "variances": (self.capacity, self.dim),
            "labels": (self.capacity,),
            "counts": (self.capacity,),
            "ages": (self.capacity,),
            "valid": (self.capacity,),
        }
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise MemoryFileError(
                    f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                    f"this memory needs {shape} (capacity {self.capacity}, dim {self.dim})"
                )
        with torch.no_grad():
            for name in expected:
                getattr(self, name).copy_(tensors[name])
        try:
            self._noise_generator.set_state(tensors["noise_generator_state"])
        except RuntimeError as error:
            raise MemoryFileError(f"{path}: bad age-noise generator state ({error})") from error
        self._keys_changed_(None)


def _extra_candidates(lifted_queries: _LiftedQueries, k: int) -> int:
    """Candidates beyond k that a search re-scores exactly."""
    if lifted_queries.screen is None:
        return _EXTRA_CANDIDATES
    return _SCREEN_EXTRA_CANDIDATES + _SCREEN_EXTRA_PER_K * k


@functools.cache
def _cpu_has_native_bfloat16() -> bool:
    return native_bfloat16("cpu")


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "search_backend='faiss' needs FAISS: pip install 'gaussmem[faiss]' (faiss-cpu)"
        ) from error
    return faiss
