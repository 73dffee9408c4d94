"""Reconstruction, one-shot generation from memory, style transfer, the z_c/z_s check, their
figures and commands, on a tiny VAE trained for a few seconds on synthetic drawings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from gaussmem import figures, generative, style_prior
from gaussmem.checkpoint import save_checkpoint
from gaussmem.cli import main
from gaussmem.config import to_dict
from gaussmem.data.class_images import ClassImageSet
from gaussmem.losses import bernoulli_nll, latent_kl
from gaussmem.models.vae import GaussianVAE
from gaussmem.presets import preset

IMAGE_SIZE = 28


def synthetic_classes(n_classes: int = 12, n_samples: int = 20, seed: int = 0
                      ) -> ClassImageSet:
    """Each class: three random strokes; each drawing: the strokes shifted by <= 2 px."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n_classes, n_samples, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for class_index in range(n_classes):
        strokes = rng.integers(4, 24, size=(3, 4))
        for sample in range(n_samples):
            dx, dy = rng.integers(-2, 3, size=2)
            image = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
            draw = ImageDraw.Draw(image)
            for x0, y0, x1, y1 in strokes:
                draw.line([x0 + dx, y0 + dy, x1 + dx, y1 + dy], fill=255, width=2)
            images[class_index, sample] = np.asarray(image)
    return ClassImageSet(images, [f"class{index:02d}" for index in range(n_classes)],
                         "synthetic/strokes")


@pytest.fixture(scope="module")
def dataset() -> ClassImageSet:
    return synthetic_classes()


@pytest.fixture(scope="module")
def trained_vae(dataset: ClassImageSet) -> GaussianVAE:
    """The smoke preset's architecture after ~120 Adam steps of VAE training (seconds)."""
    # One thread: on a shared 2-core machine two threads per tiny conv thrash (10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny_vae(dataset)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_vae(dataset: ClassImageSet) -> GaussianVAE:
    torch.manual_seed(0)
    vae = GaussianVAE(preset("smoke").model)
    optimizer = torch.optim.Adam(vae.parameters(), lr=5e-3)
    images = torch.from_numpy(dataset.images).float().div(255).flatten(0, 1).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        batch = images[torch.randint(len(images), (32,), generator=generator)]
        posteriors, logits = vae(batch)
        kl = (latent_kl(posteriors.content) + latent_kl(posteriors.style)).mean()
        loss = bernoulli_nll(logits, batch).mean() + 1e-3 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.eval()


@pytest.fixture(scope="module")
def checkpoint_path(trained_vae: GaussianVAE, tmp_path_factory: pytest.TempPathFactory
                    ) -> Path:
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.ckpt"
    save_checkpoint(path, {"config": to_dict(preset("smoke")), "method": "mavae",
                           "model": trained_vae.state_dict(), "trained_model": None,
                           "optimizer": {}, "memory": None, "step": 120,
                           "elapsed_seconds": 1.0, "rng": {}, "sampler": {}, "best": {},
                           "extra": {}})
    return path


@pytest.fixture
def synthetic_split(monkeypatch: pytest.MonkeyPatch, dataset: ClassImageSet) -> None:
    """Make the commands read the synthetic set instead of Omniglot's split."""
    monkeypatch.setattr(generative, "load_split", lambda *args, **kwargs: dataset)


def episode(dataset: ClassImageSet, n_way: int, seed: int = 0) -> torch.Tensor:
    return generative.episode_images(dataset, n_way, seed=seed)[0]


