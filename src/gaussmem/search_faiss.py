"""Nearest diagonal Gaussians by symmetric KL in a FAISS index: a gallery of millions.

`gaussian.pairwise_symmetric_kl` writes the divergence as an inner product of lifted
vectors plus one constant per query and one per entry:
SKL(a, b) = lift_queries(a) . lift_entries(b) + offset(a) + offset(b). Appending the
entry's offset to its lift and -1 to the negated query lift turns "smallest SKL" into
"largest inner product" over 4 * dim + 1 numbers, where the query's own offset, equal
along its row, drops out of the ranking:

    SKL(a, b) = offset(a) - [-lift(a), -1] . [lift(b), offset(b)]

so any maximum-inner-product index finds the nearest entries. Two kinds:

* "flat": `IndexFlatIP`, exact (up to float32 rounding of the inner products);
* "ivf": `IndexIVFFlat` over the same vectors, approximate: the entries are split
  into `n_lists` lists around centroid Gaussians (k-means under symmetric KL), and a
  query scans the `nprobe` lists whose centroids are nearest to it by symmetric KL,
  which is again an inner product with the centroids' lifts.

Either kind returns `candidates` entries per query, whose divergences are recomputed
exactly in float64 from the stored means and variances (`symmetric_kl_diag`) and
re-sorted: the float32 inner product subtracts large terms and can misorder close
entries, and the re-ranking both orders them and reports true divergences.

FAISS is optional (`pip install 'gaussmem[faiss]'`) and imported only when an index is
built; the library's default search stays the exact torch GEMM of `GaussianMemory`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from gaussmem.errors import GallerySearchError
from gaussmem.gaussian import lift_entries, lift_queries, symmetric_kl_diag

IndexKind = Literal["flat", "ivf"]
#: Id and label of a result slot that no entry fills (fewer entries than asked for).
NOT_FOUND = -1
#: k-means training points per IVF list (FAISS's own k-means warns below 39).
TRAINING_POINTS_PER_LIST = 64
#: Lloyd steps of the IVF centroids.
KMEANS_ITERATIONS = 8
#: Query rows from which exhaustive FAISS searches use BLAS (FAISS's long-time default;
#: recent faiss-cpu wheels ship 128,000, which sends batches of a few hundred queries
#: to a far slower scalar loop).
BLAS_THRESHOLD = 20


class GallerySearchResult(NamedTuple):
    """The `k` nearest entries per query, nearest first, each `(n_queries, k)`:
    `divergences` float64 symmetric KL (+inf where NOT_FOUND), `labels` and `ids`
    int64 (ids count entries in the order they were added)."""

    divergences: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor


def import_faiss() -> Any:
    """The `faiss` module, or a GallerySearchError that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise GallerySearchError("the FAISS gallery search needs FAISS: pip install "
                                 "'gaussmem[faiss]' (faiss-cpu)") from None
    return faiss


#: Rows lifted at a time (in float64, then stored as float32), bounding the temporaries.
LIFT_CHUNK = 65536


@contextmanager
def blas_for_small_batches(faiss: Any) -> Iterator[None]:
    """Within the block, exhaustive searches of >= BLAS_THRESHOLD queries use BLAS; the
    process-wide setting is restored after it."""
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = min(before, BLAS_THRESHOLD)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def entry_vectors(means: torch.Tensor, variances: torch.Tensor) -> np.ndarray:
    """`(n, 4 * dim + 1)` float32 `[lift_entries, offset]` of `(n, dim)` Gaussians."""
    vectors = np.empty((len(means), 4 * means.shape[1] + 1), dtype=np.float32)
    for start in range(0, len(means), LIFT_CHUNK):
        rows = slice(start, start + LIFT_CHUNK)
        lifted = lift_entries(means[rows].double(), variances[rows].double())
        vectors[rows, :-1] = lifted.features.numpy()
        vectors[rows, -1] = lifted.offsets.numpy()
    return vectors


def query_vectors(means: torch.Tensor, variances: torch.Tensor) -> np.ndarray:
    """`(n, 4 * dim + 1)` float32 `[-lift_queries, -1]`: inner products with
    `entry_vectors` are offset(query) - SKL."""
    lifted = lift_queries(means.double(), variances.double())
    return torch.cat([-lifted.features, -torch.ones_like(lifted.offsets)[:, None]],
                     1).float().numpy()


