"""Diagnostic: which classes a trained model confuses in Omniglot support-query episodes.

    python experiments/episode_errors.py --checkpoint runs/RUN/checkpoints/last.ckpt
        [--cells 5w5s,5w1s,20w1s,20w5s] [--episodes 1000] [--seed 0] [--split test]
        [--json OUT]

Per cell, it scores the same seeded episodes as `gaussmem evaluate --protocol
support-query` with the same arguments, so its accuracy equals that evaluation's. Then
it sorts each wrong answer by how the predicted class relates to the query's own class.
Class names look like `Alphabet/characterNN/rotDDD`, and the vinyals split makes each
90-degree rotation of a character a class of its own. So there are three kinds of confusion:
* `other_rotation`: another rotation of the query's own character. Where the character
  looks the same under that rotation (an "o", a "+"), the two classes hold the same
  images and no model can tell them apart;
* `same_alphabet`: another character of the same alphabet;
* `other_alphabet`: a character of another alphabet.

It also reports:
* accuracy on queries whose episode holds another rotation of their character, and on
  the rest;
* each confused rotation pair's self-overlap: the stroke IoU of each drawing with the
  same drawing in the other rotation, averaged over drawings. This is near 1 for a
  character that is symmetric under that rotation. The median over the confused pairs
  is set beside the median over all rotation pairs of the split.
This tells how much of a cell's error is the split's rotation classes, which Kaiser et
al.'s split (no rotations) does not have, and how much is the embedding.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaussmem.accuracy import AccuracySummary
from gaussmem.checkpoint import file_sha256, load_checkpoint
from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.datasets import default_n_query, episode_sampler, load_split
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.evaluate import episode_predictions
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.methods.base import FewShotClassifier
from gaussmem.plumbing.script_record import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]

#: Stroke pixels are bright (255); half way separates stroke from background.
STROKE_THRESHOLD = 128
KINDS = ("other_rotation", "same_alphabet", "other_alphabet")


def character_and_rotation(class_name: str) -> tuple[str, str]:
    """`"Alphabet/character07/rot090"` -> `("Alphabet/character07", "rot090")`."""
    character, _, rotation = class_name.rpartition("/")
    if not character or not rotation.startswith("rot"):
        raise SystemExit(f"class name {class_name!r} is not Omniglot's "
                         "'Alphabet/characterNN/rotDDD': this diagnostic needs a split "
                         "with rotation classes (data.scheme = vinyals)")
    return character, rotation


def confusion_kind(true_name: str, predicted_name: str) -> str:
    """How a wrongly predicted class relates to the query's own class (one of KINDS)."""
    true_character, _ = character_and_rotation(true_name)
    predicted_character, _ = character_and_rotation(predicted_name)
    if true_character == predicted_character:
        return "other_rotation"
    if true_name.split("/")[0] == predicted_name.split("/")[0]:
        return "same_alphabet"
    return "other_alphabet"


def rotation_self_overlap(dataset: ClassImageSet, first: int, second: int) -> float:
    """Mean over drawings of the stroke IoU between class `first`'s drawing i and class
    `second`'s drawing i: the same drawing at two rotations, so this measures how alike
    the character looks under the rotation between them."""
    a = dataset.images[first] >= STROKE_THRESHOLD
    b = dataset.images[second] >= STROKE_THRESHOLD
    intersection = (a & b).sum(axis=(1, 2))
    union = np.maximum((a | b).sum(axis=(1, 2)), 1)
    return float((intersection / union).mean())


def rotation_siblings(class_names: list[str]) -> dict[int, set[int]]:
    """For each class index, the indices of the other rotations of its character."""
    by_character: dict[str, list[int]] = {}
    for index, name in enumerate(class_names):
        by_character.setdefault(character_and_rotation(name)[0], []).append(index)
    return {index: set(members) - {index}
            for members in by_character.values() for index in members}


