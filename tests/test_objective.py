"""The objective keeps the model generative: a trained MA-VAE's decoder reads z_c, and
the generative report measures what it says (reconstruction against the mean image,
content against style, one-shot generations judged by another classifier)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gaussmem import generative_report
from gaussmem.checkpoint import load_checkpoint
from gaussmem.generative import Generation, decoder_sensitivity
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.presets import preset
from gaussmem.train import LAST_CHECKPOINT, train
from test_generative import synthetic_classes


@pytest.fixture(scope="module")
def strokes():
    return synthetic_classes(n_classes=24)


def _train(method_preset: str, strokes, run_dir: Path, steps: int, **sets) -> Path:
    config = preset(method_preset)
    config.budget.max_steps = steps
    config.validation.every_steps = steps
    config.num_threads = 1
    for section, values in sets.items():
        if section == "loss":  # frozen: replaced whole
            config.loss = dataclasses.replace(config.loss, **values)
            continue
        for name, value in values.items():
            setattr(getattr(config, section), name, value)
    train(config, run_dir, strokes, strokes, progress=False)
    return run_dir / LAST_CHECKPOINT


@pytest.fixture(scope="module")
def mavae_checkpoint(strokes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke network trained with the shipped presets' objective (cpu-quick's loss
    weights, similarity and what its decoder reads of z_c) on 16 classes a step."""
    shipped = preset("cpu-quick")
    return _train("smoke", strokes, tmp_path_factory.mktemp("mavae"), 150,
                  episodes={"n_way": 8, "batch_episodes": 2},
                  model={"content_to_decoder": shipped.model.content_to_decoder},
                  loss={name: getattr(shipped.loss, name)
                        for name in ("triplet", "latent", "latent_style", "generative")},
                  similarity={"temperature": shipped.similarity.temperature})


@pytest.fixture(scope="module")
def judge(strokes, tmp_path_factory: pytest.TempPathFactory):
    """A small ProtoNet trained apart from the MA-VAE, as the report's judge."""
    path = _train("protonet-cpu", strokes, tmp_path_factory.mktemp("protonet"), 60,
                  protonet={"hidden_channels": 16}, budget={"max_minutes": None},
                  episodes={"n_way": 6})
    return classifier_from_checkpoint(load_checkpoint(path))


def test_a_trained_decoder_reads_the_content_latent(mavae_checkpoint: Path, strokes) -> None:
    """Fails for a decoder that ignores z_c (the collapse the per-pixel loss caused):
    swapping z_c must change the reconstruction more than swapping z_s."""
    from gaussmem.generative import vae_from_checkpoint

    vae, _ = vae_from_checkpoint(mavae_checkpoint)
    images = torch.from_numpy(strokes.images[:, 0]).float().div(255).unsqueeze(1)
    sensitivity = decoder_sensitivity(vae, images)
    assert sensitivity["content_swap"] > sensitivity["style_swap"]


