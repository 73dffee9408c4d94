"""The VAE's decomposition: shapes, the near-prior start, reparameterization."""

from __future__ import annotations

import copy

import pytest
import torch

from gaussmem.models import Conv4Backbone, DeconvDecoder, GaussianVAE, VAEConfig


def tiny_config(**changes: object) -> VAEConfig:
    values = {"hidden_channels": 8, "content_dim": 6, "style_dim": 3,
              "decoder_hidden_channels": 8}
    values.update(changes)
    return VAEConfig(**values)


def test_encode_decode_shapes() -> None:
    torch.manual_seed(0)
    vae = GaussianVAE(tiny_config())
    images = torch.rand(5, 1, 28, 28)
    content, style = vae.encode(images)
    assert content.mean.shape == content.log_var.shape == (5, 6)
    assert style.mean.shape == style.log_var.shape == (5, 3)
    logits = vae.decode(vae.reparameterize(content), vae.reparameterize(style))
    assert logits.shape == (5, 1, 28, 28)
    _posteriors, forward_logits = vae(images)
    assert forward_logits.shape == (5, 1, 28, 28)
    assert torch.equal(vae.encode_content(images).mean, content.mean)


def test_a_detached_style_head_leaves_the_trunk_to_the_content() -> None:
    """`style_detached`: a loss on z_s alone trains the style head but not the trunk;
    the posteriors' values and the content's gradient into the trunk are unchanged."""
    torch.manual_seed(0)
    images = torch.rand(4, 1, 28, 28)
    attached = GaussianVAE(tiny_config())
    detached = GaussianVAE(tiny_config(style_detached=True))
    detached.load_state_dict(attached.state_dict())
    gradients = {}
    for name, vae in (("attached", attached), ("detached", detached)):
        content, style = vae.encode(images)
        trunk = list(vae.backbone.parameters())
        style_grads = torch.autograd.grad(style.mean.square().sum() + style.log_var.sum(),
                                          trunk + list(vae.style_head.parameters()),
                                          retain_graph=True, allow_unused=True)
        content_grads = torch.autograd.grad(content.mean.square().sum(), trunk)
        gradients[name] = (content.mean.detach(), style.mean.detach(),
                           style_grads[:len(trunk)], style_grads[len(trunk):], content_grads)
    a_content, a_style, a_trunk, a_head, a_from_content = gradients["attached"]
    d_content, d_style, d_trunk, d_head, d_from_content = gradients["detached"]
    assert torch.equal(a_content, d_content) and torch.equal(a_style, d_style)
    assert any(g is not None and g.abs().sum() > 0 for g in a_trunk)
    assert all(g is None for g in d_trunk)
    assert all(torch.allclose(a, d) for a, d in zip(a_head, d_head, strict=True))
    assert all(torch.allclose(a, d) for a, d in zip(a_from_content, d_from_content,
                                                    strict=True))


def test_channels_last_gives_same_embeddings() -> None:
    torch.manual_seed(0)
    vae = GaussianVAE(tiny_config()).eval()
    images = torch.rand(4, 1, 28, 28)
    reference = vae.encode_content(images).mean
    vae = vae.to(memory_format=torch.channels_last)
    fast = vae.encode_content(images.contiguous(memory_format=torch.channels_last)).mean
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)


def test_heads_start_near_the_prior() -> None:
    """Small head init: posteriors ~ N(0, I), so exp(-SKL) starts near 1 for any pair."""
    torch.manual_seed(0)
    vae = GaussianVAE(tiny_config(head_init_scale=0.01)).eval()
    content = vae.encode_content(torch.rand(16, 1, 28, 28))
    assert content.mean.abs().max() < 0.05
    assert (content.var - 1).abs().max() < 0.05


def test_reparameterize_matches_the_posterior_moments() -> None:
    torch.manual_seed(0)
    mean = torch.tensor([[1.0, -2.0]]).expand(20000, 2)
    log_var = torch.tensor([[0.0, 2.0 * torch.log(torch.tensor(3.0))]]).expand(20000, 2)
    from gaussmem.models.vae import DiagonalGaussian

    draws = GaussianVAE.reparameterize(DiagonalGaussian(mean, log_var))
    torch.testing.assert_close(draws.mean(0), torch.tensor([1.0, -2.0]), atol=0.06, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.tensor([1.0, 3.0]), atol=0.06, rtol=0)


def test_backbone_feature_size_and_bad_depth() -> None:
    assert Conv4Backbone(hidden_channels=64).out_features == 64
    assert Conv4Backbone(hidden_channels=8, n_blocks=2).out_features == 8 * 7 * 7
    with pytest.raises(ValueError, match="shrink"):
        Conv4Backbone(n_blocks=6)
    with pytest.raises(ValueError, match="content_dim"):
        VAEConfig(content_dim=0)


