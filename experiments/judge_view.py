"""How the generation judge should see a drawing, chosen on real validation drawings only.

    python experiments/judge_view.py --judge runs/judge-protonet-1200/checkpoints/best.ckpt \
        [--episodes 50] [--seed 0] [--json results/objective/judge_view.json]

The judge (a few-shot classifier trained on crisp strokes) labels 20-way 1-shot
validation episodes whose support and queries both pass through a candidate view: a
box filter of `box` pixels, then ink where the smoothed intensity exceeds `ink` (no
threshold: the smoothed intensities). Each view is scored on the real query drawings
as they are and blurred by a 3x3 and a 5x5 box filter; the view with the best mean of
the three labels drawings by what they draw, whatever their sharpness. No model's
reconstructions or generations are involved, so the choice cannot favour one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gaussmem.checkpoint import load_checkpoint
from gaussmem.data.datasets import episode_sampler
from gaussmem.generative import load_split
from gaussmem.generative_report import box_filter, stroke_view
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.plumbing.script_record import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]
BOXES = (1, 3, 5)
INKS: tuple[float | None, ...] = (None, 0.1, 0.2, 0.3, 0.4, 0.5)
#: The query blurs every view is scored on (box filter sizes; 1 = as drawn).
QUERY_BLURS = (1, 3, 5)


def add_judging_arguments(parser: argparse.ArgumentParser, json_name: str) -> None:
    """The arguments of a script that judges drawings on validation episodes: the
    judge's checkpoint, episodes, seed, data and cache folders, and its JSON record
    (default `results/objective/<json_name>`)."""
    parser.add_argument("--judge", required=True, type=Path)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "objective" / json_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_judging_arguments(parser, "judge_view.json")
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.judge)
    judge = classifier_from_checkpoint(checkpoint).eval()
    dataset = load_split(checkpoint, "val", args.data_dir, args.cache_dir)
    sampler = episode_sampler(dataset, 20, 1, 5, seed=args.seed)
    episodes = [sampler.sample() for _ in range(args.episodes)]
    views = []
    with torch.no_grad():
        for box in BOXES:
            for ink in INKS:
                def view(images: torch.Tensor, box: int = box, ink: float | None = ink
                         ) -> torch.Tensor:
                    return box_filter(images, box) if ink is None else stroke_view(images, box, ink)
                accuracy = {blur: [] for blur in QUERY_BLURS}
                for episode in episodes:
                    judge.fit(view(episode.support_images), episode.support_labels)
                    for blur in QUERY_BLURS:
                        predicted = judge.predict(view(box_filter(episode.query_images, blur)))
                        accuracy[blur].append(
                            float((predicted == episode.query_labels).double().mean()))
                scores = {f"query_box{blur}": 100 * float(np.mean(values))
                          for blur, values in accuracy.items()}
                views.append({"box": box, "ink": ink, **scores,
                              "mean": float(np.mean(list(scores.values())))})
                print(f"box {box} ink {ink}: " + ", ".join(
                    f"{name} {value:.1f}" for name, value in scores.items()), flush=True)
    best = max(views, key=lambda record: record["mean"])
    print(f"chosen: box {best['box']}, ink {best['ink']} (mean {best['mean']:.1f})")
    write_json(args.json, {"experiment": "judge_view", **provenance(),
                           "judge": str(args.judge), "split": "val", "n_way": 20,
                           "episodes": args.episodes, "seed": args.seed, "views": views,
                           "chosen": {"box": best["box"], "ink": best["ink"]}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
