"""The generative side of the memory-augmented VAE: what the model sees and can draw.

* `reconstruct`: x -> q(z_c|x), q(z_s|x) -> decode(posterior means) -> pixel means,
  with the per-image reconstruction BCE (the paper's figure 2 shows such a grid for a
  100-way Omniglot test episode).
* `generate_from_memory`: one-shot generation. Each new class's example is written into
  a fresh `GaussianMemory` (exactly what classification does); new drawings of the class
  are decoded from z_c ~ the stored entry N(mean, var) and z_s ~ the prior N(0, I)
  (or N(0, T^2 I) at a temperature T below 1: more typical, less varied drawings), or
  from a style prior fitted to how z_s goes with z_c in training drawings
  (gaussmem.style_prior).
* `style_transfer`: decode(z_c of one image, z_s of another) for every pair.
* `latent_nearest_accuracy`: the check that z_c carries the class and z_s does not:
  nearest-support accuracy by symmetric KL between posteriors of z_c only vs z_s only.
* `decoder_sensitivity`: how much the decoder listens to z_c and to z_s.

Model operations only: drawing these results as images and writing a run's figures is
gaussmem.figures, which imports this module (never the reverse).

Images everywhere are float `(n, 1, H, W)` in [0, 1] with strokes bright, as the data
pipeline yields them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaussmem.accuracy import AccuracySummary
from gaussmem.checkpoint import load_checkpoint
from gaussmem.data.datasets import FewShotDataset, episode_sampler
from gaussmem.data.datasets import load_split as load_dataset_split
from gaussmem.errors import GenerativeError
from gaussmem.gaussian import pairwise_symmetric_kl
from gaussmem.losses import vae_reconstruction_nll
from gaussmem.memory import GaussianMemory
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.models.vae import DiagonalGaussian, GaussianVAE
from gaussmem.plumbing.device import module_device
from gaussmem.style_prior import ConditionalStylePrior


# --- model helpers --------------------------------------------------------------------
class _EvalMode:
    """Context: module in eval mode (BatchNorm running stats), previous mode restored."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


def check_image_size(vae: GaussianVAE, images: torch.Tensor) -> None:
    """Raise `GenerativeError` when images do not match the model's input size."""
    config = vae.config
    expected = (config.in_channels, config.image_size, config.image_size)
    if tuple(images.shape[1:]) != expected:
        raise GenerativeError(f"images of shape {tuple(images.shape[1:])} do not fit a model "
                              f"for {expected}")


@dataclass
class Reconstruction:
    """Reconstructions `(n, 1, H, W)` (pixel means) and each image's negative
    log-likelihood `(n,)` under the model's likelihood, in nats per image (the training
    loss's units)."""

    images: torch.Tensor
    nll: torch.Tensor


@torch.no_grad()
def reconstruct(vae: GaussianVAE, images: torch.Tensor, batch_size: int = 256
                ) -> Reconstruction:
    """Decode each image's posterior means: sigmoid(decode(E[z_c|x], E[z_s|x])).

    The means, not samples: the figure shows what the posterior encodes, without the
    noise of one draw, and the BCE is a deterministic number.
    """
    check_image_size(vae, images)
    device = module_device(vae)
    means, losses = [], []
    with _EvalMode(vae):
        for batch in images.split(batch_size):
            batch = batch.to(device)
            content, style = vae.encode(batch)
            logits = vae.decode(content.mean, style.mean)
            means.append(torch.sigmoid(logits).float().cpu())
            losses.append(vae_reconstruction_nll(vae, logits.float(), batch).cpu())
    return Reconstruction(torch.cat(means), torch.cat(losses))


@torch.no_grad()
def mean_image_nll(vae: GaussianVAE, images: torch.Tensor, mean_image: torch.Tensor
                   ) -> torch.Tensor:
    """Per-image NLL `(n,)` (nats per image) of predicting every image by one
    `mean_image` `(1, H, W)` in [0, 1], under `vae`'s likelihood (and, for a Gaussian,
    its learned scale): the baseline a reconstruction must beat."""
    probabilities = mean_image.clamp(1e-6, 1 - 1e-6).expand_as(images)
    logits = torch.logit(probabilities).to(module_device(vae))
    return vae_reconstruction_nll(vae, logits, images.to(logits.device)).cpu()


