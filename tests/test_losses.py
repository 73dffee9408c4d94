"""The paper's loss terms, checked against closed forms and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gaussmem.gaussian import symmetric_kl_diag
from gaussmem.losses import (
    LossWeights,
    bernoulli_nll,
    content_consistency_loss,
    gaussian_nll,
    latent_kl,
    log_similarity,
    memory_softmax_loss,
    reconstruction_nll,
    scaled_similarity,
    total_loss,
    triplet_loss,
)
from gaussmem.models.vae import DiagonalGaussian


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 0.5))
def test_triplet_never_clips_and_ignores_alpha(sim_positive: float, sim_negative: float,
                                               alpha: float) -> None:
    """With similarities in [0, 1], max(s_n + 1 - s_p + a, a) - a == 1 + s_n - s_p."""
    loss = triplet_loss(torch.tensor([sim_positive]), torch.tensor([sim_negative]), alpha)
    assert loss.item() == pytest.approx(1 + sim_negative - sim_positive, abs=1e-6)


def test_triplet_is_flat_when_every_similarity_underflows() -> None:
    """The paper's risk: SKL >> 1 for every pair makes the triplet a constant."""
    query = torch.randn(4, 64, requires_grad=True)
    entry = torch.randn(4, 64) * 5
    divergence = symmetric_kl_diag(query, torch.full_like(entry, 0.01), entry,
                                   torch.full_like(entry, 0.01))
    similarity = scaled_similarity(divergence)
    loss = triplet_loss(similarity, similarity.detach() * 0).mean()
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert query.grad.abs().max() == 0
    # The per-dimension form keeps a gradient for the same pair.
    query.grad = None
    per_dim = scaled_similarity(symmetric_kl_diag(query, torch.ones_like(entry), entry,
                                                  torch.ones_like(entry)), kind="per_dim", dim=64)
    triplet_loss(per_dim, torch.zeros(4)).mean().backward()
    assert query.grad.abs().max() > 0


def test_scaled_similarity_forms() -> None:
    divergence = torch.tensor([0.0, 2.0, math.inf])
    torch.testing.assert_close(scaled_similarity(divergence),
                               torch.tensor([1.0, math.exp(-2.0), 0.0]))
    torch.testing.assert_close(scaled_similarity(divergence, kind="per_dim", dim=4),
                               torch.tensor([1.0, math.exp(-0.5), 0.0]))
    with pytest.raises(ValueError, match="unknown similarity"):
        scaled_similarity(divergence, kind="cosine")


def test_latent_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, log_var = torch.randn(3, 5), torch.randn(3, 5)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * log_var).exp()),
        torch.distributions.Normal(torch.zeros(3, 5), torch.ones(3, 5))).sum(-1)
    torch.testing.assert_close(latent_kl(DiagonalGaussian(mean, log_var)), expected)
    assert latent_kl(DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4))).abs().max() == 0


def test_bernoulli_nll_is_the_bce_summed_over_pixels() -> None:
    torch.manual_seed(0)
    logits, images = torch.randn(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    expected = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    torch.testing.assert_close(bernoulli_nll(logits, images), expected.sum((1, 2, 3)))


def test_gaussian_nll_is_the_normal_log_density_summed_over_pixels() -> None:
    torch.manual_seed(0)
    logits, images = torch.randn(3, 1, 6, 6), torch.rand(3, 1, 6, 6)
    log_scale = torch.tensor(-1.3)
    expected = -torch.distributions.Normal(torch.sigmoid(logits), log_scale.exp()).log_prob(
        images).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_nll(logits, images, log_scale), expected)
    torch.testing.assert_close(reconstruction_nll(logits, images, "gaussian", log_scale),
                               expected)
    with pytest.raises(ValueError, match="log_scale"):
        reconstruction_nll(logits, images, "gaussian")
    with pytest.raises(ValueError, match="unknown likelihood"):
        reconstruction_nll(logits, images, "poisson")