def test_generation_score_counts_drawings_judged_as_their_source(
        mavae_checkpoint: Path, strokes, judge, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring check with a stand-in generator: drawings that are the stored examples
    themselves are all judged right; drawings of the next class are all judged wrong."""
    from gaussmem.generative import Reconstruction, vae_from_checkpoint

    vae, _ = vae_from_checkpoint(mavae_checkpoint)

    temperatures = []

    def copies(shift: int):
        def generate(vae, examples, labels, n_samples, seed=0, temperature=1.0,
                     style_prior=None):
            temperatures.append(temperature)
            rolled = examples.roll(shift, dims=0)
            samples = rolled[:, None].expand(-1, n_samples, -1, -1, -1)
            return Generation(samples, torch.zeros(1), torch.zeros(1))
        return generate

    monkeypatch.setattr(generative_report, "generate_from_memory", copies(0))
    same = generative_report.generation_accuracy(vae, judge, strokes, n_way=6, episodes=4,
                                                 samples_per_class=2)
    assert same.generated.mean == 100.0 and same.chance == pytest.approx(100 / 6)
    assert same.judge_view == "strokes"  # a stroke model's drawings, as ink
    # Against the model's reconstructions as support (blurred alike), the stored
    # examples are judged as the class whose reconstruction is nearest: the test model's
    # reconstructions still tell these strokes apart.
    assert same.generated_against_reconstructions.mean > 100 / 6
    monkeypatch.setattr(generative_report, "generate_from_memory", copies(1))
    other = generative_report.generation_accuracy(vae, judge, strokes, n_way=6, episodes=4,
                                                  samples_per_class=2)
    assert other.generated.mean == 0.0
    # The judge's ceiling on real drawings does not depend on the generator.
    assert other.real_images.mean == same.real_images.mean > 100 / 6
    # Perfect reconstructions (the stored examples themselves) are all judged right.
    monkeypatch.setattr(generative_report, "reconstruct",
                        lambda vae, images: Reconstruction(images, torch.zeros(len(images))))
    monkeypatch.setattr(generative_report, "generate_from_memory", copies(0))
    exact = generative_report.generation_accuracy(vae, judge, strokes, n_way=6, episodes=4,
                                                  samples_per_class=2)
    assert exact.reconstructions.mean == 100.0
    assert exact.generated_against_reconstructions.mean == 100.0
    monkeypatch.setattr(generative_report, "generate_from_memory", copies(1))
    shifted = generative_report.generation_accuracy(vae, judge, strokes, n_way=6, episodes=4,
                                                    samples_per_class=2)
    assert shifted.generated_against_reconstructions.mean == 0.0
    # The temperature reaches the generator and the summary.
    cool = generative_report.generation_accuracy(vae, judge, strokes, n_way=6, episodes=2,
                                                 samples_per_class=2, temperature=0.5)
    assert temperatures[-2:] == [0.5, 0.5] and set(temperatures[:-2]) == {1.0}
    assert cool.temperature == 0.5 and shifted.temperature == 1.0


def test_the_stroke_view_sees_a_crisp_and_a_blurred_drawing_alike() -> None:
    """The judge's view: a one-pixel stroke and its 3x3 blur (whose centre is only 1/3
    ink) give nearly the same ink, where the images themselves differ at every
    stroke pixel; a stroke elsewhere still differs."""
    import torch.nn.functional as F

    crisp = torch.zeros(1, 1, 28, 28)
    crisp[..., 8:20, 14] = 1.0
    blurred = F.avg_pool2d(crisp, 3, stride=1, padding=1)
    assert (blurred[crisp > 0] < 0.5).all()  # raw: the blurred stroke is faint
    view_crisp = generative_report.stroke_view(crisp)
    view_blurred = generative_report.stroke_view(blurred)
    assert set(view_crisp.unique().tolist()) == {0.0, 1.0}
    overlap = (view_crisp * view_blurred).sum() / torch.maximum(view_crisp,
                                                                view_blurred).sum()
    assert overlap > 0.75
    elsewhere = generative_report.stroke_view(crisp.roll(6, dims=-1))
    assert (view_crisp * elsewhere).sum() == 0


def test_posterior_spread_is_the_spread_of_the_means_over_the_posterior_variance() -> None:
    """By hand: z_c means 0, 2 (variance of means 2) with posterior variance 4 -> 0.5;
    z_s means 0, 6 (18) with variance 1 -> 18; averaged over two equal episodes."""
    from gaussmem.models.vae import DiagonalGaussian, Posteriors

    class KnownPosteriors(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def encode(self, images: torch.Tensor) -> Posteriors:
            first = images.flatten(1)[:, :1]  # 0 or 1 per image
            return Posteriors(DiagonalGaussian(2 * first, torch.full_like(first, 4.0).log()),
                              DiagonalGaussian(6 * first, torch.zeros_like(first)))

    images = torch.zeros(2, 1, 4, 4)
    images[1] = 1.0
    spread = generative_report.posterior_spread(KnownPosteriors(), [images, images])
    assert spread["content"]["posterior_variance"] == pytest.approx(4.0)
    assert spread["content"]["variance_of_means"] == pytest.approx(2.0)
    assert spread["content"]["signal_to_noise"] == pytest.approx(0.5)
    assert spread["style"]["signal_to_noise"] == pytest.approx(18.0)


def test_the_judge_view_follows_the_likelihood(mavae_checkpoint: Path) -> None:
    from gaussmem.generative import vae_from_checkpoint

    vae, _ = vae_from_checkpoint(mavae_checkpoint)
    assert generative_report.judge_view_for(vae, "auto") == "strokes"
    assert generative_report.judge_view_for(vae, "none") == "none"
    photographs = dataclasses.replace(vae.config, likelihood="gaussian")
    vae.config, stroke_config = photographs, vae.config
    try:
        assert generative_report.judge_view_for(vae, "auto") == "none"
    finally:
        vae.config = stroke_config
    with pytest.raises(ValueError, match="sharp"):
        generative_report.judge_view_for(vae, "sharp")


def test_generative_report_command(mavae_checkpoint: Path, strokes, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from gaussmem import generative
    from gaussmem.cli import main

    monkeypatch.setattr(generative, "load_split", lambda *args, **kwargs: strokes)
    report = tmp_path / "report.json"
    assert main(["generative-report", "--checkpoint", str(mavae_checkpoint),
                 "--recon-episodes", "1", "--episodes", "2", "--n-way", "6",
                 "--json", str(report)]) == 0
    values = json.loads(report.read_text())
    assert values["reconstruction"]["ratio"] == pytest.approx(
        values["reconstruction"]["mean_nll"] / values["reconstruction"]["mean_image_nll"])
    assert values["reconstruction"]["squared_error_ratio"] == pytest.approx(
        values["reconstruction"]["mean_squared_error"]
        / values["reconstruction"]["mean_image_squared_error"])
    assert values["reconstruction"]["likelihood"] == "bernoulli"
    assert set(values["decoder_sensitivity"]) == {"content_swap", "style_swap"}
    for latent in ("content", "style"):
        spread = values["posterior_spread"][latent]
        assert spread["signal_to_noise"] == pytest.approx(
            spread["variance_of_means"] / spread["posterior_variance"])
        assert spread["posterior_variance"] > 0
    assert "generation" not in values  # no judge given


N_CLASSES, DRAWINGS = 3, 2


def step_with_recorded_decodes(vae, config, *, prepare=None):
    """One `forward_losses` of a 3-class, 2-drawing batch on `vae` with its decoder calls
    recorded; `prepare(vae)` may patch more first. Returns (terms, labels, the
    concatenated z_c and z_s of the one decoder call)."""
    from gaussmem.memory import GaussianMemory
    from gaussmem.methods.mavae_training import forward_losses

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    decode = vae.decode

    def recording_decode(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        calls.append((content.detach().clone(), style.detach().clone()))
        return decode(content, style)

    vae.decode = recording_decode
    if prepare is not None:
        prepare(vae)
    images = torch.rand(DRAWINGS * N_CLASSES, 1, 28, 28)
    labels = torch.arange(N_CLASSES).repeat(DRAWINGS)
    memory = GaussianMemory(16, config.model.content_dim, seed=0)
    torch.manual_seed(0)
    terms, _ = forward_losses(vae, memory, images, labels, N_CLASSES, config)
    (content, style), = calls
    return terms, labels, content, style


def test_the_cross_term_decodes_another_drawing_of_the_class_with_the_own_style() -> None:
    """decode(z_c(x'), z_s(x)) with x' a different drawing of x's class: drawing p of
    class c takes the content sample of drawing p-1 of class c and keeps its own style."""
    from gaussmem.models.vae import GaussianVAE

    config = preset("smoke")
    _, labels, content, style = step_with_recorded_decodes(GaussianVAE(config.model), config)
    own_content, cross_content = content.chunk(2)
    own_style, cross_style = style.chunk(2)
    assert torch.equal(own_style, cross_style)
    assert torch.equal(cross_content, own_content.roll(N_CLASSES, dims=0))
    # The partner of every image is another image of the same class.
    partner = torch.arange(len(labels)).roll(N_CLASSES)
    assert torch.equal(labels[partner], labels)
    assert not torch.equal(partner, torch.arange(len(labels)))


def test_the_cross_term_can_take_its_style_from_another_class() -> None:
    """`loss.cross_style = "other_class"`: drawing p of class c is decoded from z_c of
    drawing p-1 of its class and z_s of drawing p of class c-1, never its own class."""
    from gaussmem.models.vae import GaussianVAE

    config = preset("smoke")
    config.loss = dataclasses.replace(config.loss, cross_style="other_class")
    _, labels, content, style = step_with_recorded_decodes(GaussianVAE(config.model), config)
    own_content, cross_content = content.chunk(2)
    own_style, cross_style = style.chunk(2)
    assert torch.equal(cross_content, own_content.roll(N_CLASSES, dims=0))
    style_partner = torch.arange(len(labels)).roll(1)
    assert torch.equal(cross_style, own_style[style_partner])
    assert (labels[style_partner] != labels).all()


def test_the_decoder_can_read_the_content_mean() -> None:
    """`model.content_to_decoder`: both decodes of the step read q(z_c | x)'s mean (the
    cross term that of the class's other drawing) for "mean" and "detached_mean", a
    sample for "sample"; the reconstruction trains the content head unless detached."""
    from gaussmem.models.vae import GaussianVAE

    means: list[torch.Tensor] = []

    def record_means(vae) -> None:
        encode = vae.encode

        def recording_encode(images: torch.Tensor):
            posteriors = encode(images)
            means.append(posteriors.content.mean.detach().clone())
            return posteriors

        vae.encode = recording_encode

    for content_to_decoder in ("sample", "mean", "detached_mean"):
        config = preset("smoke")
        config.model.content_to_decoder = content_to_decoder
        means.clear()
        vae = GaussianVAE(config.model)
        terms, _, content, _ = step_with_recorded_decodes(vae, config, prepare=record_means)
        own, cross = content.chunk(2)
        (mean,) = means
        assert torch.equal(own, mean) == (content_to_decoder != "sample")
        assert torch.equal(cross, own.roll(N_CLASSES, dims=0))
        head = list(vae.content_head.parameters())
        gradients = torch.autograd.grad(terms["generative_self"] + terms["generative_cross"],
                                        head, allow_unused=True)
        reached = any(g is not None and g.abs().sum() > 0 for g in gradients)
        assert reached == (content_to_decoder != "detached_mean")
    with pytest.raises(ValueError, match="content_to_decoder"):
        dataclasses.replace(config.model, content_to_decoder="mode")


def test_generation_from_a_mean_reading_decoder_varies_the_style_alone() -> None:
    """A decoder trained on z_c's mean draws every sample of an entry from that mean;
    the samples still differ, by their z_s."""
    from gaussmem.generative import generate_from_memory
    from gaussmem.models.vae import GaussianVAE

    config = preset("smoke")
    config.model.content_to_decoder = "mean"
    vae = GaussianVAE(config.model).eval()
    decoded: list[tuple[torch.Tensor, torch.Tensor]] = []
    decode = vae.decode
    vae.decode = lambda content, style: decoded.append((content, style)) or decode(content, style)
    examples = torch.rand(3, 1, 28, 28)
    generation = generate_from_memory(vae, examples, torch.arange(3), n_samples=4, seed=0)
    ((content, style),) = decoded
    assert torch.equal(content, generation.entry_means.repeat_interleave(4, dim=0))
    assert not torch.equal(style[0], style[1])
    assert not torch.equal(generation.samples[0, 0], generation.samples[0, 1])


def test_content_consistency_decodes_from_a_prior_style_and_keeps_batch_norm_statistics(
        ) -> None:
    """`loss.content_consistency`: a third decode of each x's z_c with a z_s from the
    prior, encoded again; the re-encoding leaves BatchNorm's running statistics as the
    real drawings left them, and the term reaches the decoder's gradient."""
    from gaussmem.models.vae import GaussianVAE

    config = preset("smoke")
    config.loss = dataclasses.replace(config.loss, content_consistency=1.0)
    vae = GaussianVAE(config.model).train()
    statistics_seen: list[dict[str, torch.Tensor]] = []

    def record_statistics(vae) -> None:
        encode_content = vae.encode_content

        def recording_encode_content(images: torch.Tensor):
            before = {k: v.clone() for k, v in vae.state_dict().items() if "running" in k}
            result = encode_content(images)
            after = {k: v for k, v in vae.state_dict().items() if "running" in k}
            statistics_seen.append({k: after[k] - before[k] for k in before})
            return result

        vae.encode_content = recording_encode_content

    terms, _, content, style = step_with_recorded_decodes(vae, config,
                                                          prepare=record_statistics)
    own, _, regenerated_from = content.chunk(3)
    assert torch.equal(regenerated_from, own)
    own_style, _, prior_style = style.chunk(3)
    assert not torch.equal(prior_style, own_style)
    (changes,) = statistics_seen
    assert changes and all(torch.equal(change, torch.zeros_like(change))
                           for change in changes.values())
    assert terms["content_consistency"].item() > 0
    decoder_gradient = torch.autograd.grad(terms["content_consistency"],
                                           list(vae.decoder.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in decoder_gradient)


def test_a_frozen_reencoder_gives_the_same_posterior_and_trains_no_encoder_weight() -> None:
    """`encode_content_frozen`: q(z_c | x~) as `encode_content` computes it, with the
    gradient reaching x~ and none of the encoder's weights."""
    from gaussmem.methods.mavae_training import encode_content_frozen
    from gaussmem.models.vae import GaussianVAE

    torch.manual_seed(0)
    vae = GaussianVAE(preset("smoke").model).train()
    drawings = torch.rand(6, 1, 28, 28, requires_grad=True)
    frozen, trained = encode_content_frozen(vae, drawings), vae.encode_content(drawings)
    assert torch.allclose(frozen.mean, trained.mean)
    assert torch.allclose(frozen.log_var, trained.log_var)
    weights = list(vae.backbone.parameters()) + list(vae.content_head.parameters())
    gradients = torch.autograd.grad(frozen.mean.square().sum(), [drawings, *weights],
                                    allow_unused=True)
    assert gradients[0].abs().sum() > 0
    assert all(g is None for g in gradients[1:])


def test_content_consistency_can_train_the_decoder_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`loss.consistency_trains = "decoder"`: the drawings decoded from a prior z_s are
    read by the frozen encoder (and only they are), the term reaches the decoder, and no
    encoder weight, neither through the re-encoding nor through the z_c it decoded (a
    GroupNorm decoder, as the presets': BatchNorm's batch statistics would couple the
    decoded drawings to the rest of the decoder's batch)."""
    from gaussmem.methods import mavae_training
    from gaussmem.models.vae import GaussianVAE

    config = preset("smoke")
    config.model.decoder_norm = "group"
    config.loss = dataclasses.replace(config.loss, content_consistency=1.0,
                                      consistency_trains="decoder")
    vae = GaussianVAE(config.model).train()
    read: list[torch.Tensor] = []
    encode_frozen = mavae_training.encode_content_frozen

    def recording(vae, images):
        read.append(images.detach().clone())
        return encode_frozen(vae, images)

    monkeypatch.setattr(mavae_training, "encode_content_frozen", recording)
    terms, labels, _, _ = step_with_recorded_decodes(vae, config)
    (drawings,) = read
    assert drawings.shape == (len(labels), 1, 28, 28)
    assert ((drawings >= 0) & (drawings <= 1)).all()
    decoder = list(vae.decoder.parameters())
    encoder = [p for name, p in vae.named_parameters() if not name.startswith("decoder.")]
    gradients = torch.autograd.grad(terms["content_consistency"], decoder + encoder,
                                    allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in gradients[:len(decoder)])
    assert all(g is None or not g.any() for g in gradients[len(decoder):])
