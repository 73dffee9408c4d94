"""Diagnostic: do several scorers together beat one trained model on support-query episodes?

    python experiments/ensemble_views.py --checkpoints A.ckpt [B.ckpt ...]
        [--shift-pixels 1] [--rotation-degrees 0] [--cells 5w5s:10000,20w1s]
        [--episodes 1000]
        [--seed 0] [--split val] --json OUT

Two ideas outside the paper's model, for the cells where one model falls short:
* test-time views: each image is also looked at under fixed small affine maps (shifted
  by `--shift-pixels` left, right, up and down; rotated by +-`--rotation-degrees`);
* a seed ensemble: several checkpoints, e.g. one recipe trained with several seeds.
A member is one checkpoint looking at one view. Each member scores an episode exactly
as `gaussmem evaluate` does: a fresh memory holds the support set written with the
paper's update rule, and a query scores -SKL to each label's nearest entry. A
combination adds its members' scores (it multiplies their similarities exp(-SKL)) and
picks the best label. On the same seeded episodes it reports:
* `plain/<run>`: each checkpoint on the images as they are (equals `gaussmem evaluate`
  with the same cell, episodes, seed and split);
* `views/<run>`: each checkpoint over all views (with shifts and rotations both on, also
  `shifts/<run>` and `rotations/<run>`: the plain images and one kind of view);
* `ensemble/plain`, `ensemble/views` (and `ensemble/shifts`, `ensemble/rotations`): all
  checkpoints together, without and with views;
* `single_view/<run>/<view>`: each member alone, to see what a view costs by itself.
Each combination but the first also gets its paired gain over the plain images on the
same episodes (for an ensemble, over the mean of its checkpoints alone), with a 95% CI.
Decide on the validation split; the test split only scores what validation chose.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from episode_errors import parse_cell as parse_nwks

from gaussmem.accuracy import AccuracySummary
from gaussmem.checkpoint import file_sha256, load_checkpoint
from gaussmem.data.datasets import (
    FewShotDataset,
    default_n_query,
    episode_sampler,
    load_split,
)
from gaussmem.data.views import PLAIN, SHIFT_NAMES, AffineView, view_maps
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.evaluate import episode_scores
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.methods.base import FewShotClassifier
from gaussmem.plumbing.script_record import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]


def combinations(runs: list[str], views: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Reported combination name -> its (run, view) members (see the module docstring).
    With both kinds of view, `shifts/<run>` and `rotations/<run>` add each kind alone."""
    groups = {"views": views}
    kinds = {kind: [PLAIN] + [view for view in views if view.startswith(prefix)]
             for kind, prefix in (("shifts", SHIFT_NAMES), ("rotations", ("rotate",)))}
    if all(len(members) > 1 for members in kinds.values()):
        groups.update(kinds)
    combos: dict[str, list[tuple[str, str]]] = {}
    for run in runs:
        combos[f"{PLAIN}/{run}"] = [(run, PLAIN)]
        if len(views) > 1:
            for group, members in groups.items():
                combos[f"{group}/{run}"] = [(run, view) for view in members]
    if len(runs) > 1:
        combos[f"ensemble/{PLAIN}"] = [(run, PLAIN) for run in runs]
        if len(views) > 1:
            for group, members in groups.items():
                combos[f"ensemble/{group}"] = [(run, view) for run in runs
                                               for view in members]
    for run in runs:
        for view in views[1:]:
            combos[f"single_view/{run}/{view}"] = [(run, view)]
    return combos


def paired_gain(values: np.ndarray, baseline: np.ndarray) -> AccuracySummary:
    """Mean per-episode accuracy gain over `baseline` on the same episodes, with its 95%
    CI: far tighter than the difference of two unpaired CIs, since most episodes are
    equally easy for both."""
    return AccuracySummary.from_values(values - baseline)


