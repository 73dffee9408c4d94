"""A bfloat16 screen for the Gaussian memory's exact search: provable lower bounds on the
symmetric KL from one bfloat16 matrix product.

On a CPU with native bfloat16 (AVX512-BF16 or AMX) a bfloat16 product with float32
accumulation runs several times as fast as the float32 product over the same lift, and
reads half the bytes. Its 8 significant bits cannot rank close entries by themselves,
so the screen makes each score a *lower bound* on the divergence, tight enough to rank
by, and the memory proves its answer from those bounds (`GaussianMemory`'s certified
ranking): candidates are re-scored exactly, and an entry left out cannot be nearer than
its bound. The search returns what the float32 search returns; the screen only changes
how fast.

One product gives the bound directly, with no pass over the scores besides reading them.
Each query's and entry's row holds, besides its lifted features (`gaussmem.gaussian`):
  - both offsets, each split into a bfloat16 head and tail (`_split`), so the product is
    the divergence itself, a number of a few nats, and not the lift's inner product,
    which can be hundreds: the product's single rounding to bfloat16 then moves it by a
    fraction of a nat at most;
  - minus the query's norm times a factor and the entry's norm: the bound on what
    rounding the features to bfloat16 can move the inner product (Cauchy-Schwarz on the
    terms' magnitudes), subtracted inside the product.
Before rounding, the query's coordinates are multiplied and the entry's divided by a
per-coordinate power of two, which leaves every product exact: the lift pairs a query's
large coordinates (inverse variances, mean over variance) with an entry's small ones, so
unscaled the norms' product is many times the terms' magnitudes the rounding is a
fraction of; the scale evens the two sides' typical magnitudes.
"""

from __future__ import annotations

import threading

import torch

from gaussmem.gaussian import (
    lift_entries,
    lift_queries,
    lift_rounding_factor,
    squared_column_norms,
)

#: Unit roundoff of bfloat16 (8 significant bits, round to nearest) and of float32.
_BFLOAT16_ROUNDOFF = 2.0**-8
_FLOAT32_ROUNDOFF = 2.0**-24
#: Added to every bound: products of flushed subnormals, far below a nat's millionth.
_ABSOLUTE_SLACK = 1e-6
#: Slots converted at a time when a screen is built, bounding the temporary copies.
_BUILD_CHUNK = 2**16
#: Columns besides the lifted features: the query offset's head and tail (against 1s),
#: the entry offset's head and tail (1s on the query side), and the rounding bound.
_EXTRA_COLUMNS = 5