# --- grids ----------------------------------------------------------------------------------
def test_grid_size_and_pixels_of_a_paired_grid() -> None:
    originals = torch.rand(7, 1, 28, 28)
    reconstructions = torch.rand(7, 1, 28, 28)
    rows = figures.paired_rows(originals, reconstructions, per_row=3)
    assert [len(row) for row in rows] == [3, 3, 3, 3, 1, 1]
    assert len(rows) == figures.rows_needed(7, 3)
    grid = figures.image_grid(rows, scale=2, separator=1, group_gap=4, group_size=2)
    assert grid.size == figures.grid_size(6, 3, (28, 28), scale=2, group_size=2)
    assert grid.size == (1 + 3 * (56 + 1), 2 + 6 * 56 + 3 * 1 + 2 * 4)
    pixels = np.asarray(grid)
    # Second pair, first column: the reconstruction of original 3, inverted, 2x scaled.
    top = 1 + 2 * 56 + 1 + 4 + 56 + 1
    expected = np.round((1 - reconstructions[3, 0].numpy()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels[top:top + 56:2, 1:57:2], expected)


def test_grid_rejects_mixed_image_sizes() -> None:
    with pytest.raises(ValueError, match="row 1"):
        figures.image_grid([torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 14, 14)])


# --- reconstruction ---------------------------------------------------------------------------
def test_reconstructions_beat_the_dataset_mean_image(trained_vae: GaussianVAE,
                                                     dataset: ClassImageSet) -> None:
    images = episode(dataset, 12)
    result = generative.reconstruct(trained_vae, images)
    assert result.images.shape == images.shape
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    baseline = generative.mean_image_nll(trained_vae, images,
                                         generative.dataset_mean_image(dataset))
    assert result.nll.shape == (12,)
    assert float(result.nll.mean()) < 0.9 * float(baseline.mean())


def test_reconstruction_is_the_bernoulli_mean_of_the_posterior_means(
        trained_vae: GaussianVAE, dataset: ClassImageSet) -> None:
    images = episode(dataset, 4)
    content, style = trained_vae.encode(images)
    expected = torch.sigmoid(trained_vae.decode(content.mean, style.mean))
    torch.testing.assert_close(generative.reconstruct(trained_vae, images).images,
                               expected.detach())