def score_cell(members: dict[tuple[str, str], tuple[FewShotClassifier, EmbeddingCache]],
               dataset: FewShotDataset, combos: dict[str, list[tuple[str, str]]], *,
               n_way: int, n_shot: int, episodes: int, seed: int) -> dict[str, dict]:
    """Per combination: its accuracy on the same `episodes` seeded episodes and its
    paired gain over the plain images (a run's own; for an ensemble, its runs' mean)."""
    n_query = default_n_query(dataset, n_shot)
    sampler = episode_sampler(dataset, n_way, n_shot, n_query, seed=seed)
    accuracy = {name: np.zeros(episodes) for name in combos}
    with torch.no_grad():
        for episode in range(episodes):
            ids = sampler.sample_ids()
            query_labels = ids.query_labels()
            scores = {key: episode_scores(classifier, cache, ids)
                      for key, (classifier, cache) in members.items()}
            for name, keys in combos.items():
                combined = torch.stack([scores[key] for key in keys]).sum(0)
                accuracy[name][episode] = (combined.argmax(1) == query_labels
                                           ).double().mean().item()
            if (episode + 1) % max(episodes // 10, 1) == 0:
                print(f"  {episode + 1}/{episodes} episodes", flush=True)
    report = {}
    for name, keys in combos.items():
        runs = sorted({run for run, _ in keys})
        baseline = np.mean([accuracy[f"{PLAIN}/{run}"] for run in runs], axis=0)
        report[name] = {"accuracy": AccuracySummary.from_values(accuracy[name]).__dict__,
                        "members": [list(key) for key in keys]}
        if name != f"{PLAIN}/{runs[0]}":
            report[name]["gain_over_plain"] = paired_gain(accuracy[name], baseline).__dict__
    return report


def parse_cell(cell: str, default_episodes: int) -> tuple[int, int, int]:
    """`"20w5s"` -> `(20, 5, default_episodes)`; `"5w5s:10000"` -> `(5, 5, 10000)`."""
    shape, _, episodes = cell.partition(":")
    if episodes and not episodes.isdigit():
        raise SystemExit(f"cell {cell!r}: the episodes after ':' must be a whole number")
    n_way, n_shot = parse_nwks(shape)
    return n_way, n_shot, int(episodes) if episodes else default_episodes


def run_name(checkpoint_path: Path) -> str:
    """`runs/NAME/checkpoints/last.ckpt` -> `NAME` (or `NAME-best` for best.ckpt)."""
    name = checkpoint_path.resolve().parent.parent.name
    return name if checkpoint_path.stem == "last" else f"{name}-{checkpoint_path.stem}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, type=Path)
    parser.add_argument("--shift-pixels", type=int, default=1)
    parser.add_argument("--rotation-degrees", type=float, default=0.0)
    parser.add_argument("--cells", default="5w5s",
                        help="comma-separated NwKs cells, each optionally :EPISODES "
                        "(default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=1000,
                        help="episodes of a cell that names none (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args()
    cells = [parse_cell(cell, args.episodes) for cell in args.cells.split(",")]

    checkpoints = {}
    for path in args.checkpoints:
        if not path.is_file():
            raise SystemExit(f"no checkpoint at {path}")
        name = run_name(path)
        if name in checkpoints:
            raise SystemExit(f"two checkpoints are both named {name!r}: {path}")
        checkpoints[name] = (path, load_checkpoint(path))
    data_configs = {json.dumps(checkpoint["config"]["data"], sort_keys=True)
                    for _, checkpoint in checkpoints.values()}
    if len(data_configs) > 1:
        raise SystemExit("the checkpoints were trained on different data settings; an "
                         "ensemble needs one dataset and one image size")
    first_checkpoint = next(iter(checkpoints.values()))[1]
    dataset = load_split(first_checkpoint["config"]["data"], args.split)
    image_shape = tuple(dataset.sample_tensor(np.zeros(1, dtype=np.int64)).shape[-2:])
    try:
        maps = view_maps(image_shape, args.shift_pixels, args.rotation_degrees)
    except ValueError as error:
        raise SystemExit(f"test-time views: {error}") from None

    members = {}
    for name, (_, checkpoint) in checkpoints.items():
        classifier = classifier_from_checkpoint(checkpoint).eval()
        for view, theta in maps.items():
            seen = dataset if view == PLAIN else AffineView(dataset, view, theta)
            members[(name, view)] = (classifier, EmbeddingCache(classifier, seen))
    combos = combinations(list(checkpoints), list(maps))

    reports = {}
    for n_way, n_shot, episodes in cells:
        cell = f"{n_way}w{n_shot}s"
        print(f"{cell} on {dataset.name}: {len(members)} members, {episodes} episodes",
              flush=True)
        reports[cell] = score_cell(members, dataset, combos, n_way=n_way, n_shot=n_shot,
                                   episodes=episodes, seed=args.seed)
        for name, row in reports[cell].items():
            line = f"  {name}: {row['accuracy']['mean']:.2f} ± {row['accuracy']['ci95']:.2f}"
            if "gain_over_plain" in row:
                gain = row["gain_over_plain"]
                line += f" (gain {gain['mean']:+.3f} ± {gain['ci95']:.3f})"
            print(line, flush=True)
    write_json(args.json, {
        **provenance(), "split": args.split, "dataset": dataset.name,
        "seed": args.seed,
        "checkpoints": {name: {"path": str(path), "sha256": file_sha256(path),
                               "step": checkpoint["step"]}
                        for name, (path, checkpoint) in checkpoints.items()},
        "views": {view: theta.tolist() for view, theta in maps.items()},
        "cells": reports})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
