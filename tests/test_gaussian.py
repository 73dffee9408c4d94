"""Gaussian algebra: formulas against torch.distributions and a float64 brute-force oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from gaussmem.gaussian import (
    MAX_VARIANCE,
    MIN_VARIANCE,
    clamp_variance,
    kl_diag,
    lift_entries,
    lift_queries,
    merge_running_,
    moment_match_merge,
    pairwise_symmetric_kl,
    shot_weights,
    similarity_from_divergence,
    symmetric_kl_diag,
)


def random_gaussians(
    count: int, dim: int, *, seed: int, mean_scale: float = 2.0, log_var_range: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mu = mean_scale * (2 * torch.rand(count, dim, generator=generator, dtype=torch.float64) - 1)
    log_var = log_var_range * (2 * torch.rand(count, dim, generator=generator) - 1)
    return mu, log_var.double().exp()


def oracle_pairwise_skl(
    mu_a: torch.Tensor, var_a: torch.Tensor, mu_b: torch.Tensor, var_b: torch.Tensor
) -> torch.Tensor:
    """Brute-force float64 double loop over pairs and dimensions, from the KL definition."""
    divergence = torch.zeros(len(mu_a), len(mu_b), dtype=torch.float64)
    for i in range(len(mu_a)):
        for j in range(len(mu_b)):
            total = 0.0
            for ma, va, mb, vb in zip(
                mu_a[i].tolist(),
                var_a[i].tolist(),
                mu_b[j].tolist(),
                var_b[j].tolist(),
                strict=True,
            ):
                kl_ab = 0.5 * (math.log(vb / va) + (va + (ma - mb) ** 2) / vb - 1)
                kl_ba = 0.5 * (math.log(va / vb) + (vb + (ma - mb) ** 2) / va - 1)
                total += kl_ab + kl_ba
            divergence[i, j] = total
    return divergence


def test_kl_diag_matches_torch_distributions():
    mu_p, var_p = random_gaussians(6, 5, seed=0)
    mu_q, var_q = random_gaussians(6, 5, seed=1)
    expected = kl_divergence(Normal(mu_p, var_p.sqrt()), Normal(mu_q, var_q.sqrt())).sum(-1)
    torch.testing.assert_close(kl_diag(mu_p, var_p, mu_q, var_q), expected)


def test_symmetric_kl_is_both_kls_and_broadcasts():
    mu_p, var_p = random_gaussians(4, 3, seed=2)
    mu_q, var_q = random_gaussians(5, 3, seed=3)
    both = kl_diag(mu_p[:, None], var_p[:, None], mu_q, var_q) + kl_diag(
        mu_q, var_q, mu_p[:, None], var_p[:, None]
    )
    divergence = symmetric_kl_diag(mu_p[:, None], var_p[:, None], mu_q, var_q)
    assert divergence.shape == (4, 5)
    torch.testing.assert_close(divergence, both)
    assert torch.equal(
        symmetric_kl_diag(mu_p, var_p, mu_p, var_p), torch.zeros(4, dtype=torch.float64)
    )


def test_symmetric_kl_by_hand():
    # d = 1: mu 0 vs 1, var 1 vs 2: 0.5 * (1/2 + 2 - 2 + 1 * (1 + 1/2)) = 1.0
    value = symmetric_kl_diag(
        torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0])
    )
    assert value.item() == pytest.approx(1.0)


def test_symmetric_kl_gradient_flows_to_query_only():
    mu_q, var_q = random_gaussians(3, 4, seed=4)
    mu_q.requires_grad_(True)
    mu_e, var_e = random_gaussians(3, 4, seed=5)
    symmetric_kl_diag(mu_q, var_q, mu_e, var_e).sum().backward()
    assert mu_q.grad is not None and torch.isfinite(mu_q.grad).all()
    assert mu_e.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_matches_double_loop_oracle(dtype):
    mu_a, var_a = random_gaussians(7, 6, seed=6)
    mu_b, var_b = random_gaussians(9, 6, seed=7)
    expected = oracle_pairwise_skl(mu_a, var_a, mu_b, var_b)
    got = pairwise_symmetric_kl(mu_a.to(dtype), var_a.to(dtype), mu_b.to(dtype), var_b.to(dtype))
    assert got.dtype == dtype and got.shape == (7, 9)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


def test_pairwise_chunked_equals_unchunked():
    mu_a, var_a = random_gaussians(11, 4, seed=8)
    mu_b, var_b = random_gaussians(5, 4, seed=9)
    whole = pairwise_symmetric_kl(mu_a, var_a, mu_b, var_b)
    torch.testing.assert_close(pairwise_symmetric_kl(mu_a, var_a, mu_b, var_b, chunk_size=3), whole)
    assert pairwise_symmetric_kl(mu_a[:0], var_a[:0], mu_b, var_b).shape == (0, 5)


def test_lifts_give_divergence_and_max_inner_product_form():
    mu_a, var_a = random_gaussians(4, 3, seed=10)
    mu_b, var_b = random_gaussians(6, 3, seed=11)
    queries, entries = lift_queries(mu_a, var_a), lift_entries(mu_b, var_b)
    assert queries.features.shape == (4, 12) and entries.features.shape == (6, 12)
    divergence = queries.features @ entries.features.T + queries.offsets[:, None] + entries.offsets
    expected = oracle_pairwise_skl(mu_a, var_a, mu_b, var_b)
    torch.testing.assert_close(divergence, expected)
    # argmin SKL == argmax <[-lift_a, -1], [lift_b, offset_b]> (FAISS inner-product form)
    query_vectors = torch.cat([-queries.features, -torch.ones(4, 1, dtype=torch.float64)], 1)
    entry_vectors = torch.cat([entries.features, entries.offsets[:, None]], 1)
    inner = query_vectors @ entry_vectors.T
    assert torch.equal(inner.argmax(1), expected.argmin(1))


def test_gemm_float32_accuracy_and_ranking_in_realistic_range():
    """Stated tolerance: |error| <= 1e-6 * sum|lift_a||lift_b| for |mu| <= 5, logvar in
    [-5, 5], d = 64, and the float32 top-1 is the oracle's wherever the oracle's gap
    between its two nearest exceeds twice that bound."""
    mu_a, var_a = random_gaussians(40, 64, seed=12, mean_scale=5, log_var_range=5)
    mu_b, var_b = random_gaussians(300, 64, seed=13, mean_scale=5, log_var_range=5)
    # Entries near some queries so that small divergences (the hard case) are present.
    mu_b[:40] = mu_a + 0.01 * torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    var_b[:40] = var_a * 1.01
    exact = symmetric_kl_diag(mu_a[:, None], var_a[:, None], mu_b, var_b)
    queries, entries = lift_queries(mu_a, var_a), lift_entries(mu_b, var_b)
    magnitude = queries.features.abs() @ entries.features.abs().T
    magnitude += queries.offsets.abs()[:, None] + entries.offsets.abs()
    got = pairwise_symmetric_kl(mu_a.float(), var_a.float(), mu_b.float(), var_b.float())
    bound = 1e-6 * magnitude
    assert ((got.double() - exact).abs() <= bound).all()
    assert (got >= 0).all()
    nearest_two = exact.topk(2, dim=1, largest=False)
    gap = nearest_two.values[:, 1] - nearest_two.values[:, 0]
    decisive = gap > 2 * bound.gather(1, nearest_two.indices[:, :1])[:, 0]
    assert decisive.sum() >= 30
    assert torch.equal(got.argmin(1)[decisive], nearest_two.indices[decisive, 0])


def test_gemm_clamps_cancellation_to_non_negative():
    mu, var = random_gaussians(20, 64, seed=14, mean_scale=5, log_var_range=5)
    self_divergence = pairwise_symmetric_kl(mu.float(), var.float(), mu.float(), var.float())
    assert (self_divergence >= 0).all()


def test_similarity_is_exp_minus_divergence():
    divergence = torch.tensor([0.0, 1.0, torch.inf])
    torch.testing.assert_close(
        similarity_from_divergence(divergence), torch.tensor([1.0, math.exp(-1), 0.0])
    )


def test_moment_match_merge_formula():
    mu_1, var_1 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    mu_2, var_2 = torch.tensor([3.0, 0.0]), torch.tensor([1.5, 1.0])
    mean, variance = moment_match_merge(mu_1, var_1, mu_2, var_2, 0.25, 0.75)
    torch.testing.assert_close(mean, torch.tensor([2.5, -0.5]))
    # 0.25 var1 + 0.75 var2 + 0.1875 (mu1 - mu2)^2
    torch.testing.assert_close(variance, torch.tensor([1.25 + 0.75, 1.25 + 0.75]))


def test_moment_match_merge_matches_mixture_moments_by_sampling():
    generator = torch.Generator().manual_seed(0)
    component = torch.rand(400_000, generator=generator) < 0.3
    samples = torch.where(
        component,
        1.0 + 0.5 * torch.randn(400_000, generator=generator),
        -2.0 + 2.0 * torch.randn(400_000, generator=generator),
    )
    mean, variance = moment_match_merge(
        torch.tensor(1.0), torch.tensor(0.25), torch.tensor(-2.0), torch.tensor(4.0), 0.3, 0.7
    )
    assert mean.item() == pytest.approx(samples.mean().item(), abs=0.02)
    assert variance.item() == pytest.approx(samples.var().item(), rel=0.02)


def test_shot_weights_make_the_running_average():
    assert shot_weights(1) == (0.0, 1.0)
    assert shot_weights(4) == (0.75, 0.25)
    mu, var = random_gaussians(5, 3, seed=15)
    running_mu, running_var = mu[0], var[0]
    for count in range(2, 6):
        w_1, w_2 = shot_weights(count)
        running_mu, running_var = moment_match_merge(
            running_mu, running_var, mu[count - 1], var[count - 1], w_1, w_2
        )
    torch.testing.assert_close(running_mu, mu.mean(0))
    # The moment-matched Gaussian of the equal-weight mixture of the five.
    second_moment = (var + mu**2).mean(0)
    torch.testing.assert_close(running_var, second_moment - mu.mean(0) ** 2)


def test_merge_running_equals_sequential_merges_with_repeated_slots():
    means, variances = random_gaussians(4, 3, seed=16)
    counts = torch.tensor([1, 3, 2, 5])
    item_mu, item_var = random_gaussians(6, 3, seed=17)
    slots = torch.tensor([2, 0, 2, 2, 3, 0])
    expected_mu, expected_var, expected_counts = means.clone(), variances.clone(), counts.clone()
    for item, slot in enumerate(slots.tolist()):
        expected_counts[slot] += 1
        w_1, w_2 = shot_weights(expected_counts[slot].double())
        expected_mu[slot], expected_var[slot] = moment_match_merge(
            expected_mu[slot], expected_var[slot], item_mu[item], item_var[item], w_1, w_2
        )
    merge_running_(means, variances, counts, slots, item_mu, item_var)
    torch.testing.assert_close(means, expected_mu)
    torch.testing.assert_close(variances, expected_var)
    assert torch.equal(counts, torch.tensor([1, 3, 2, 5])), "counts are the caller's to update"


def test_clamp_variance_is_the_single_floor():
    clamped = clamp_variance(torch.tensor([0.0, 1e-30, 1.0, 1e30]))
    assert clamped.tolist() == pytest.approx([MIN_VARIANCE, MIN_VARIANCE, 1.0, MAX_VARIANCE])
    zero_var = torch.zeros(1, 2)
    assert torch.isfinite(symmetric_kl_diag(zero_var, zero_var, zero_var + 1, zero_var)).all()


@settings(max_examples=60, deadline=None)
@given(
    log_var=st.lists(st.floats(-30, 30), min_size=8, max_size=8),
    means=st.lists(st.floats(-1e3, 1e3), min_size=8, max_size=8),
    use_float64=st.booleans(),
)
def test_no_nan_or_inf_over_the_supported_range(log_var, means, use_float64):
    dtype = torch.float64 if use_float64 else torch.float32
    var = torch.tensor(log_var, dtype=dtype).exp().reshape(2, 4)
    mu = torch.tensor(means, dtype=dtype).reshape(2, 4)
    results = [
        kl_diag(mu[0], var[0], mu[1], var[1]),
        symmetric_kl_diag(mu[0], var[0], mu[1], var[1]),
        pairwise_symmetric_kl(mu, var, mu.flip(0), var.flip(0)),
        pairwise_symmetric_kl(mu, var, mu, var),
        *moment_match_merge(mu[0], var[0], mu[1], var[1], 0.5, 0.5),
        lift_queries(mu, var).features,
        lift_entries(mu, var).features,
    ]
    for result in results:
        assert torch.isfinite(result).all()
    assert (pairwise_symmetric_kl(mu, var, mu, var) >= 0).all()
    assert (symmetric_kl_diag(mu[0], var[0], mu[1], var[1]) >= 0).all()