# --- generation -------------------------------------------------------------------------------
def test_generation_is_seeded_and_reads_the_memory_entry(trained_vae: GaussianVAE,
                                                         dataset: ClassImageSet) -> None:
    examples = episode(dataset, 5)
    labels = torch.arange(5)
    first = generative.generate_from_memory(trained_vae, examples, labels, 6, seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    again = generative.generate_from_memory(trained_vae, examples, labels, 6, seed=3)
    other = generative.generate_from_memory(trained_vae, examples, labels, 6, seed=4)
    assert first.samples.shape == (5, 6, 1, 28, 28)
    torch.testing.assert_close(first.samples, again.samples, rtol=0, atol=0)
    assert not torch.equal(first.samples, other.samples)
    # One shot per class: the stored entry is the example's content posterior.
    content = trained_vae.encode_content(examples)
    torch.testing.assert_close(first.entry_means, content.mean.detach())
    torch.testing.assert_close(first.entry_variances, content.var.detach(), rtol=1e-4,
                               atol=1e-6)


def record_decodes(vae: GaussianVAE, monkeypatch: pytest.MonkeyPatch
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Make `vae.decode` record each call's `(z_c, z_s)`; returns the growing record."""
    decoded: list[tuple[torch.Tensor, torch.Tensor]] = []
    decode = vae.decode

    def recording_decode(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        decoded.append((content.clone(), style.clone()))
        return decode(content, style)

    monkeypatch.setattr(vae, "decode", recording_decode)
    return decoded


def test_temperature_scales_the_style_draw_and_nothing_else(
        trained_vae: GaussianVAE, dataset: ClassImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At temperature T the decoder gets the same z_c and T times the z_s that the prior
    draw (T = 1) gives under the same seed; at T = 0 every drawing of a class is one."""
    examples = episode(dataset, 3)
    decode = trained_vae.decode
    decoded = record_decodes(trained_vae, monkeypatch)
    for temperature in (1.0, 0.25, 0.0):
        generative.generate_from_memory(trained_vae, examples, torch.arange(3), 4, seed=7,
                                        temperature=temperature)
    (content, style), (content_cool, style_cool), (content_zero, style_zero) = decoded
    assert float(style.abs().mean()) > 0.3  # prior draws, not zeros
    torch.testing.assert_close(content_cool, content, rtol=0, atol=0)
    torch.testing.assert_close(style_cool, 0.25 * style)
    torch.testing.assert_close(content_zero, content, rtol=0, atol=0)
    assert torch.count_nonzero(style_zero) == 0
    monkeypatch.setattr(trained_vae, "decode", decode)
    # z_c = the entry's mean: no noise left at all.
    monkeypatch.setattr(trained_vae.config, "content_to_decoder", "mean")
    frozen = generative.generate_from_memory(trained_vae, examples, torch.arange(3), 4,
                                             seed=7, temperature=0.0).samples
    torch.testing.assert_close(frozen, frozen[:, :1].expand_as(frozen), rtol=0, atol=0)


def test_generation_draws_z_s_from_the_style_prior_given_the_entry_mean(
        trained_vae: GaussianVAE, dataset: ClassImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a style prior the decoder gets, for the same z_c and noise as without one,
    the prior's mean given the entry's mean plus its factor times the (tempered)
    noise."""
    examples = episode(dataset, 3)
    prior = style_prior.conditional_style_prior_from(trained_vae, dataset)
    assert prior is not None and prior.weights.shape == (trained_vae.config.content_dim + 1,
                                                         trained_vae.config.style_dim)
    decoded = record_decodes(trained_vae, monkeypatch)
    generative.generate_from_memory(trained_vae, examples, torch.arange(3), 4, seed=5)
    generative.generate_from_memory(trained_vae, examples, torch.arange(3), 4, seed=5,
                                    temperature=0.5, style_prior=prior)
    (content, noise), (content_given, style_given) = decoded
    torch.testing.assert_close(content_given, content, rtol=0, atol=0)
    entry_means = trained_vae.encode_content(examples).mean.repeat_interleave(4, dim=0)
    expected = (entry_means @ prior.weights[:-1] + prior.weights[-1]
                + 0.5 * noise @ prior.cholesky.T)
    torch.testing.assert_close(style_given, expected)


def test_a_style_prior_of_another_model_is_refused(trained_vae: GaussianVAE,
                                                   dataset: ClassImageSet) -> None:
    content_dim = trained_vae.config.content_dim
    other = style_prior.ConditionalStylePrior(torch.zeros(content_dim + 2, 4), torch.eye(4), 99)
    with pytest.raises(generative.GenerativeError, match="fit it on this model"):
        generative.generate_from_memory(trained_vae, episode(dataset, 2), torch.arange(2), 3,
                                        style_prior=other)


@pytest.mark.parametrize("temperature", [-0.1, float("nan"), float("inf")])
def test_a_temperature_that_is_not_a_finite_non_negative_number_is_refused(
        trained_vae: GaussianVAE, dataset: ClassImageSet, temperature: float) -> None:
    with pytest.raises(generative.GenerativeError, match="temperature"):
        generative.generate_from_memory(trained_vae, episode(dataset, 2), torch.arange(2), 3,
                                        temperature=temperature)


def test_generation_figure_rows_start_with_the_stored_example(trained_vae: GaussianVAE,
                                                              dataset: ClassImageSet) -> None:
    examples = episode(dataset, 3)
    figure = figures.generation_figure(trained_vae, examples, n_samples=4, seed=0, scale=1)
    assert figure.size == figures.grid_size(3, 5, (28, 28), scale=1)
    cell = np.asarray(figure)[1:29, 1:29]
    expected = np.round((1 - examples[0, 0].numpy()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(cell, expected)


# --- style transfer and the latent check ------------------------------------------------------
def test_style_transfer_grid(trained_vae: GaussianVAE, dataset: ClassImageSet) -> None:
    images = episode(dataset, 7)
    transfers = generative.style_transfer(trained_vae, images[:4], images[4:])
    assert transfers.shape == (3, 4, 1, 28, 28)
    content = trained_vae.encode(images[:4]).content.mean
    style = trained_vae.encode(images[5:6]).style.mean.expand(4, -1)
    torch.testing.assert_close(transfers[1], torch.sigmoid(trained_vae.decode(content, style)
                                                           ).detach())
    figure = figures.style_transfer_figure(trained_vae, images[:4], images[4:])
    assert figure.size == figures.grid_size(4, 5, (28, 28))


def test_latent_check_is_seeded_and_above_chance(trained_vae: GaussianVAE,
                                                 dataset: ClassImageSet) -> None:
    check = generative.latent_nearest_accuracy(trained_vae, dataset, n_way=5, n_query=3,
                                               episodes=6, seed=1)
    again = generative.latent_nearest_accuracy(trained_vae, dataset, n_way=5, n_query=3,
                                               episodes=6, seed=1)
    assert check.to_dict() == again.to_dict()
    assert check.chance == 20.0
    # The tiny VAE tells its distinct synthetic classes apart by either latent.
    for summary in (check.content, check.style):
        assert summary.mean > check.chance and summary.episodes == 6


def test_decoder_sensitivity_sees_an_ignored_latent(trained_vae: GaussianVAE,
                                                   dataset: ClassImageSet) -> None:
    images = episode(dataset, 6)
    vae = GaussianVAE(preset("smoke").model)
    vae.load_state_dict(trained_vae.state_dict())
    with torch.no_grad():  # cut z_c (the first inputs) out of the decoder
        vae.decoder.project[0].weight[:, : vae.config.content_dim] = 0
    assert generative.decoder_sensitivity(trained_vae, images)["content_swap"] > 1e-3
    sensitivity = generative.decoder_sensitivity(vae, images)
    assert sensitivity["content_swap"] < 1e-6 < sensitivity["style_swap"]


def test_nearest_support_oracle() -> None:
    support = generative.DiagonalGaussian(torch.tensor([[0.0, 0.0], [5.0, 5.0]]),
                                          torch.zeros(2, 2))
    query = generative.DiagonalGaussian(torch.tensor([[4.0, 4.5], [0.5, -1.0]]),
                                        torch.zeros(2, 2))
    labels = torch.tensor([7, 3])
    predictions = generative.nearest_support_predictions(query, support, labels)
    assert predictions.tolist() == [3, 7]


# --- run figures and commands -----------------------------------------------------------------
def test_write_run_figures(trained_vae: GaussianVAE, dataset: ClassImageSet,
                           tmp_path: Path) -> None:
    paths = figures.write_run_figures(tmp_path, trained_vae, dataset, n_way=100)
    assert sorted(paths) == ["generation", "reconstruction", "style_transfer", "summary"]
    # 12 classes available: one 12-way episode, 12 per row -> one row pair.
    assert Image.open(paths["reconstruction"]).size == figures.grid_size(
        2, 12, (28, 28), group_size=2)
    assert Image.open(paths["generation"]).size == figures.grid_size(8, 11, (28, 28))
    assert Image.open(paths["style_transfer"]).size == figures.grid_size(7, 7, (28, 28))
    summary = json.loads(paths["summary"].read_text())
    assert summary["mean_nll"] < summary["mean_image_nll"]
    assert summary["reconstruction_ratio"] == pytest.approx(
        summary["mean_nll"] / summary["mean_image_nll"])
    assert summary["mean_squared_error"] < summary["mean_image_squared_error"]
    assert summary["squared_error_ratio"] == pytest.approx(
        summary["mean_squared_error"] / summary["mean_image_squared_error"])
    assert trained_vae.training is False


def test_squared_error_sums_each_images_pixels_and_signed_nlls_have_no_ratio() -> None:
    images = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    predictions = torch.tensor([[[[0.5, 1.0], [0.5, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # Image 0: 0.25 + 0 + 0 + 0.25; image 1: exact.
    assert generative.squared_error(predictions, images).tolist() == [0.5, 0.0]
    assert generative.nll_ratio(50.0, 200.0) == 0.25
    # A Gaussian density's NLL may be negative: no ratio then, on either side.
    assert generative.nll_ratio(-2220.0, 1057.8) is None
    assert generative.nll_ratio(10.0, -5.0) is None


def test_commands_write_figures_and_json(synthetic_split: None, checkpoint_path: Path,
                                        tmp_path: Path) -> None:
    out, report = tmp_path / "recon.png", tmp_path / "recon.json"
    assert main(["reconstruct", "--checkpoint", str(checkpoint_path), "--n-way", "10",
                 "--per-row", "4", "--out", str(out), "--json", str(report)]) == 0
    assert Image.open(out).size == figures.grid_size(6, 4, (28, 28), group_size=2)
    values = json.loads(report.read_text())
    assert len(values["nll_per_image"]) == 10 and len(values["classes"]) == 10
    assert values["mean_nll"] < values["mean_image_nll"]
    assert len(values["checkpoint"]["sha256"]) == 64 and values["split"] == "test"

    first, second = tmp_path / "gen1.png", tmp_path / "gen2.png"
    for path in (first, second):
        assert main(["generate", "--checkpoint", str(checkpoint_path), "--n-classes", "3",
                     "--n-samples", "5", "--seed", "2", "--out", str(path)]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert Image.open(first).size == figures.grid_size(3, 6, (28, 28))
    standard, record = tmp_path / "gen-standard.png", tmp_path / "gen-standard.json"
    assert main(["generate", "--checkpoint", str(checkpoint_path), "--n-classes", "3",
                 "--n-samples", "5", "--seed", "2", "--out", str(standard),
                 "--style-prior", "standard", "--json", str(record)]) == 0
    # The default draws z_s from the fitted conditional prior: other drawings.
    assert standard.read_bytes() != first.read_bytes()
    assert json.loads(record.read_text())["style_prior"] == "standard"

    style = tmp_path / "style.png"
    assert main(["style-transfer", "--checkpoint", str(checkpoint_path), "--n-content", "4",
                 "--n-style", "2", "--out", str(style)]) == 0
    assert Image.open(style).size == figures.grid_size(3, 5, (28, 28))

    latent = tmp_path / "results" / "latent_check.json"
    assert main(["latent-check", "--checkpoint", str(checkpoint_path), "--n-way", "3", "5",
                 "--episodes", "4", "--json", str(latent)]) == 0
    values = json.loads(latent.read_text())
    assert [result["n_way"] for result in values["results"]] == [3, 5]
    for key in ("checkpoint", "hardware", "command", "seed", "decoder_sensitivity"):
        assert key in values


def test_non_mavae_and_missing_checkpoints_are_one_line_errors(
        checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.ckpt"
    assert main(["generate", "--checkpoint", str(missing), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert str(missing) in capsys.readouterr().err
    other = tmp_path / "protonet.ckpt"
    config = to_dict(preset("smoke"))
    config["method"] = "protonet"
    save_checkpoint(other, {"config": config, "method": "protonet", "model": {},
                            "trained_model": None, "optimizer": {}, "memory": None,
                            "step": 0, "elapsed_seconds": 0.0, "rng": {}, "sampler": {},
                            "best": {}, "extra": {}})
    assert main(["reconstruct", "--checkpoint", str(other), "--out",
                 str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert "protonet" in error and "mavae" in error and str(other) in error
    assert not (tmp_path / "x.png").exists()


def test_train_split_is_not_offered(checkpoint_path: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["reconstruct", "--checkpoint", str(checkpoint_path), "--split", "train",
              "--out", str(tmp_path / "x.png")])


@pytest.mark.data
def test_reconstruct_a_100_way_omniglot_test_episode(checkpoint_path: Path, tmp_path: Path,
                                                     real_data_dir: Path,
                                                     real_cache_dir: Path) -> None:
    out = tmp_path / "figure2.png"
    assert main(["reconstruct", "--checkpoint", str(checkpoint_path), "--data-dir",
                 str(real_data_dir), "--cache-dir", str(real_cache_dir), "--out",
                 str(out)]) == 0
    # 100 images, 20 per row: five original/reconstruction row pairs.
    assert Image.open(out).size == figures.grid_size(10, 20, (28, 28), group_size=2)
