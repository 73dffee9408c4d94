"""Diagnostic: how a trained MA-VAE's 5-shot accuracy depends on the class entry.

    python experiments/five_shot_entries.py --checkpoint runs/cpu-quick-s3/checkpoints/best.ckpt
        [--n-way 20] [--n-shot 5] [--episodes 500] [--json results/tuning/five_shot_entries.json]

On the validation split (never the test split), the same seeded episodes are scored
three ways from the same encoded posteriors q(z_c|x):
* `moment_matched`: the paper's entry, the support shots merged by moment matching
  (what `gaussmem evaluate` does): variance = mean variance + spread of the means;
* `averaged`: mean of the means and mean of the variances (no spread term);
* `nearest_shot`: no merging; a query takes the label of its nearest support shot.
If `averaged` or `nearest_shot` is clearly better, the spread term of the merge is
what costs the 5-shot cells, which tells where to look next.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gaussmem.accuracy import AccuracySummary
from gaussmem.checkpoint import file_sha256, load_checkpoint
from gaussmem.data.datasets import episode_sampler, load_split
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.evaluate import episode_predictions
from gaussmem.gaussian import pairwise_symmetric_kl
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.plumbing.script_record import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]


def best_label(scores: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Per query, the label whose best-scoring column is highest."""
    per_label = scores.new_full((len(scores), n_way), -torch.inf)
    return per_label.scatter_reduce_(1, labels.expand_as(scores), scores, "amax").argmax(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n-way", type=int, default=20)
    parser.add_argument("--n-shot", type=int, default=5)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(ROOT / "results" / "tuning"
                                              / "five_shot_entries.json"))
    args = parser.parse_args()
    checkpoint = load_checkpoint(Path(args.checkpoint))
    classifier = classifier_from_checkpoint(checkpoint)
    if not isinstance(classifier, MemoryAugmentedVAE):
        raise SystemExit(f"{args.checkpoint} is not an MA-VAE checkpoint")
    dataset = load_split(checkpoint["config"]["data"], "val")
    cache = EmbeddingCache(classifier, dataset)
    sampler = episode_sampler(dataset, args.n_way, args.n_shot, args.n_query, seed=args.seed)
    accuracy: dict[str, list[float]] = {"moment_matched": [], "averaged": [],
                                        "nearest_shot": []}
    with torch.no_grad():
        for _ in range(args.episodes):
            ids = sampler.sample_ids()
            support, queries = cache.lookup(ids.support_ids), cache.lookup(ids.query_ids)
            support_labels, query_labels = ids.support_labels(), ids.query_labels()
            predictions = {"moment_matched": episode_predictions(classifier, cache, ids)}
            shots = classifier.content_posterior(support)
            query = classifier.content_posterior(queries)
            means = shots.mean.view(args.n_way, args.n_shot, -1).mean(1)
            variances = shots.var.view(args.n_way, args.n_shot, -1).mean(1)
            predictions["averaged"] = pairwise_symmetric_kl(
                query.mean, query.var, means, variances).argmin(1)
            to_shots = -pairwise_symmetric_kl(query.mean, query.var, shots.mean, shots.var)
            predictions["nearest_shot"] = best_label(to_shots, support_labels[None, :],
                                                     args.n_way)
            for name, predicted in predictions.items():
                accuracy[name].append(float((predicted == query_labels).double().mean()))
    results = {name: AccuracySummary.from_values(np.asarray(values)).__dict__
               for name, values in accuracy.items()}
    for name, summary in results.items():
        print(f"{name}: {summary['mean']:.2f} ± {summary['ci95']:.2f}")
    report = {**provenance(),
              "checkpoint": {"path": args.checkpoint,
                             "sha256": file_sha256(Path(args.checkpoint))},
              "split": "val", "dataset": dataset.name, "n_way": args.n_way,
              "n_shot": args.n_shot, "n_query": args.n_query, "episodes": args.episodes,
              "seed": args.seed, "results": results}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