def test_total_loss_is_per_image_sums_computed_by_hand() -> None:
    """Two images of 2x2 pixels, a 1-d z_c and a 1-d z_s: every term by hand, in nats
    per image (sums over pixels and latent dimensions, mean over the batch)."""
    content = DiagonalGaussian(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]]))
    style = DiagonalGaussian(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [0.0]]))
    images = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    self_logits = torch.zeros(2, 1, 2, 2)  # p = 1/2 everywhere: log 2 per pixel
    cross_logits = torch.full((2, 1, 2, 2), 100.0)  # p ~ 1: ~100 nats per dark pixel
    sim_positive, sim_negative = torch.tensor([0.9, 0.5]), torch.tensor([0.2, 0.0])
    weights = LossWeights(triplet=10.0, latent=2.0, latent_style=3.0, generative=0.5)
    terms = total_loss(sim_positive=sim_positive, sim_negative=sim_negative, content=content,
                       style=style, self_logits=self_logits, cross_logits=cross_logits,
                       images=images, weights=weights)
    # KL(N(m, e^v) || N(0, 1)) = (m^2 + e^v - 1 - v) / 2.
    kl_content = ((1.0 + 1.0 - 1.0 - 0.0) / 2 + (0.0 + math.e - 1.0 - 1.0) / 2) / 2
    kl_style = ((0.0 + 1.0 - 1.0) / 2 + (4.0 + 1.0 - 1.0) / 2) / 2
    generative_self = 4 * math.log(2.0)
    generative_cross = 2 * 100.0  # both images have two dark pixels
    triplet = ((1 + 0.2 - 0.9) + (1 + 0.0 - 0.5)) / 2
    for name, value in (("latent_content", kl_content), ("latent_style", kl_style),
                        ("latent", kl_content + kl_style),
                        ("generative_self", generative_self),
                        ("generative_cross", generative_cross), ("triplet", triplet)):
        assert terms[name].item() == pytest.approx(value, rel=1e-4), name
    expected = (10.0 * triplet + 2.0 * kl_content + 3.0 * kl_style
                + 0.5 * (generative_self + generative_cross))
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-4)
    # Without its own weight, z_s's KL takes the latent weight, as in the paper.
    paper = total_loss(sim_positive=sim_positive, sim_negative=sim_negative, content=content,
                       style=style, self_logits=self_logits, cross_logits=cross_logits,
                       images=images, weights=LossWeights(triplet=10.0, latent=2.0,
                                                          generative=0.5))
    assert (terms["loss"] - paper["loss"]).item() == pytest.approx(kl_style, rel=1e-4)
    # A plain VAE: no triplet, no cross term; the ELBO alone.
    plain = total_loss(sim_positive=sim_positive, sim_negative=sim_negative, content=content,
                       style=style, self_logits=self_logits, cross_logits=cross_logits,
                       images=images, weights=LossWeights(triplet=0.0, latent=1.0,
                                                          generative=1.0,
                                                          generative_cross=0.0))
    assert plain["loss"].item() == pytest.approx(kl_content + kl_style + generative_self,
                                                 rel=1e-4)


def test_memory_softmax_is_minus_log_the_labels_share_of_similarity() -> None:
    """Closed form on 3 slots: labels 0, 0, 1 and an empty slot (-inf)."""
    divergence = torch.tensor([[0.5, 2.0, 1.0, math.inf],
                               [0.5, 2.0, 1.0, math.inf]])
    slot_labels = torch.tensor([0, 0, 1, -1])
    query_labels = torch.tensor([0, 1])
    log_similarities = log_similarity(divergence)
    loss = memory_softmax_loss(log_similarities, slot_labels[None] == query_labels[:, None])
    similarities = [math.exp(-0.5), math.exp(-2.0), math.exp(-1.0)]
    total = sum(similarities)
    expected = [-math.log((similarities[0] + similarities[1]) / total),
                -math.log(similarities[2] / total)]
    torch.testing.assert_close(loss, torch.tensor(expected))
    # The temperature divides the divergence, as in scaled_similarity.
    torch.testing.assert_close(log_similarity(divergence, kind="per_dim", dim=2),
                               -divergence / 2)


