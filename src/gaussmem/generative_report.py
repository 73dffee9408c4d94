"""The three numbers that say whether the model is generative, on seeded held-out episodes.

* Reconstruction: the negative log-likelihood per image of decoding each image's
  posterior means, over `n_way`-way episodes, against predicting every image by the
  split's mean image (`ratio` < 1 beats it; a decoder that ignores its latents sits at 1).
* Content: how much the decoded pixels change when z_c, resp. z_s, is swapped with
  another image's (`decoder_sensitivity`). A model whose class lives in z_c changes
  more with z_c.
* One-shot generation: one example of each of `n_way` new classes is written into a
  fresh memory, drawings are sampled from each entry (z_c from the stored Gaussian, z_s
  from the prior), and an independently trained few-shot classifier (the judge), given
  the stored examples as its support, says which class each drawing is. The judge's
  accuracy on real drawings of the same classes is its ceiling; chance is 1 / n_way.
  Its accuracy on the reconstructions of the stored examples themselves separates the
  two ways to fail: drawings of the wrong class, or drawings too blurred for a judge
  that only ever saw crisp strokes (then the reconstructions fail too). Its accuracy on
  the real drawings smoothed by a 3x3 box filter says how much of that is the judge's:
  a judge that fails on slightly blurred real drawings measures crispness, not class.
  So for stroke models the judge sees every image, real or decoded, support or query,
  through `stroke_view`, which maps a crisp drawing and a blurred one of the same
  strokes to nearly the same ink.
  Its accuracy on the generations when its support is those reconstructions instead
  (`generated_against_reconstructions`) compares drawings as blurred as each other: it
  says whether a generation is of its source class as the model draws that class,
  whatever the decoder's sharpness.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gaussmem.accuracy import AccuracySummary
from gaussmem.data.datasets import FewShotDataset, episode_sampler
from gaussmem.generative import (
    dataset_mean_image,
    decoder_sensitivity,
    generate_from_memory,
    mean_image_nll,
    nll_ratio,
    reconstruct,
    squared_error,
)
from gaussmem.methods.base import FewShotClassifier
from gaussmem.models.vae import GaussianVAE
from gaussmem.plumbing.device import module_device
from gaussmem.style_prior import ConditionalStylePrior, prior_name


@dataclass
class ReconstructionSummary:
    """Mean NLL per image (nats) and mean squared error per image of the
    reconstructions and of the mean image."""

    likelihood: str
    n_way: int
    episodes: int
    mean_nll: float
    mean_image_nll: float
    mean_squared_error: float
    mean_image_squared_error: float

    @property
    def ratio(self) -> float | None:
        """The NLL's ratio to the mean image's; None for a negative density NLL."""
        return nll_ratio(self.mean_nll, self.mean_image_nll)

    @property
    def squared_error_ratio(self) -> float:
        return self.mean_squared_error / self.mean_image_squared_error

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio,
                "squared_error_ratio": self.squared_error_ratio}


#: The judge's views: "strokes" (`stroke_view`), "none" (images as they are).
JUDGE_VIEWS = ("strokes", "none")
#: `stroke_view`'s box filter (pixels) and the smoothed intensity that counts as ink:
#: chosen, with no model involved, as the view under which the judge labels real
#: validation drawings best on average crisp and blurred 3x3 and 5x5
#: (experiments/judge_view.py, results/objective/judge_view.json).
STROKE_VIEW_BOX = 3
STROKE_VIEW_INK = 0.2


def box_filter(images: torch.Tensor, box: int) -> torch.Tensor:
    """`images (n, 1, H, W)` averaged over `box` x `box` windows (the same size; edge
    windows average the pixels they hold)."""
    return F.avg_pool2d(images, box, stride=1, padding=box // 2, count_include_pad=False)


def stroke_view(images: torch.Tensor, box: int = STROKE_VIEW_BOX, ink: float = STROKE_VIEW_INK
                ) -> torch.Tensor:
    """`images (n, 1, H, W)` in [0, 1] as ink (1) where their `box` x `box` mean exceeds
    `ink`, else 0.

    The judge is a few-shot classifier trained on crisp strokes; a decoder's pixel
    means are soft at the edges. Smoothing first and thresholding low turns a crisp
    stroke and a blurred copy of it into nearly the same band of ink, so the judge
    compares what was drawn, not how sharply."""
    return (box_filter(images, box) > ink).to(images.dtype)


def judge_view_for(vae: GaussianVAE, view: str) -> str:
    """The view to judge `vae`'s images through: "auto" is "strokes" for a Bernoulli
    (stroke) model and "none" for grey photographs, which have no ink to threshold."""
    if view == "auto":
        return "strokes" if vae.config.likelihood == "bernoulli" else "none"
    if view not in JUDGE_VIEWS:
        raise ValueError(f"judge view must be 'auto' or one of {JUDGE_VIEWS}, got {view!r}")
    return view


@dataclass
class GenerationSummary:
    """Percent of generated drawings the judge assigns to their source class."""

    n_way: int
    samples_per_class: int
    generated: AccuracySummary
    real_images: AccuracySummary
    reconstructions: AccuracySummary
    blurred_real_images: AccuracySummary
    generated_against_reconstructions: AccuracySummary
    chance: float
    judge_view: str
    #: z_s of the generated drawings ~ N(0, temperature^2 I), or the style prior's
    #: Gaussian given z_c with its spread scaled by the temperature.
    temperature: float
    #: "standard" (N(0, I)) or "conditional" (gaussmem.style_prior).
    style_prior: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode_supports(dataset: FewShotDataset, *, n_way: int = 100, episodes: int = 10,
                     seed: int = 0) -> list[torch.Tensor]:
    """The support images `(n_way, 1, H, W)` of `episodes` seeded `n_way`-way 1-shot
    episodes (the episodes `gaussmem evaluate --seed` draws): drawn once, then shared by
    the reconstruction and content numbers."""
    sampler = episode_sampler(dataset, min(n_way, dataset.n_classes), 1, 0, seed=seed)
    return [sampler.sample().support_images for _ in range(episodes)]


@torch.no_grad()
def reconstruction_summary(vae: GaussianVAE, dataset: FewShotDataset,
                           supports: list[torch.Tensor]) -> ReconstructionSummary:
    """Reconstruction NLL over `supports` (`episode_supports`) against `dataset`'s mean
    image."""
    mean_image = dataset_mean_image(dataset)
    reconstructions = [reconstruct(vae, images) for images in supports]
    baseline_nll = [mean_image_nll(vae, images, mean_image) for images in supports]
    model_error = [squared_error(result.images, images)
                   for result, images in zip(reconstructions, supports, strict=True)]
    baseline_error = [squared_error(mean_image, images) for images in supports]
    return ReconstructionSummary(vae.config.likelihood, len(supports[0]), len(supports),
                                 float(torch.cat([r.nll for r in reconstructions]).mean()),
                                 float(torch.cat(baseline_nll).mean()),
                                 float(torch.cat(model_error).mean()),
                                 float(torch.cat(baseline_error).mean()))


@torch.no_grad()
def posterior_spread(vae: GaussianVAE, supports: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """For z_c and z_s over `supports` (`episode_supports`), per episode and averaged:
    the posterior variance (mean over images and dimensions), the variance of the
    posterior means across the episode's images (mean over dimensions), and their
    ratio, the signal-to-noise of one sample. Near or below 1, one sample of the latent
    says little about which image it came from, and a decoder trained on samples learns
    to look elsewhere."""
    totals = {name: {"posterior_variance": 0.0, "variance_of_means": 0.0}
              for name in ("content", "style")}
    device = module_device(vae)
    for images in supports:
        posteriors = vae.encode(images.to(device))
        for name in totals:
            gaussian = getattr(posteriors, name)
            totals[name]["posterior_variance"] += float(gaussian.var.mean()) / len(supports)
            totals[name]["variance_of_means"] += (float(gaussian.mean.var(dim=0).mean())
                                                  / len(supports))
    return {name: {**values, "signal_to_noise": values["variance_of_means"]
                   / values["posterior_variance"]} for name, values in totals.items()}


@torch.no_grad()
def content_sensitivity(vae: GaussianVAE, supports: list[torch.Tensor]) -> dict[str, float]:
    """`decoder_sensitivity` averaged over `supports` (`episode_supports`):
    `{"content_swap", "style_swap"}` (mean |change| of the pixel means)."""
    totals = {"content_swap": 0.0, "style_swap": 0.0}
    for images in supports:
        for name, value in decoder_sensitivity(vae, images).items():
            totals[name] += value / len(supports)
    return totals


@torch.no_grad()
def generation_accuracy(vae: GaussianVAE, judge: FewShotClassifier, dataset: FewShotDataset,
                        *, n_way: int = 20, episodes: int = 50, samples_per_class: int = 5,
                        n_query: int = 5, seed: int = 0, view: str = "auto",
                        temperature: float = 1.0,
                        style_prior: ConditionalStylePrior | None = None
                        ) -> GenerationSummary:
    """One-shot generation judged by `judge` (eval mode, CPU) over seeded `n_way`-way
    1-shot episodes: per episode, the judge's support is the stored examples, its
    queries the drawings generated from their memory entries and, for its ceilings, the
    episode's real query drawings and the reconstructions of the stored examples; then
    with the reconstructions as its support, the generated drawings again. The judge
    sees every image through `view` (`judge_view_for`); the drawings' z_s comes from
    N(0, temperature^2 I) or `style_prior` (`generate_from_memory`)."""
    n_way = min(n_way, dataset.n_classes)
    sampler = episode_sampler(dataset, n_way, 1, n_query, seed=seed)
    view = judge_view_for(vae, view)
    seen = stroke_view if view == "strokes" else (lambda images: images)
    judge.eval()
    generated, real, reconstructed, blurred, against_reconstructions = (
        np.zeros(episodes) for _ in range(5))
    for index in range(episodes):
        episode = sampler.sample()
        generation = generate_from_memory(vae, episode.support_images, episode.support_labels,
                                          samples_per_class, seed=seed + index,
                                          temperature=temperature, style_prior=style_prior)
        drawings = seen(generation.samples.flatten(0, 1))
        reconstructions = seen(reconstruct(vae, episode.support_images).images)
        judge.fit(seen(episode.support_images), episode.support_labels)
        source = torch.unique(episode.support_labels).repeat_interleave(samples_per_class)
        generated[index] = (judge.predict(drawings) == source).double().mean()
        real[index] = (judge.predict(seen(episode.query_images)) == episode.query_labels
                       ).double().mean()
        reconstructed[index] = (judge.predict(reconstructions) == episode.support_labels
                                ).double().mean()
        smoothed = F.avg_pool2d(episode.query_images, 3, stride=1, padding=1)
        blurred[index] = (judge.predict(seen(smoothed)) == episode.query_labels
                          ).double().mean()
        judge.fit(reconstructions, episode.support_labels)
        against_reconstructions[index] = (judge.predict(drawings) == source).double().mean()
    return GenerationSummary(n_way, samples_per_class, AccuracySummary.from_values(generated),
                             AccuracySummary.from_values(real),
                             AccuracySummary.from_values(reconstructed),
                             AccuracySummary.from_values(blurred),
                             AccuracySummary.from_values(against_reconstructions),
                             100.0 / n_way, view, temperature,
                             prior_name(style_prior))
