"""Algebra of diagonal Gaussians given as (mean, variance) tensor pairs.

Every function takes means and variances of shape `(..., dim)` (variances, not
log-variances or standard deviations) and works in the input's dtype: float32 by default,
float64 supported.

Numerics live in one place: `clamp_variance` and the bounds `MIN_VARIANCE`,
`MAX_VARIANCE`. Every public function clamps its variances through it, so divergences
stay finite for log-variances anywhere in [-30, 30] and means up to 1e3 in float32:
the largest intermediate is about (MAX_VARIANCE + mean**2) / MIN_VARIANCE ~ 1e12, far
from float32's 3e38, and no variance reaches zero.

The paper (Tseran & Harada 2017, section 3.1) ranks memory entries by the symmetric KL
divergence and maps it to a similarity exp(-SKL) in [0, 1] (eq. 1). Ranking always uses
the divergence: exp(-SKL) underflows to 0 for SKL > ~104 in float32, which would make
every distant entry tie.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Smallest variance any function here uses. Below it 1 / variance and mean**2 / variance
#: grow past what float32 sums over 64 dimensions without losing every digit.
MIN_VARIANCE = 1e-6
#: Largest variance any function here uses (mirrors MIN_VARIANCE: var_a / var_b <= 1e12).
MAX_VARIANCE = 1e6


def clamp_variance(variance: torch.Tensor) -> torch.Tensor:
    """Clamp variances to [MIN_VARIANCE, MAX_VARIANCE]; the single floor used everywhere.

    Differentiable inside the range (the gradient is zero where the clamp binds).
    """
    return variance.clamp(MIN_VARIANCE, MAX_VARIANCE)


def kl_diag(
    mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) between diagonal Gaussians, summed over the last dimension.

    Args: means and variances of shape `(..., dim)`; leading dimensions broadcast.
    Returns: `(...)`, in nats.

    KL = 0.5 * sum[log(var_q / var_p) + (var_p + (mu_p - mu_q)**2) / var_q - 1].
    """
    var_p, var_q = clamp_variance(var_p), clamp_variance(var_q)
    per_dim = torch.log(var_q) - torch.log(var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1
    return 0.5 * per_dim.sum(dim=-1)


def symmetric_kl_diag(
    mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) + KL(q || p) between diagonal Gaussians, summed over the last dimension.

    Args: means and variances of shape `(..., dim)`; leading dimensions broadcast (the
    triplet loss pairs `(n, dim)` queries with `(n, dim)` detached memory entries).
    Returns: `(...)`, in nats, >= 0; differentiable in every argument.

    The log terms of the two KLs cancel, leaving
    0.5 * sum[var_p/var_q + var_q/var_p - 2 + (mu_p - mu_q)**2 (1/var_p + 1/var_q)].
    It is evaluated as a sum of non-negative terms, using
    var_p/var_q + var_q/var_p - 2 = ((var_p - var_q)/var_p) * ((var_p - var_q)/var_q),
    so identical Gaussians give exactly 0 and nothing cancels.
    """
    var_p, var_q = clamp_variance(var_p), clamp_variance(var_q)
    variance_gap = var_p - var_q
    squared_mean_gap = (mu_p - mu_q) ** 2
    per_dim = (variance_gap / var_p) * (variance_gap / var_q) + squared_mean_gap * (
        1 / var_p + 1 / var_q
    )
    return 0.5 * per_dim.sum(dim=-1)


class LiftedGaussians(NamedTuple):
    """Per-side features whose inner products give the pairwise symmetric KL.

    `features`: `(count, 4 * dim)`; `offsets`: `(count,)`. For queries `a` lifted with
    `lift_queries` and entries `b` lifted with `lift_entries`,
    SKL(a_i, b_j) = features_a[i] . features_b[j] + offsets_a[i] + offsets_b[j].
    """

    features: torch.Tensor
    offsets: torch.Tensor


def lift_queries(mu: torch.Tensor, var: torch.Tensor) -> LiftedGaussians:
    """Query-side lift `[var + mu**2, 1/var, mu, mu/var]` of `(count, dim)` Gaussians.

    See `pairwise_symmetric_kl` for the derivation; offsets are 0.5 * sum(mu**2/var) - dim/2.
    """
    var = clamp_variance(var)
    inverse = 1 / var
    features = torch.cat([var + mu**2, inverse, mu, mu * inverse], dim=-1)
    return LiftedGaussians(features, _lift_offsets(mu, inverse))


def lift_entries(mu: torch.Tensor, var: torch.Tensor) -> LiftedGaussians:
    """Entry-side lift `0.5 * [1/var, var + mu**2, -2 mu/var, -2 mu]` of `(count, dim)`.

    The factor 0.5 of the symmetric KL is folded in here so a search is one GEMM and
    one add. The memory caches this lift; offsets are 0.5 * sum(mu**2/var) - dim/2.
    """
    var = clamp_variance(var)
    inverse = 1 / var
    features = torch.cat([0.5 * inverse, 0.5 * (var + mu**2), -mu * inverse, -mu], dim=-1)
    return LiftedGaussians(features, _lift_offsets(mu, inverse))


def _lift_offsets(mu: torch.Tensor, inverse_var: torch.Tensor) -> torch.Tensor:
    """0.5 * sum(mu**2 / var) - dim / 2: one side's share of the GEMM form's constants."""
    return 0.5 * (mu * mu * inverse_var).sum(dim=-1) - 0.5 * mu.shape[-1]


def lift_rounding_factor(dim: int) -> float:
    """Bound on the float32 error of a lifted score (inner product plus both offsets)
    against the exact divergence, as a multiple of the terms' magnitudes
    (sum |q_i e_i| + |offsets| + dim): each lifted feature and offset carries a few
    roundings, and the sum of 4 dim products and the offsets at most 4 dim + 1 more
    (Higham's gamma_n)."""
    return (5 * dim + 16) * 2.0**-24


def squared_column_norms(by_feature: torch.Tensor) -> torch.Tensor:
    """Float64 squared Euclidean norms `(n,)` of the columns of `by_feature`
    `(features, n)`, one feature at a time: float32 squares can overflow, and a float64
    norm down the columns of a by-feature layout took ten times as long."""
    squared = torch.zeros(by_feature.shape[1], dtype=torch.float64, device=by_feature.device)
    for feature in by_feature:
        feature = feature.double()
        squared.addcmul_(feature, feature)
    return squared


def pairwise_symmetric_kl(
    mu_a: torch.Tensor,
    var_a: torch.Tensor,
    mu_b: torch.Tensor,
    var_b: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Symmetric KL between every query `(n, dim)` and every entry `(m, dim)`: `(n, m)`.

    Derivation. Per dimension, the log terms of KL(a||b) + KL(b||a) cancel:
        SKL = 0.5 * sum_j [va/vb + vb/va + (ma - mb)**2 (1/va + 1/vb)] - dim.
    Expanding (ma - mb)**2 = ma**2 - 2 ma mb + mb**2 and grouping by side:
        va/vb + ma**2/vb     = (va + ma**2) * (1/vb)
        vb/va + mb**2/va     = (1/va) * (vb + mb**2)
        -2 ma mb / vb        = ma * (-2 mb/vb)
        -2 ma mb / va        = (ma/va) * (-2 mb)
        ma**2/va, mb**2/vb   : one side only
    so SKL(a, b) = <lift_a, lift_b> + row(a) + col(b) with the 4*dim lifts of
    `lift_queries` / `lift_entries` and row, col = 0.5 * sum(m**2/v) - dim/2. That is ONE
    `(n, 4d) @ (4d, m)` GEMM instead of an `(n, m, dim)` broadcast.

    Accuracy. The GEMM subtracts terms of size ~ sum(m**2/v + v/v') to produce a
    divergence that can be much smaller, so in float32 its absolute error grows with
    that size (about 1e-6 of sum |lift_a| * |lift_b| for |mu| <= 5, log-variance in
    [-5, 5], dim 64; see tests). Results are clamped to >= 0. Use `symmetric_kl_diag`
    where a few accurate values are needed; the memory re-scores its top-k with it.

    Args:
        chunk_size: queries per GEMM, to bound the temporary `(chunk_size, m)` block.
    Returns: `(n, m)` divergences in the inputs' dtype.
    """
    queries = lift_queries(mu_a, var_a)
    entries = lift_entries(mu_b, var_b)
    chunk_size = chunk_size or max(1, mu_a.shape[0])
    blocks = [
        torch.addmm(entries.offsets, query_block, entries.features.T)
        .add_(query_offsets[:, None])
        .clamp_min_(0)
        for query_block, query_offsets in zip(
            queries.features.split(chunk_size), queries.offsets.split(chunk_size), strict=True
        )
    ]
    if not blocks:
        return mu_a.new_zeros(0, mu_b.shape[0])
    return torch.cat(blocks)


def similarity_from_divergence(divergence: torch.Tensor) -> torch.Tensor:
    """Paper eq. 1: similarity = exp(-SKL), in [0, 1]; +inf divergence gives 0."""
    return torch.exp(-divergence)


def moment_match_merge(
    mu_1: torch.Tensor,
    var_1: torch.Tensor,
    mu_2: torch.Tensor,
    var_2: torch.Tensor,
    weight_1: torch.Tensor | float,
    weight_2: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moment-matched Gaussian of the mixture w1 N(mu1, var1) + w2 N(mu2, var2).

    Runnalls (2007), with the covariance's outer product kept diagonal as in the paper:
    mu = w1 mu1 + w2 mu2, var = w1 var1 + w2 var2 + w1 w2 (mu1 - mu2)**2 (w1 + w2 = 1).
    This minimises KL(mixture || merged) over Gaussians. Shapes `(..., dim)`; tensor
    weights broadcast against them (give per-row weights shape `(..., 1)`).
    """
    mean = weight_1 * mu_1 + weight_2 * mu_2
    variance = weight_1 * var_1 + weight_2 * var_2 + weight_1 * weight_2 * (mu_1 - mu_2) ** 2
    return mean, clamp_variance(variance)


def shot_weights(count: torch.Tensor | int) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The paper's merge weights w1 = (k - 1) / k, w2 = 1 / k.

    `count` is k, the entry's number of samples INCLUDING the one being merged, so
    merging the k-th sample keeps the entry the running average of all k.
    """
    return (count - 1) / count, 1 / count


def merge_running_(
    means: torch.Tensor,
    variances: torch.Tensor,
    counts: torch.Tensor,
    slots: torch.Tensor,
    item_means: torch.Tensor,
    item_variances: torch.Tensor,
    merges: torch.Tensor | None = None,
) -> None:
    """Merge items into entries in place, as sequential `shot_weights` merges would.

    Args:
        means, variances: `(capacity, dim)` entries; updated in place at `slots`.
        counts: `(capacity,)` samples per entry BEFORE this call; not modified.
        slots: `(r,)` target entry of each item; repeats allowed.
        item_means, item_variances: `(r, dim)` items.
        merges: `(r,)` bool, which items merge (None: all); an entry no item merges into
            keeps its values bit for bit.

    Why one pooled step equals the sequence: merging with w = (k-1)/k, 1/k keeps the
    entry's mean and second moment (var + mu**2) the running average of all samples, so
    the result does not depend on merge order. We compute it in the pooled-variance form
    var = sum_s w_s [var_s + (mu_s - mean)**2], a sum of non-negative terms, rather than
    as second moment minus mean**2, which cancels catastrophically when |mu| >> std.

    Every shape is fixed by `r` (items are grouped by sorting their slots, not with
    `unique`), so on an accelerator the merge never waits for the device.
    """
    group, group_slot = _group_by_slot(slots)
    weight = (torch.ones_like(slots) if merges is None else merges).to(means.dtype)[:, None]
    item_means = item_means.to(means.dtype)
    item_variances = clamp_variance(item_variances.to(means.dtype))
    old_means, old_variances = means[group_slot], variances[group_slot]
    old_weight = counts[group_slot].to(means.dtype)[:, None]
    added = torch.zeros_like(old_weight).index_add_(0, group, weight)
    total = old_weight + added

    merged_mean = (old_means * old_weight).index_add_(0, group, item_means * weight) / total
    spread = (old_variances + (old_means - merged_mean) ** 2) * old_weight
    spread.index_add_(0, group, (item_variances + (item_means - merged_mean[group]) ** 2)
                      * weight)
    merged = added > 0
    merged_mean = torch.where(merged, merged_mean, old_means)
    merged_variance = torch.where(merged, clamp_variance(spread / total), old_variances)
    # Items of one group write the same row, so repeated slots are harmless.
    means.index_put_((slots,), merged_mean[group])
    variances.index_put_((slots,), merged_variance[group])


def _group_by_slot(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(group (r,), group_slot (r,))`: items with equal slots share a group index in
    [0, r), numbered by slot; `group_slot[g]` is group g's slot (0 past the last group).
    Sorting instead of `torch.unique` keeps every shape `(r,)`."""
    order = torch.sort(slots, stable=True)
    starts = torch.ones_like(slots, dtype=torch.bool)
    starts[1:] = order.values[1:] != order.values[:-1]
    group = torch.empty_like(slots).scatter_(0, order.indices, starts.cumsum(0) - 1)
    group_slot = torch.zeros_like(slots).index_put_((group,), slots)
    return group, group_slot