class EntryScreen:
    """The entries' rows for the screen's product, slot-major `(capacity, columns)`
    bfloat16 so a block of slots is contiguous, built from the memory's float32 lift.

    Bound. For a query's and an entry's float32 lifts q, e and offsets a, b, the
    divergence D is within `lift_rounding_factor` (T + |a| + |b| + dim) of q.e + a + b,
    with T >= sum |q_i e_i| (the float32 search's own bound, `gaussmem.gaussian`).
    Rounding q and e to bfloat16 moves q.e by at most (2u + u^2) T, and the float32
    accumulation of the product's n terms at most gamma_n of their magnitudes' sum. The
    bound column subtracts `factor` * |q~| |e~| (the rescaled rows' norms, so T), and
    the offsets enter lowered by their own share of the error, so the product, before
    its final rounding, is at most D. `lower_bound_of` accounts for that rounding.
    """

    def __init__(self, entry_lift: torch.Tensor, sample_means: torch.Tensor,
                 sample_variances: torch.Tensor) -> None:
        """`entry_lift`: the memory's float32 lift `(4 * dim + 1, capacity)` (features
        by dimension, offsets last, +inf where a slot cannot match); `sample_means`,
        `sample_variances` `(n, dim)`, n >= 1: entries standing for the typical query
        and entry when choosing the per-coordinate scale."""
        n_features, capacity = entry_lift.shape
        self.dim = (n_features - 1) // 4
        self.columns = n_features - 1 + _EXTRA_COLUMNS
        entry_side = _typical_magnitudes(lift_entries(sample_means, sample_variances).features)
        query_side = _typical_magnitudes(lift_queries(sample_means, sample_variances).features)
        ratio = (entry_side / query_side).clamp(2.0**-40, 2.0**40)
        # sqrt(ratio) evens the two sides; a power of two keeps every product exact.
        self.scale = torch.exp2(torch.round(0.5 * torch.log2(ratio))).float()
        u, eps = _BFLOAT16_ROUNDOFF, _FLOAT32_ROUNDOFF
        gamma = self.columns * eps / (1 - self.columns * eps)
        lift_error = lift_rounding_factor(self.dim)
        #: Multiplies |q~| |e~| in the bound column; divided by (1 - u)^2 (1 - gamma)
        #: because the column's own two factors are rounded and summed with the rest.
        self.factor = ((lift_error + 2 * u + u * u + 2 * gamma)
                       / ((1 - u) ** 2 * (1 - gamma)))
        #: Lowers each side's offset x by this much of |x| + dim / 2 (the lift's own
        #: error, the accumulation's share of the offsets, the head-tail split).
        self.offset_share = lift_error + 2 * gamma + 2 * u * u
        self.rows = torch.empty(capacity, self.columns, dtype=torch.bfloat16)
        # Per thread, so that searches from several threads never share a buffer.
        self._local = threading.local()
        for start in range(0, capacity, _BUILD_CHUNK):
            chunk = slice(start, min(start + _BUILD_CHUNK, capacity))
            self.update_(chunk, entry_lift[:, chunk])

    def update_(self, slots: torch.Tensor | slice, lift_columns: torch.Tensor) -> None:
        """Refresh `slots` from the memory's float32 lift of those slots
        `(4 * dim + 1, n)`."""
        features = lift_columns[:-1].T / self.scale   # exact: the scale is a power of two
        rows = torch.empty(features.shape[0], self.columns, dtype=torch.bfloat16)
        rows[:, : 4 * self.dim] = features
        rows[:, 4 * self.dim: 4 * self.dim + 2] = 1.0
        head, tail = _split(self._lowered(lift_columns[-1].double()))
        rows[:, 4 * self.dim + 2] = head
        rows[:, 4 * self.dim + 3] = tail
        rows[:, -1] = _rounded_up_norm(features)
        # A feature too large for float32 once rescaled, or for bfloat16, would make
        # inf - inf in the product: such an entry's bound becomes -inf instead, so it
        # is always a candidate and scored exactly.
        overflowed = ~torch.isfinite(rows[:, : 4 * self.dim]).all(dim=1)
        rows[overflowed, : 4 * self.dim] = 0.0
        rows[overflowed, -1] = torch.inf
        self.rows[slots] = rows

    def queries(self, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor | None:
        """The screen rows `(n, columns)` bfloat16 of lifted queries: float32 `features`
        `(n, 4 * dim)` and `offsets` `(n,)`; None where some query's row is not finite in
        bfloat16 (the search then multiplies in float32)."""
        scaled = features.detach() * self.scale
        rows = torch.empty(len(scaled), self.columns, dtype=torch.bfloat16)
        rows[:, : 4 * self.dim] = scaled
        head, tail = _split(self._lowered(offsets.detach().double()))
        rows[:, 4 * self.dim] = head
        rows[:, 4 * self.dim + 1] = tail
        rows[:, 4 * self.dim + 2: 4 * self.dim + 4] = 1.0
        rows[:, -1] = -self.factor * _rounded_up_norm(scaled)
        return rows if bool(torch.isfinite(rows).all()) else None

    def products(self, queries: torch.Tensor, query_rows: slice, slot_rows: slice,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """`(queries, slots)` float32: the product of the `queries`' screen rows with the
        entries', at most each pair's divergence once `lower_bound_of` has undone its
        final rounding (+inf at slots that cannot match); into `out` when given."""
        query_block, slot_block = queries[query_rows], self.rows[slot_rows]
        size = len(query_block) * len(slot_block)
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or scratch.numel() < size:
            # Kept between blocks: a fresh output per block page-faults.
            scratch = self._local.scratch = torch.empty(size, dtype=torch.bfloat16)
        product = scratch[:size].view(len(query_block), len(slot_block))
        torch.mm(query_block, slot_block.T, out=product)
        if out is None:
            return product.float()
        return out.copy_(product)

    def _lowered(self, offsets: torch.Tensor) -> torch.Tensor:
        """Float64 `offsets` less their share of the error; +inf (a slot that cannot
        match) stays +inf."""
        lowered = offsets - self.offset_share * (offsets.abs() + self.dim / 2)
        return torch.where(torch.isinf(offsets), offsets, lowered)


def lower_bound_of(products: torch.Tensor) -> torch.Tensor:
    """Float64 lower bounds on the divergences behind the screen's `products` (any
    shape): the product was rounded once to bfloat16, by at most u of its value."""
    products = products.double()
    u = _BFLOAT16_ROUNDOFF
    lowered = products - products.abs() * (u / (1 - u)) - _ABSOLUTE_SLACK
    return torch.where(torch.isinf(products), products, lowered)


def product_ceiling(divergence: torch.Tensor) -> torch.Tensor:
    """The largest screen product whose `lower_bound_of` is at most `divergence`
    (float64, >= 0): an entry whose product exceeds it is farther than `divergence`."""
    u = _BFLOAT16_ROUNDOFF
    return (divergence + _ABSOLUTE_SLACK) * ((1 - u) / (1 - 2 * u))


def _typical_magnitudes(features: torch.Tensor) -> torch.Tensor:
    """Root mean square of each column of `features` `(n, columns)`, float64, floored
    so that a column that is 0 throughout (every mean 0) gets a ratio instead of 0 / 0."""
    return features.double().square().mean(dim=0).sqrt().clamp_min(1e-30)


def _split(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 `values` as bfloat16 head plus tail (each returned in float64), whose sum
    is within u^2 of the value. An infinite head (+inf for a slot that cannot match, or
    a value past bfloat16's range, where the float32 product overflows too) gets a tail
    of 0, never an infinity of the other sign."""
    head = values.to(torch.bfloat16).double()
    tail = torch.where(torch.isinf(head), 0.0, values - head)
    return head, tail.to(torch.bfloat16).double()


def _rounded_up_norm(rows: torch.Tensor) -> torch.Tensor:
    """Float64 Euclidean norms of float32 `rows` `(n, columns)`, nudged up past their
    rounding."""
    return squared_column_norms(rows.T).sqrt_() * (1 + 2.0**-40)