def confusion_report(classifier: FewShotClassifier, dataset: ClassImageSet, *, n_way: int,
                     n_shot: int, episodes: int, seed: int,
                     cache: EmbeddingCache | None = None) -> dict[str, Any]:
    """Score `episodes` support-query episodes (those `evaluate_support_query` draws with
    the same arguments) and sort the wrong answers by kind (see the module docstring).
    `cache`: embeddings already computed for `dataset` by `classifier` (one per call
    otherwise), so several cells encode each image once."""
    siblings = rotation_siblings(dataset.class_names)
    n_query = default_n_query(dataset, n_shot)
    sampler = episode_sampler(dataset, n_way, n_shot, n_query, seed=seed)
    cache = cache or EmbeddingCache(classifier, dataset)
    classifier.eval()
    episode_accuracy = np.zeros(episodes)
    kinds: Counter[str] = Counter()
    confused_pairs: Counter[tuple[int, int]] = Counter()
    right_and_total = {True: [0, 0], False: [0, 0]}  # by "a sibling is in the episode"
    with torch.no_grad():
        for episode in range(episodes):
            ids = sampler.sample_ids()
            predicted = episode_predictions(classifier, cache, ids).numpy()
            truth = ids.query_labels().numpy()
            episode_accuracy[episode] = (predicted == truth).mean()
            in_episode = set(ids.class_indices.tolist())
            for label, guess in zip(truth, predicted, strict=True):
                true_class = int(ids.class_indices[label])
                counts = right_and_total[bool(siblings[true_class] & in_episode)]
                counts[0] += int(guess == label)
                counts[1] += 1
                if guess != label:
                    guessed_class = int(ids.class_indices[guess])
                    kind = confusion_kind(dataset.class_names[true_class],
                                          dataset.class_names[guessed_class])
                    kinds[kind] += 1
                    if kind == "other_rotation":
                        confused_pairs[tuple(sorted((true_class, guessed_class)))] += 1

    queries = sum(total for _, total in right_and_total.values())
    all_pairs = sorted({tuple(sorted((index, other)))
                        for index, others in siblings.items() for other in others})
    overlaps = {pair: rotation_self_overlap(dataset, *pair) for pair in all_pairs}
    confused_overlaps = [overlaps[pair] for pair in confused_pairs]
    with_sibling, without_sibling = right_and_total[True], right_and_total[False]
    return {
        "dataset": dataset.name, "protocol": "support-query", "n_way": n_way,
        "n_shot": n_shot, "n_query": n_query, "episodes": episodes, "seed": seed,
        "accuracy": AccuracySummary.from_values(episode_accuracy).__dict__,
        "queries": queries, "errors": sum(kinds.values()),
        "errors_by_kind": {kind: kinds[kind] for kind in KINDS},
        "error_percent_by_kind": {kind: 100.0 * kinds[kind] / queries for kind in KINDS},
        "accuracy_if_other_rotation_counted_right":
            100.0 * (queries - sum(kinds.values()) + kinds["other_rotation"]) / queries,
        "queries_with_a_rotation_sibling_in_episode": {
            "share_percent": 100.0 * with_sibling[1] / queries,
            "accuracy": 100.0 * with_sibling[0] / max(with_sibling[1], 1)},
        "queries_without": {"accuracy": 100.0 * without_sibling[0]
                            / max(without_sibling[1], 1)},
        "rotation_self_overlap": {
            "median_all_rotation_pairs": float(np.median(list(overlaps.values()))),
            "median_confused_pairs": (float(np.median(confused_overlaps))
                                      if confused_overlaps else None),
            "confused_pairs": len(confused_pairs), "rotation_pairs": len(all_pairs)},
        "most_confused_rotation_pairs": [
            {"classes": [dataset.class_names[a], dataset.class_names[b]], "errors": count,
             "self_overlap": overlaps[(a, b)]}
            for (a, b), count in confused_pairs.most_common(10)],
    }


def parse_cell(cell: str) -> tuple[int, int]:
    """`"20w5s"` -> `(20, 5)`."""
    way, _, shot = cell.removesuffix("s").partition("w")
    if not (way.isdigit() and shot.isdigit()):
        raise SystemExit(f"cell {cell!r} is not NwKs, e.g. 5w5s or 20w1s")
    return int(way), int(shot)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cells", default="5w5s,5w1s,20w1s,20w5s",
                        help="comma-separated NwKs cells (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", help="where to write the report (default: "
                        "results/episode_errors/<split>/episode_errors-<run>.json)")
    args = parser.parse_args()
    cells = [parse_cell(cell) for cell in args.cells.split(",")]
    checkpoint_path = Path(args.checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    dataset = load_split(checkpoint["config"]["data"], args.split)
    if not isinstance(dataset, ClassImageSet):
        raise SystemExit(f"{dataset.name} is not an Omniglot split")
    classifier = classifier_from_checkpoint(checkpoint)
    cache = EmbeddingCache(classifier, dataset)
    reports = {}
    for n_way, n_shot in cells:
        report = confusion_report(classifier, dataset, n_way=n_way, n_shot=n_shot,
                                  episodes=args.episodes, seed=args.seed, cache=cache)
        reports[f"{n_way}w{n_shot}s"] = report
        accuracy = report["accuracy"]
        print(f"{n_way}-way {n_shot}-shot ({args.split}, {args.episodes} episodes, seed "
              f"{args.seed}): {accuracy['mean']:.2f} ± {accuracy['ci95']:.2f}; error "
              + ", ".join(f"{kind} {report['error_percent_by_kind'][kind]:.3f}%"
                          for kind in KINDS)
              + "; other rotations counted right: "
              f"{report['accuracy_if_other_rotation_counted_right']:.2f}", flush=True)
    run_name = checkpoint_path.resolve().parent.parent.name
    out = Path(args.json or ROOT / "results" / "episode_errors" / args.split
               / f"episode_errors-{run_name}.json")
    write_json(out, {
        **provenance(),
         "checkpoint": {"path": args.checkpoint, "sha256": file_sha256(checkpoint_path),
                        "step": checkpoint["step"]},
         "split": args.split, "cells": reports})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