def test_memory_softmax_is_zero_without_a_positive_and_never_nan() -> None:
    divergence = torch.tensor([[0.5, 1.0], [0.5, 1.0], [math.inf, math.inf]],
                              requires_grad=True)
    slot_labels = torch.tensor([0, 1])
    query_labels = torch.tensor([0, 2, 0])  # label 2 is absent; row 3 sees an empty memory
    same_label = (slot_labels[None] == query_labels[:, None]) & torch.isfinite(divergence)
    loss = memory_softmax_loss(log_similarity(divergence), same_label)
    assert loss[0] > 0 and loss[1] == 0 and loss[2] == 0
    loss.sum().backward()
    assert torch.isfinite(divergence.grad).all()
    assert divergence.grad[1:].abs().max() == 0
    # Pulled towards its own label's slot, pushed from the other one.
    assert divergence.grad[0, 0] > 0 > divergence.grad[0, 1]
    # An empty memory (no slot at all, as at an episode's first step) costs nothing.
    nothing = torch.zeros(3, 0, requires_grad=True)
    empty = memory_softmax_loss(nothing, torch.zeros(3, 0, dtype=torch.bool))
    assert empty.tolist() == [0.0, 0.0, 0.0]
    empty.sum().backward()


def test_total_loss_weighs_the_memory_softmax_when_asked() -> None:
    torch.manual_seed(0)
    content = DiagonalGaussian(torch.randn(4, 6), torch.randn(4, 6))
    style = DiagonalGaussian(torch.randn(4, 2), torch.randn(4, 2))
    images = torch.rand(4, 1, 28, 28)
    logits = torch.randn(4, 1, 28, 28)
    inputs = {"sim_positive": torch.rand(4), "sim_negative": torch.rand(4), "content": content,
              "style": style, "self_logits": logits, "cross_logits": logits, "images": images}
    softmax = torch.rand(4)
    paper = total_loss(**inputs, weights=LossWeights(triplet=2.0), memory_softmax=softmax)
    beyond = total_loss(**inputs, weights=LossWeights(triplet=2.0, memory_term="softmax"),
                        memory_softmax=softmax)
    torch.testing.assert_close(beyond["memory_softmax"], softmax.mean())
    # Same triplet diagnostic either way; only what c1 weighs differs.
    torch.testing.assert_close(beyond["triplet"], paper["triplet"])
    # The totals are sums over pixels (~10^3 nats): compare their difference to float32's
    # resolution at that size.
    torch.testing.assert_close(beyond["loss"] - paper["loss"],
                               2.0 * (softmax.mean() - paper["triplet"]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="no memory_softmax"):
        total_loss(**inputs, weights=LossWeights(memory_term="softmax"))


def test_content_consistency_is_the_symmetric_kl_to_a_constant_target() -> None:
    """By hand for 1-d Gaussians: N(1, 1) against N(0, e): SKL = (1 / e + e - 2) / 2
    + (1 + 1 / e) / 2; only the regenerated posterior gets a gradient."""
    content = DiagonalGaussian(torch.tensor([[0.0]], requires_grad=True),
                               torch.tensor([[1.0]], requires_grad=True))
    regenerated = DiagonalGaussian(torch.tensor([[1.0]], requires_grad=True),
                                   torch.tensor([[0.0]], requires_grad=True))
    value = content_consistency_loss(content, regenerated)
    expected = 0.5 * ((1 - math.e) ** 2 / math.e + (1 + 1 / math.e))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.sum().backward()
    assert content.mean.grad is None and content.log_var.grad is None
    assert regenerated.mean.grad.abs().item() > 0
    assert content_consistency_loss(content, content).item() == 0.0


def test_total_loss_adds_the_weighted_content_consistency() -> None:
    content = DiagonalGaussian(torch.zeros(2, 1), torch.zeros(2, 1))
    style = DiagonalGaussian(torch.zeros(2, 1), torch.zeros(2, 1))
    regenerated = DiagonalGaussian(torch.ones(2, 1), torch.zeros(2, 1))
    arguments = dict(sim_positive=torch.ones(2), sim_negative=torch.zeros(2), content=content,
                     style=style, self_logits=torch.zeros(2, 1, 2, 2),
                     cross_logits=torch.zeros(2, 1, 2, 2), images=torch.zeros(2, 1, 2, 2))
    without = total_loss(**arguments, weights=LossWeights())
    weighted = total_loss(**arguments, weights=LossWeights(content_consistency=3.0),
                          regenerated_content=regenerated)
    # SKL of N(1, 1) and N(0, 1): the squared gap over each variance, halved: 1.
    assert weighted["content_consistency"].item() == pytest.approx(1.0)
    assert (weighted["loss"] - without["loss"]).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="regenerated_content"):
        total_loss(**arguments, weights=LossWeights(content_consistency=1.0))
