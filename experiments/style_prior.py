"""Where should one-shot generation draw z_s: N(0, I), the aggregate posterior, a cooler
N(0, T^2 I), or the conditional style prior given the entry's z_c? Measured on
validation classes.

    python experiments/style_prior.py --checkpoint runs/x/checkpoints/best.ckpt \
        --judge runs/judge-protonet-strokes/checkpoints/best.ckpt \
        [--temperatures 0.8 0.6 0.4] [--episodes 50] [--seed 0] \
        [--json results/objective/style_prior.json]

Generation decodes a memory entry's z_c with a z_s drawn from the prior N(0, I), the one
training assumes. A VAE's aggregate posterior often fails to fill its prior, and a z_s
drawn where no training drawing's posterior lies decodes to a drawing the decoder never
learnt to make; ex-post density estimation (Ghosh et al. 2020) samples a density fitted
to the posteriors instead. Here that density is the Gaussian matching the first two
moments of the aggregate posterior (1/n) sum_i q(z_s | x_i) over two drawings of up to
1,024 training classes: mean of the posterior means; covariance of the posterior means
plus the mean posterior variance. For each prior, on the same 20-way 1-shot validation
episodes and the same noise: the share of generated drawings the judge labels as their
source class (`generation_accuracy`, through the judge's view) and the samples'
diversity, the mean absolute pixel difference between two drawings generated from one
entry, beside the same difference between two real drawings of one class. Each
temperature T below 1 (`generate_from_memory(temperature=T)`, `gaussmem generate
--temperature`) trades that diversity for drawings nearer the entry's typical one: the
record shows how much accuracy each step of diversity buys. The conditional prior
(gaussmem.style_prior, fitted on the training split) draws z_s from the Gaussian of how
z_s goes with z_c's mean in training drawings; set beside the temperatures, the record
says whether it buys accuracy beyond what its narrower spread alone would.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from judge_view import add_judging_arguments
from torch import nn

from gaussmem import generative_report
from gaussmem.checkpoint import file_sha256, load_checkpoint
from gaussmem.data.datasets import FewShotDataset, episode_sampler
from gaussmem.generative import generate_from_memory, load_split
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.models.vae import GaussianVAE
from gaussmem.plumbing.script_record import merge_by_identity, provenance, read_json, write_json
from gaussmem.style_prior import (
    ConditionalStylePrior,
    conditional_style_prior_from,
    encode_drawings,
)

FIT_CLASSES, FIT_DRAWINGS = 1024, 2


class FittedStylePrior(nn.Module):
    """`vae` for generation whose z_s ~ N(mean, scale scale^T): `decode` maps the
    standard normal noise generation passes as z_s through the prior's affine map."""

    def __init__(self, vae: GaussianVAE, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.vae, self.config = vae, vae.config
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def encode_content(self, images: torch.Tensor):
        return self.vae.encode_content(images)

    def decode(self, content: torch.Tensor, style_noise: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(content, self.mean + style_noise @ self.scale.T)


def aggregate_posterior_gaussian(vae: GaussianVAE, dataset: FewShotDataset, seed: int
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean, Cholesky factor)` of the moment-matched aggregate posterior of z_s."""
    encoded = encode_drawings(vae, dataset, seed=seed, classes=FIT_CLASSES,
                              drawings=FIT_DRAWINGS)
    means, variances = encoded.style_means.double(), encoded.style_variances.double()
    covariance = torch.cov(means.T, correction=0) + torch.diag(variances.mean(dim=0))
    return means.mean(dim=0).float(), torch.linalg.cholesky(covariance).float()


@contextlib.contextmanager
def generating_with(model: nn.Module) -> Iterator[None]:
    """Within the block, `generation_accuracy` generates with `model` (its reconstructions
    and everything else still use the VAE it is given)."""
    original = generative_report.generate_from_memory

    def generate(vae, *args, **kwargs):
        return original(model, *args, **kwargs)

    generative_report.generate_from_memory = generate
    try:
        yield
    finally:
        generative_report.generate_from_memory = original


def mean_pairwise_difference(drawings: torch.Tensor) -> float:
    """Mean |pixel difference| between two different drawings of one class, over the
    classes of `drawings (classes, drawings per class, ...)`."""
    flat = drawings.flatten(2)
    off_diagonal = ~torch.eye(flat.shape[1], dtype=torch.bool)
    pairwise = (flat[:, :, None] - flat[:, None]).abs().mean(dim=3)
    return float(pairwise[:, off_diagonal].mean())


def diversity(model: nn.Module, dataset: FewShotDataset, *, episodes: int, samples: int,
              seed: int, temperature: float = 1.0,
              style_prior: ConditionalStylePrior | None = None) -> float:
    """Mean |pixel difference| between two drawings generated from one entry, over the
    entries of `episodes` seeded 20-way 1-shot episodes."""
    sampler = episode_sampler(dataset, min(20, dataset.n_classes), 1, 0, seed=seed)
    values = []
    for index in range(episodes):
        episode = sampler.sample()
        values.append(mean_pairwise_difference(generate_from_memory(
            model, episode.support_images, episode.support_labels, samples,
            seed=seed + index, temperature=temperature, style_prior=style_prior).samples))
    return float(np.mean(values))


def real_diversity(dataset: FewShotDataset, *, episodes: int, samples: int, seed: int
                   ) -> float:
    """`diversity`'s measure on real drawings: `samples` query drawings of each class of
    the same seeded episodes' classes."""
    sampler = episode_sampler(dataset, min(20, dataset.n_classes), 1, samples, seed=seed)
    values = []
    for _ in range(episodes):
        episode = sampler.sample()
        order = torch.argsort(episode.query_labels, stable=True)
        grouped = episode.query_images[order].unflatten(0, (-1, samples))
        values.append(mean_pairwise_difference(grouped))
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--temperatures", type=float, nargs="*", default=[0.8, 0.6, 0.4],
                        help="N(0, T^2 I) priors measured besides N(0, I)")
    add_judging_arguments(parser, "style_prior.json")
    args = parser.parse_args(argv)
    judge = classifier_from_checkpoint(load_checkpoint(args.judge)).eval()
    checkpoint = load_checkpoint(args.checkpoint)
    vae = classifier_from_checkpoint(checkpoint).vae.eval()
    train_set = load_split(checkpoint, "train", args.data_dir, args.cache_dir)
    val_set = load_split(checkpoint, "val", args.data_dir, args.cache_dir)
    mean, scale = aggregate_posterior_gaussian(vae, train_set, args.seed)
    conditional = conditional_style_prior_from(vae, train_set, seed=args.seed)
    if conditional is None:
        parser.error(f"{train_set.name} has too few drawings to fit the conditional prior")
    candidates = [("standard N(0, I)", vae, 1.0, None),
                  ("aggregate posterior", FittedStylePrior(vae, mean, scale).eval(), 1.0, None),
                  ("conditional on z_c", vae, 1.0, conditional)]
    candidates += [(f"N(0, T^2 I), T = {t:g}", vae, t, None) for t in args.temperatures]
    diversity_episodes = min(args.episodes, 10)
    real_spread = real_diversity(val_set, episodes=diversity_episodes, samples=5,
                                 seed=args.seed)
    print(f"real drawings: diversity {real_spread:.4f}")
    priors = {}
    for name, model, temperature, prior in candidates:
        with generating_with(model):
            summary = generative_report.generation_accuracy(vae, judge, val_set,
                                                            episodes=args.episodes,
                                                            seed=args.seed,
                                                            temperature=temperature,
                                                            style_prior=prior)
        spread = diversity(model, val_set, episodes=diversity_episodes, samples=5,
                           seed=args.seed, temperature=temperature, style_prior=prior)
        priors[name] = {"generated": summary.generated.mean,
                        "generated_ci95": summary.generated.ci95,
                        "real_drawings": summary.real_images.mean, "diversity": spread,
                        "temperature": temperature, "judge_view": summary.judge_view}
        print(f"{name}: generations judged as their class {summary.generated.mean:.1f}% "
              f"± {summary.generated.ci95:.1f} (real drawings {summary.real_images.mean:.1f}%),"
              f" diversity {spread:.4f}", flush=True)
    print("aggregate posterior of z_s: mean "
          f"{[round(float(value), 2) for value in mean]}, standard deviations "
          f"{[round(float(value), 2) for value in scale.diagonal()]}")
    record = {"experiment": "style_prior", **provenance(), "split": "val", "n_way": 20,
              "episodes": args.episodes, "seed": args.seed,
              "checkpoint": {"path": str(args.checkpoint),
                             "sha256": file_sha256(args.checkpoint),
                             "step": checkpoint["step"]},
              "judge": {"path": str(args.judge), "sha256": file_sha256(args.judge)},
              "aggregate_posterior": {"mean": mean.tolist(),
                                      "cholesky_diagonal": scale.diagonal().tolist()},
              "conditional_prior": {"drawings": conditional.n_drawings,
                                    "weights": conditional.weights.tolist(),
                                    "cholesky": conditional.cholesky.tolist()},
              "real_drawings_diversity": real_spread, "priors": priors}
    records = merge_by_identity(read_json(args.json) or [], record,
                                lambda r: (r["checkpoint"]["sha256"], r["judge"]["sha256"]))
    write_json(args.json, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