def squared_error(predictions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image sum of squared pixel differences `(n,)` between pixel means and images
    `(n, 1, H, W)`; `predictions` broadcast, so one mean image `(1, H, W)` serves all.

    Beside the NLL because it means the same under every likelihood: a Gaussian NLL of
    continuous intensities can be negative, and its ratio to the mean image's then says
    nothing, while the squared error's ratio is always "how much of the mean image's
    error is left"."""
    return (predictions.float() - images.float()).square().flatten(1).sum(1)


def nll_ratio(model_nll: float, mean_image_nll: float) -> float | None:
    """`model_nll / mean_image_nll` where both are positive (as Bernoulli NLLs always
    are); None where a density's NLL is not, since a ratio of signed numbers ranks
    nothing."""
    if model_nll <= 0 or mean_image_nll <= 0:
        return None
    return model_nll / mean_image_nll


def dataset_mean_image(dataset: FewShotDataset) -> torch.Tensor:
    """Mean pixel over every image of `dataset`: `(1, H, W)` float in [0, 1]."""
    return torch.from_numpy(dataset.pixel_mean() / 255.0).float().unsqueeze(0)


def episode_images(dataset: FewShotDataset, n_way: int, n_shot: int = 1, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The support set of the first `n_way`-way `n_shot`-shot episode with `seed` (the
    same episode `gaussmem evaluate --seed` starts with): `(images (n_way * n_shot, 1,
    H, W), class_indices (n_way,))`."""
    episode = episode_sampler(dataset, n_way, n_shot, 0, seed=seed).sample()
    return episode.support_images, episode.class_indices


# --- one-shot generation from memory ---------------------------------------------------
@dataclass
class Generation:
    """`samples (n_classes, n_samples, 1, H, W)` pixel means drawn from each class's
    memory entry; `entry_means`, `entry_variances` `(n_classes, d_c)` the entries used."""

    samples: torch.Tensor
    entry_means: torch.Tensor
    entry_variances: torch.Tensor


@torch.no_grad()
def write_examples_to_memory(vae: GaussianVAE, images: torch.Tensor, labels: torch.Tensor
                             ) -> GaussianMemory:
    """A fresh memory holding the examples' q(z_c|x), one entry per label (shots merged
    by moment matching, as in support-query evaluation)."""
    check_image_size(vae, images)
    with _EvalMode(vae):
        content = vae.encode_content(images.to(module_device(vae)))
    n_labels = int(labels.max()) + 1
    memory = GaussianMemory(n_labels, vae.config.content_dim, seed=0)
    memory.write_support_(content.mean.cpu(), content.var.cpu(), labels.cpu())
    return memory


def memory_entry_for_labels(memory: GaussianMemory, labels: torch.Tensor
                            ) -> DiagonalGaussian:
    """The stored Gaussian of each label `(n,)`: `DiagonalGaussian` of `(n, d_c)`."""
    slots = []
    for label in labels.tolist():
        found = ((memory.labels == label) & memory.valid).nonzero()[:, 0]
        if not len(found):
            raise GenerativeError(f"no memory entry holds label {label}")
        slots.append(int(found[0]))
    means, variances = memory.entries(torch.tensor(slots))
    return DiagonalGaussian(means, variances.log())


@torch.no_grad()
def generate_from_memory(vae: GaussianVAE, examples: torch.Tensor, labels: torch.Tensor,
                         n_samples: int, seed: int = 0, temperature: float = 1.0,
                         style_prior: ConditionalStylePrior | None = None) -> Generation:
    """One-shot generation: write `examples (n, 1, H, W)` with `labels (n,)` (0..L-1)
    into a fresh memory, then for each label draw `n_samples` images from
    decode(z_c ~ entry, z_s ~ N(0, temperature^2 I)) (z_c = the entry's mean for a
    decoder trained on means, `VAEConfig.content_to_decoder`); with `style_prior`, z_s
    is drawn from its Gaussian given the entry's mean instead (gaussmem.style_prior),
    its spread scaled by the temperature alike. Temperature 1 samples the prior; below 1
    the drawings are more typical and less varied, at 0 every drawing of a class is
    decoded from the prior's mean.

    Seeded by its own `torch.Generator(seed)`: the same call gives the same pixels,
    whatever the global RNG did.
    """
    if n_samples < 1:
        raise GenerativeError(f"n_samples must be >= 1, got {n_samples}")
    if not temperature >= 0 or math.isinf(temperature):
        raise GenerativeError(f"temperature must be a finite number >= 0, got {temperature}")
    memory = write_examples_to_memory(vae, examples, labels)
    unique_labels = torch.unique(labels)
    entry = memory_entry_for_labels(memory, unique_labels)
    generator = torch.Generator().manual_seed(seed)
    n_classes, content_dim = entry.mean.shape
    if style_prior is not None and tuple(style_prior.weights.shape) != (
            content_dim + 1, vae.config.style_dim):
        raise GenerativeError(
            f"the style prior maps a {style_prior.weights.shape[0] - 1}-d z_c to a "
            f"{style_prior.weights.shape[1]}-d z_s; this model has {content_dim} and "
            f"{vae.config.style_dim}: fit it on this model")
    noise_content = torch.randn(n_classes, n_samples, content_dim, generator=generator)
    noise_style = temperature * torch.randn(n_classes * n_samples, vae.config.style_dim,
                                            generator=generator)
    # A decoder trained on posterior means (`content_to_decoder`) reads the entry's mean;
    # the drawings then differ by their z_s alone.
    spread = (entry.var.sqrt()[:, None] if vae.config.content_to_decoder == "sample"
              else 0.0)
    z_content = (entry.mean[:, None] + spread * noise_content).flatten(0, 1)
    z_style = (noise_style if style_prior is None else style_prior.sample(
        entry.mean.repeat_interleave(n_samples, dim=0), noise_style))
    device = module_device(vae)
    with _EvalMode(vae):
        logits = vae.decode(z_content.to(device), z_style.to(device))
    samples = torch.sigmoid(logits).cpu().unflatten(0, (n_classes, n_samples))
    return Generation(samples, entry.mean, entry.var)


# --- style transfer ---------------------------------------------------------------------
@torch.no_grad()
def style_transfer(vae: GaussianVAE, content_images: torch.Tensor, style_images: torch.Tensor
                   ) -> torch.Tensor:
    """`(n_style, n_content, 1, H, W)`: cell (i, j) = sigmoid(decode(E[z_c | content_j],
    E[z_s | style_i])), i.e. content j drawn in style i."""
    check_image_size(vae, content_images)
    check_image_size(vae, style_images)
    device = module_device(vae)
    with _EvalMode(vae):
        content = vae.encode(content_images.to(device)).content.mean
        style = vae.encode(style_images.to(device)).style.mean
        n_style, n_content = len(style), len(content)
        z_content = content.repeat(n_style, 1)
        z_style = style.repeat_interleave(n_content, dim=0)
        logits = vae.decode(z_content, z_style)
    return torch.sigmoid(logits).cpu().unflatten(0, (n_style, n_content))


# --- z_c vs z_s ---------------------------------------------------------------------------
@dataclass
class LatentCheck:
    """Nearest-support accuracy (percent, 95% CI) from each latent alone."""

    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    content: AccuracySummary
    style: AccuracySummary
    chance: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def nearest_support_predictions(query: DiagonalGaussian, support: DiagonalGaussian,
                                support_labels: torch.Tensor) -> torch.Tensor:
    """Label of each query's nearest support posterior by symmetric KL: `(n_query,)`."""
    divergence = pairwise_symmetric_kl(query.mean, query.var, support.mean, support.var)
    return support_labels[divergence.argmin(dim=1)]


@torch.no_grad()
def latent_nearest_accuracy(vae: GaussianVAE, dataset: FewShotDataset, *, n_way: int,
                            n_shot: int = 1, n_query: int = 5, episodes: int = 300,
                            seed: int = 0) -> LatentCheck:
    """Classify each query by its nearest support image, once with q(z_c|x) only and
    once with q(z_s|x) only, on the same seeded episodes.

    If the model separates content from style as intended, z_c is far above chance and
    z_s near chance (1/n_way). Nearest support example, not a merged class entry, so the
    two latents are compared on the same footing whatever n_shot is.
    """
    sampler = episode_sampler(dataset, n_way, n_shot, n_query, seed=seed)
    correct = {"content": np.zeros(episodes), "style": np.zeros(episodes)}
    device = module_device(vae)
    with _EvalMode(vae):
        for index in range(episodes):
            episode = sampler.sample()
            images = torch.cat([episode.support_images, episode.query_images]).to(device)
            posteriors = vae.encode(images)
            n_support = len(episode.support_labels)
            for name in ("content", "style"):
                gaussian = getattr(posteriors, name)
                support = DiagonalGaussian(gaussian.mean[:n_support],
                                           gaussian.log_var[:n_support])
                query = DiagonalGaussian(gaussian.mean[n_support:],
                                         gaussian.log_var[n_support:])
                predictions = nearest_support_predictions(
                    query, support, episode.support_labels.to(device)).cpu()
                correct[name][index] = (predictions == episode.query_labels).double().mean()
    return LatentCheck(n_way, n_shot, n_query, episodes, seed,
                       AccuracySummary.from_values(correct["content"]),
                       AccuracySummary.from_values(correct["style"]), 100.0 / n_way)


@torch.no_grad()
def decoder_sensitivity(vae: GaussianVAE, images: torch.Tensor) -> dict[str, float]:
    """How much the decoder listens to each latent: mean absolute change of the
    pixel means (per pixel, in [0, 1]) when z_c, resp. z_s, is replaced by that of
    another image (posterior means; image i takes image i+1's latent).

    A decoder that ignores z_c gives `content_swap` ~ 0: then reconstructions and
    generations are decided by z_s alone, however well z_c classifies.
    Returns `{"content_swap", "style_swap"}`.
    """
    check_image_size(vae, images)
    if len(images) < 2:
        raise GenerativeError("decoder_sensitivity needs at least 2 images")
    with _EvalMode(vae):
        content, style = vae.encode(images.to(module_device(vae)))
        base = torch.sigmoid(vae.decode(content.mean, style.mean))
        swapped_content = torch.sigmoid(vae.decode(content.mean.roll(1, 0), style.mean))
        swapped_style = torch.sigmoid(vae.decode(content.mean, style.mean.roll(1, 0)))
    return {"content_swap": float((swapped_content - base).abs().mean()),
            "style_swap": float((swapped_style - base).abs().mean())}


# --- checkpoints and data ---------------------------------------------------------------
def vae_from_checkpoint(checkpoint_path: str | Path) -> tuple[GaussianVAE, dict[str, Any]]:
    """The trained `GaussianVAE` of an MA-VAE checkpoint (eval mode, CPU) and the
    checkpoint dict. `CheckpointError` for a missing/corrupt file, `GenerativeError` for
    a checkpoint of a method without a VAE."""
    checkpoint = load_checkpoint(checkpoint_path)
    method = checkpoint.get("config", {}).get("method")
    if method != MemoryAugmentedVAE.method_name:
        raise GenerativeError(f"{checkpoint_path} is a {method!r} checkpoint; reconstruction "
                              "and generation need a memory-augmented VAE ('mavae') checkpoint")
    classifier = classifier_from_checkpoint(checkpoint)
    assert isinstance(classifier, MemoryAugmentedVAE)
    return classifier.vae.eval(), checkpoint


def load_split(checkpoint: dict[str, Any], split: str, data_dir: Path | None,
               cache_dir: Path | None) -> FewShotDataset:
    """The `split` class subset of the dataset the checkpoint was trained on."""
    return load_dataset_split(checkpoint["config"]["data"], split, data_dir=data_dir,
                              cache_dir=cache_dir)
