"""Which unknown score should the recognizer ship? AUROC of each on validation classes.

    python experiments/unknown_scores.py --checkpoint runs/x/checkpoints/best.ckpt \
        [--episodes 600] [--seed 0] [--json results/open_set/unknown_scores.json]

Open-set episodes of the Omniglot validation split (never the test classes): 10 classes
drawn per episode, the first 5 known (one drawing each enrolled in an empty gallery with
`Recognizer.enroll_encoded`), the other 5 unknown; 15 other drawings of each of the 10
classes are queries. Per episode and score, the AUROC of telling known queries from
unknown ones; mean and 95% CI over episodes, plus the closed-set accuracy on known
queries. Each validation image is encoded once.

Scored: the recognizer's scores (`gaussmem.unknown`), and two candidates computed here
only, which the recognizer would ship if they won:
  reconstruction_gap  minus how much worse the query is decoded from its nearest
                      entry's z_c (with its own z_s) than from its own z_c, in nats: the
                      generative half's say (a known query's entry draws it, an unknown's
                      draws another character);
  background_gap      the query's divergence to the nearest of a fixed background (one
                      drawing of each training class) minus that to its nearest entry: a
                      likelihood ratio against the world, as speaker verification does.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from gaussmem.checkpoint import file_sha256
from gaussmem.data.episodes import EpisodeSampler
from gaussmem.data.omniglot import load_omniglot
from gaussmem.gaussian import pairwise_symmetric_kl
from gaussmem.losses import vae_reconstruction_nll
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.recognizer import Recognizer
from gaussmem.unknown import UNKNOWN_SCORES

N_KNOWN, N_UNKNOWN, N_SHOT, N_QUERY = 5, 5, 1, 15
CANDIDATES = ("reconstruction_gap", "background_gap")


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of a known query > score of an unknown one), ties counting half
    (Mann-Whitney U over all pairs)."""
    known, unknown = known[:, None], unknown[None, :]
    return float(((known > unknown).sum() + 0.5 * (known == unknown).sum())
                 / (known.size * unknown.size))


def mean_ci95(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    half = 1.96 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else math.nan
    return {"mean": float(array.mean()), "ci95": float(half)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="results/open_set/unknown_scores.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    recognizer = Recognizer.from_checkpoint(args.checkpoint)
    classifier = recognizer.classifier
    vae = classifier.vae.eval()
    val = load_omniglot("vinyals", "val")
    train = load_omniglot("vinyals", "train")
    with torch.no_grad():
        pixels = val.sample_tensor(np.arange(val.n_classes * val.n_samples_per_class))
        content = classifier.content_posterior(classifier.embed(pixels))
        background = classifier.content_posterior(classifier.embed(train.sample_tensor(
            np.arange(train.n_classes) * train.n_samples_per_class)))
        style = torch.cat([vae.encode(batch).style.mean for batch in pixels.split(1024)])
        # Each drawing decoded from its own posterior means: the reconstruction gap's
        # reference, the same in every episode the drawing is a query of.
        own_nll = torch.cat([vae_reconstruction_nll(vae, vae.decode(
            content.mean[rows], style[rows]), pixels[rows])
            for rows in torch.arange(len(pixels)).split(1024)])
    mu, var = content.mean, content.var
    background_divergence = pairwise_symmetric_kl(
        mu, var, background.mean, background.var, chunk_size=1024).min(dim=1).values
    class_index = {f"class{i}": i for i in range(N_KNOWN)}
    sampler = EpisodeSampler(val, N_KNOWN + N_UNKNOWN, N_SHOT, N_QUERY, seed=args.seed)
    aurocs: dict[str, list[float]] = {name: [] for name in UNKNOWN_SCORES + CANDIDATES}
    accuracies = []
    for _ in range(args.episodes):
        ids = sampler.sample_ids()
        known_support = ids.support_ids[:N_KNOWN * N_SHOT]
        recognizer.clear()
        names = [f"class{i}" for i in range(N_KNOWN) for _ in range(N_SHOT)]
        recognizer.enroll_encoded(names, mu[known_support], var[known_support])
        query_ids = ids.query_ids
        is_known = np.arange(len(query_ids)) < N_KNOWN * N_QUERY
        for name in UNKNOWN_SCORES:
            results = recognizer.recognize_encoded(mu[query_ids], var[query_ids], k=2,
                                                   score=name, threshold=-math.inf)
            scores = np.array([result.score for result in results])
            aurocs[name].append(auroc(scores[is_known], scores[~is_known]))
        nearest_support = torch.as_tensor(known_support)[
            [class_index[result.nearest] for result in results]]
        queries = torch.as_tensor(query_ids)
        with torch.no_grad():
            from_entry = vae_reconstruction_nll(vae, vae.decode(
                mu[nearest_support], style[queries]), pixels[queries])
        divergence = torch.tensor([result.divergence for result in results])
        candidates = {"reconstruction_gap": -(from_entry - own_nll[queries]),
                      "background_gap": background_divergence[queries] - divergence}
        for name, scores in candidates.items():
            scores = scores.double().numpy()
            aurocs[name].append(auroc(scores[is_known], scores[~is_known]))
        truth = [name for name in class_index for _ in range(N_QUERY)]
        accuracies.append(float(np.mean([result.nearest == label for result, label
                                         in zip(results, truth, strict=False)])))
    summary = {name: mean_ci95(values) for name, values in aurocs.items()}
    best = max(summary, key=lambda name: summary[name]["mean"])
    shipped = max(UNKNOWN_SCORES, key=lambda name: summary[name]["mean"])
    document = {
        "benchmark": "unknown_scores",
        "protocol": {"split": "omniglot/vinyals/val", "n_known": N_KNOWN,
                     "n_unknown": N_UNKNOWN, "n_shot": N_SHOT, "n_query": N_QUERY,
                     "episodes": args.episodes, "seed": args.seed},
        "checkpoint": {"path": str(args.checkpoint), "sha256": file_sha256(args.checkpoint)},
        "auroc": summary,
        "closed_set_accuracy": mean_ci95(accuracies),
        "candidates_not_in_the_recognizer": list(CANDIDATES),
        "best": best,
        "best_of_the_recognizer": shipped,
        **provenance(),
    }
    write_json(args.json, document)
    for name, values in summary.items():
        print(f"{name:>10}: AUROC {values['mean']:.4f} +- {values['ci95']:.4f}")
    print(f"best: {best}; closed-set accuracy {document['closed_set_accuracy']['mean']:.4f}; "
          f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