class LiftedGaussianIndex:
    """A FAISS index of diagonal Gaussians `(dim,)` searched by symmetric KL.

    Args:
        dim: the Gaussians' dimension (the model's content_dim).
        kind: "flat" (exact) or "ivf" (inverted lists; trained on the first `add`,
            which must then hold at least `n_lists` entries).
        n_lists: IVF lists; None takes sqrt(entries of the first add).
        nprobe: IVF lists scanned per query (more: slower, higher recall).
        candidates: entries per query re-ranked exactly (at least the search's k).
        threads: FAISS OpenMP threads (None: FAISS's default).

    `add` keeps float32 copies of the means and variances for the re-ranking:
    8 * dim bytes per entry beside the index's 4 * (4 * dim + 1).
    """

    def __init__(self, dim: int, *, kind: IndexKind = "flat", n_lists: int | None = None,
                 nprobe: int = 16, candidates: int = 32, threads: int | None = None) -> None:
        if dim < 1:
            raise GallerySearchError(f"dim must be >= 1, got {dim}")
        if kind not in ("flat", "ivf"):
            raise GallerySearchError(f"index kind must be 'flat' or 'ivf', got {kind!r}")
        for name, value in (("nprobe", nprobe), ("candidates", candidates)):
            if value < 1:
                raise GallerySearchError(f"{name} must be >= 1, got {value}")
        self.faiss = import_faiss()
        if threads is not None:
            self.faiss.omp_set_num_threads(threads)
        self.dim, self.kind, self.n_lists = dim, kind, n_lists
        self.nprobe, self.candidates = nprobe, candidates
        self.index: Any = (self.faiss.IndexFlatIP(4 * dim + 1) if kind == "flat" else None)
        self._quantizer: Any = None  # the IVF's; FAISS does not own it
        self._means: list[torch.Tensor] = []
        self._variances: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._stored: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def add(self, means: torch.Tensor, variances: torch.Tensor, labels: torch.Tensor) -> None:
        """Append entries `means`, `variances` `(n, dim)` with `labels (n,)` int64; their
        ids continue from `len(self)`."""
        means, variances, labels = self._checked(means, variances, labels)
        vectors = entry_vectors(means, variances)
        if self.kind == "ivf":
            with blas_for_small_batches(self.faiss):
                self._add_ivf(means, variances, vectors)
        else:
            self.index.add(vectors)
        self._means.append(means.float())
        self._variances.append(variances.float())
        self._labels.append(labels.to(torch.int64))
        self._stored = None

    def search(self, means: torch.Tensor, variances: torch.Tensor, k: int = 1
               ) -> GallerySearchResult:
        """The `k` entries of smallest symmetric KL to each query `(n, dim)`, re-ranked
        exactly among `max(k, candidates)` found by the index; see GallerySearchResult."""
        if k < 1:
            raise GallerySearchError(f"k must be >= 1, got {k}")
        means, variances, _ = self._checked(means, variances, None)
        n_queries = len(means)
        if len(self) == 0:
            return GallerySearchResult(torch.full((n_queries, k), math.inf, dtype=torch.float64),
                                       torch.full((n_queries, k), NOT_FOUND),
                                       torch.full((n_queries, k), NOT_FOUND))
        vectors = query_vectors(means, variances)
        if self.kind == "ivf":
            self.index.nprobe = self.nprobe
        with blas_for_small_batches(self.faiss):
            _, found = self.index.search(vectors, min(max(k, self.candidates), len(self)))
        return self._reranked(means, variances, torch.from_numpy(found), k)

    def _reranked(self, means: torch.Tensor, variances: torch.Tensor, found: torch.Tensor,
                  k: int) -> GallerySearchResult:
        """Exact float64 divergences of the candidates `found (n, c)` (-1: none), the `k`
        smallest first, padded with NOT_FOUND / +inf."""
        entry_means, entry_variances, entry_labels = self._entries()
        valid = found >= 0
        rows = found.clamp_min(0)
        divergences = symmetric_kl_diag(means.double()[:, None], variances.double()[:, None],
                                        entry_means[rows].double(),
                                        entry_variances[rows].double())
        divergences = divergences.masked_fill(~valid, math.inf)
        if found.shape[1] < k:
            pad = k - found.shape[1]
            divergences = torch.cat([divergences, divergences.new_full((len(found), pad),
                                                                        math.inf)], 1)
            found = torch.cat([found, found.new_full((len(found), pad), NOT_FOUND)], 1)
            valid = found >= 0
        order = divergences.argsort(dim=1, stable=True)[:, :k]
        ids = torch.where(valid, found, NOT_FOUND).gather(1, order)
        labels = torch.where(ids >= 0, entry_labels[ids.clamp_min(0)], NOT_FOUND)
        return GallerySearchResult(divergences.gather(1, order), labels, ids)

    def _entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._stored is None:
            self._stored = (torch.cat(self._means), torch.cat(self._variances),
                            torch.cat(self._labels))
            self._means, self._variances, self._labels = ([self._stored[0]], [self._stored[1]],
                                                          [self._stored[2]])
        return self._stored

    def _add_ivf(self, means: torch.Tensor, variances: torch.Tensor,
                 vectors: np.ndarray) -> None:
        """Add to the IVF index, building it on the first call; each entry goes to the
        list of the centroid Gaussian of smallest symmetric KL, the same rule that picks
        the lists a query probes."""
        if self.index is None:
            self.index = self._trained_ivf(means, variances)
        assignment = np.concatenate([
            self.index.quantizer.search(query_vectors(means[rows], variances[rows]), 1)[1][:, 0]
            for rows in (slice(start, start + LIFT_CHUNK)
                         for start in range(0, len(means), LIFT_CHUNK))])
        self.index.add_core(len(vectors), self.faiss.swig_ptr(vectors), None,
                            self.faiss.swig_ptr(assignment))

    def _trained_ivf(self, means: torch.Tensor, variances: torch.Tensor) -> Any:
        """An `IndexIVFFlat` over the lift whose quantizer holds the lifted centroid
        Gaussians, so probing ranks lists by the symmetric KL to their centroid.

        Centroids: k-means under symmetric KL on a sample of the first add (Lloyd steps:
        assign each point to its nearest centroid through the quantizer, then move each
        centroid to its points, `_centroids`; an empty list keeps its centroid).
        Clustering the lifted vectors by Euclidean distance instead (the usual
        inner-product-to-L2 reduction) left the nearest entry outside the probed lists
        for most queries.
        """
        n_lists = self.n_lists or max(1, int(math.sqrt(len(means))))
        if len(means) < n_lists:
            raise GallerySearchError(f"an IVF index with {n_lists} lists is trained on its "
                                     f"first add, which holds only {len(means)} entries")
        faiss = self.faiss
        rng = np.random.default_rng(0)
        sample = torch.from_numpy(np.sort(rng.choice(
            len(means), min(len(means), TRAINING_POINTS_PER_LIST * n_lists), replace=False)))
        points_mean, points_var = means[sample].double(), variances[sample].double()
        first = torch.from_numpy(rng.choice(len(sample), n_lists, replace=False))
        centroid_mean, centroid_var = points_mean[first].clone(), points_var[first].clone()
        lifted_points = query_vectors(points_mean, points_var)
        for _ in range(KMEANS_ITERATIONS):
            quantizer = faiss.IndexFlatIP(lifted_points.shape[1])
            quantizer.add(entry_vectors(centroid_mean, centroid_var))
            _, nearest = quantizer.search(lifted_points, 1)
            centroid_mean, centroid_var = _centroids(
                points_mean, points_var, torch.from_numpy(nearest[:, 0]), centroid_mean,
                centroid_var)
        quantizer = faiss.IndexFlatIP(lifted_points.shape[1])
        quantizer.add(entry_vectors(centroid_mean, centroid_var))
        index = faiss.IndexIVFFlat(quantizer, quantizer.d, n_lists, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True
        self._quantizer = quantizer
        self.n_lists = n_lists
        return index

    def _checked(self, means: torch.Tensor, variances: torch.Tensor,
                 labels: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        means, variances = torch.as_tensor(means).cpu(), torch.as_tensor(variances).cpu()
        if means.ndim != 2 or means.shape[1] != self.dim or variances.shape != means.shape:
            raise GallerySearchError(f"expected means and variances of shape (n, {self.dim}),"
                                     f" got {tuple(means.shape)} and {tuple(variances.shape)}")
        if not (torch.isfinite(means).all() and torch.isfinite(variances).all()):
            raise GallerySearchError("means and variances must be finite (got NaN or inf)")
        if labels is not None:
            labels = torch.as_tensor(labels).cpu()
            if labels.shape != (len(means),):
                raise GallerySearchError(f"expected labels of shape ({len(means)},), got "
                                         f"{tuple(labels.shape)}")
        return means, variances, labels


def _centroids(means: torch.Tensor, variances: torch.Tensor, assignment: torch.Tensor,
               centroid_means: torch.Tensor, centroid_variances: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each centroid replaced by the mean of the means and the geometric mean of the
    variances of the points `(n, dim)` assigned to it (`assignment (n,)`); centroids
    without points are kept. Not the moment-matched Gaussian: its variance grows with
    the spread of its points, and under symmetric KL such a broad centroid is near
    everything, so a few lists swallowed most entries."""
    counts = torch.zeros(len(centroid_means), dtype=means.dtype).index_add_(
        0, assignment, torch.ones(len(means), dtype=means.dtype))
    total = counts.clamp_min(1)[:, None]
    mean = torch.zeros_like(centroid_means).index_add_(0, assignment, means) / total
    log_variance = torch.zeros_like(centroid_variances).index_add_(
        0, assignment, variances.log()) / total
    used = counts[:, None] > 0
    return (torch.where(used, mean, centroid_means),
            torch.where(used, log_variance.exp(), centroid_variances))