def test_backbone_blocks_equal_the_standard_conv_bn_relu_pool_order() -> None:
    """The blocks pool before the ReLU (faster); outputs and gradients must equal those of
    the textbook conv -> BatchNorm -> ReLU -> maxpool order with the same parameters."""
    torch.manual_seed(0)
    backbone = Conv4Backbone(hidden_channels=8).train()
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(-1, 1)  # negative scales too
            module.bias.data.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(backbone)
    for block in reference.blocks:
        _conv, _norm, pool, relu = block
        assert isinstance(pool, torch.nn.MaxPool2d) and isinstance(relu, torch.nn.ReLU)
        block[2], block[3] = relu, pool
    images = torch.rand(6, 1, 28, 28)
    features, expected = backbone(images), reference(images)
    torch.testing.assert_close(features, expected)
    features.square().sum().backward()
    expected.square().sum().backward()
    for (name, param), reference_param in zip(backbone.named_parameters(),
                                              reference.parameters(), strict=True):
        torch.testing.assert_close(param.grad, reference_param.grad, msg=name)
    assert set(backbone.state_dict()) == set(reference.state_dict())


def test_folded_batch_norms_give_the_trained_trunks_features() -> None:
    """Folding each BatchNorm's running statistics into its convolution (the recognizer's
    inference trunk) keeps the eval-mode function, negative scales included."""
    torch.manual_seed(0)
    backbone = Conv4Backbone(hidden_channels=8).train()
    backbone(torch.rand(32, 1, 28, 28))  # running statistics away from 0 and 1
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(-1, 1)
            module.bias.data.uniform_(-0.5, 0.5)
    backbone.eval()
    folded = copy.deepcopy(backbone)
    folded.fold_batch_norms_()
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    images = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), backbone(images), atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="eval mode"):
        Conv4Backbone(hidden_channels=8).train().fold_batch_norms_()


def test_decoder_output_size() -> None:
    decoder = DeconvDecoder(latent_dim=5, hidden_channels=8)
    assert decoder(torch.zeros(2, 5)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="divisible"):
        DeconvDecoder(latent_dim=5, image_size=30)


@pytest.mark.parametrize("norm", ["batch", "group", None])
@pytest.mark.parametrize("refine_layers", [0, 2])
def test_decoder_norms_and_refine_layers(norm: str | None, refine_layers: int) -> None:
    decoder = DeconvDecoder(latent_dim=5, hidden_channels=8, norm=norm,
                            refine_layers=refine_layers)
    assert decoder(torch.randn(3, 5)).shape == (3, 1, 28, 28)
    convs = [m for m in decoder.deconv if isinstance(m, torch.nn.Conv2d)]
    # One set of refining convolutions at 7x7 and one at 14x14.
    assert len(convs) == 2 * refine_layers
    norms = [m for m in decoder.deconv if isinstance(m, (torch.nn.BatchNorm2d,
                                                         torch.nn.GroupNorm))]
    expected = {"batch": torch.nn.BatchNorm2d, "group": torch.nn.GroupNorm}.get(norm)
    assert all(isinstance(m, expected) for m in norms) if expected else norms == []
    assert len(norms) == (1 + refine_layers * 2 if expected else 0)


def test_group_norm_decoder_decodes_the_same_in_training_and_evaluation() -> None:
    """Posterior means (small spread) decoded after training on samples (large spread):
    BatchNorm's running statistics rescale them at evaluation, GroupNorm does not."""
    torch.manual_seed(0)
    codes = 0.1 * torch.randn(16, 5)
    for norm, same in (("group", True), ("batch", False)):
        decoder = DeconvDecoder(latent_dim=5, hidden_channels=8, norm=norm, refine_layers=1)
        decoder.train()
        for _ in range(20):
            decoder(torch.randn(64, 5))  # BatchNorm's running statistics, on samples
        with torch.no_grad():
            training = decoder(codes)
            decoder.eval()
            evaluation = decoder(codes)
        assert torch.allclose(training, evaluation, atol=1e-5) is same


def test_decoder_norm_is_checked() -> None:
    with pytest.raises(ValueError, match="decoder_norm"):
        tiny_config(decoder_norm="layer")
    with pytest.raises(ValueError, match="decoder_refine_layers"):
        tiny_config(decoder_refine_layers=-1)
    # Older checkpoints' configs name neither: their decoder (BatchNorm, no refining
    # convolutions) is what the defaults build.
    assert GaussianVAE(tiny_config()).decoder.deconv[1].__class__ is torch.nn.BatchNorm2d
