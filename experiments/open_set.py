"""Few-shot open-set recognition of the MA-VAE and the three baselines on the same episodes.

Trains nothing: give it checkpoints (by default the runs of
`experiments/open_set_train.sh`, runs/os-<dataset>-<method>/checkpoints/best.ckpt). For
each setting, every method is evaluated with `gaussmem.open_set` on the test split, on
the same seeded episodes (N known classes with K shots, N unknown classes, the default
number of queries per class), and scored by its own unknown score
(`known_scores_from_embeddings`). Writes the JSON (with each checkpoint's identity and
training budget, the hardware and the command) and a markdown table generated from it.

    python experiments/open_set.py                                  # 600 episodes
    python experiments/open_set.py --checkpoint omniglot:mavae=runs/new/checkpoints/best.ckpt
    python experiments/open_set.py --episodes 50 --out /tmp/os.json --markdown /tmp/os.md
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from gaussmem.checkpoint import load_checkpoint
from gaussmem.evaluate import evaluate_checkpoint
from gaussmem.open_set import DEFAULT_OPEN_SET_EPISODES
from gaussmem.plumbing.atomic import write_text_atomic
from gaussmem.plumbing.hardware import command_line
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
METHODS = ("mavae", "protonet", "matching", "kaiser")
#: (dataset, known classes = unknown classes, shots) per table row group.
SETTINGS = (("omniglot", 5, 1), ("omniglot", 5, 5), ("lfw", 5, 1))
METRICS = (("accuracy", "closed-set acc. %"), ("auroc", "AUROC %"),
           ("fpr_at_95_tpr", "FPR@95%TPR %"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[],
                        metavar="DATASET:METHOD=PATH",
                        help="a checkpoint other than runs/os-DATASET-METHOD/checkpoints/"
                        "best.ckpt; repeatable")
    parser.add_argument("--datasets", nargs="+", default=["omniglot", "lfw"],
                        choices=("omniglot", "lfw"), help="settings to run (both)")
    parser.add_argument("--episodes", type=int, default=DEFAULT_OPEN_SET_EPISODES,
                        help=f"episodes per setting ({DEFAULT_OPEN_SET_EPISODES})")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    results = REPO_ROOT / "results" / "open_set"
    parser.add_argument("--out", type=Path, default=results / "open_set.json")
    parser.add_argument("--markdown", type=Path, default=results / "open_set.md")
    return parser.parse_args(argv)


def checkpoint_paths(overrides: list[str]) -> dict[tuple[str, str], Path]:
    """(dataset, method) -> checkpoint: the open_set_train.sh runs, then `overrides`."""
    paths = {(dataset, method): REPO_ROOT / "runs" / f"os-{dataset}-{method}" /
             "checkpoints" / "best.ckpt"
             for dataset in {setting[0] for setting in SETTINGS} for method in METHODS}
    for item in overrides:
        key, _, path = item.partition("=")
        dataset, _, method = key.partition(":")
        if (dataset, method) not in paths or not path:
            raise SystemExit(f"--checkpoint {item!r}: expected DATASET:METHOD=PATH with "
                             f"DATASET in omniglot, lfw and METHOD in {', '.join(METHODS)}")
        paths[dataset, method] = Path(path)
    return paths


def training_budget(path: Path) -> dict[str, Any]:
    """What a checkpoint cost to train, from its own config and counters."""
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    return {"method": config["method"], "dataset": config["data"]["dataset"],
            "max_minutes": config["budget"]["max_minutes"],
            "train_minutes": round(checkpoint["elapsed_seconds"] / 60.0, 2),
            "step": checkpoint["step"], "num_threads": config["num_threads"]}


def evaluate_setting(paths: dict[tuple[str, str], Path], dataset: str, n_way: int,
                     n_shot: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every method's open-set report on one setting's episodes."""
    methods = {}
    for method in METHODS:
        path = paths[dataset, method]
        if not path.is_file():
            raise SystemExit(f"no {method} checkpoint for {dataset} at {path}: train one "
                             "(experiments/open_set_train.sh) or pass --checkpoint")
        report = evaluate_checkpoint(
            path, n_way=n_way, n_shot=n_shot, episodes=args.episodes, seed=args.seed,
            protocol="open-set", data_dir=resolve_data_dir(args.data_dir),
            cache_dir=resolve_cache_dir(args.cache_dir))
        methods[method] = {"result": report["result"], "checkpoint": report["checkpoint"],
                           "training": training_budget(path)}
        print(f"{dataset} {n_way}+{n_way} {n_shot}-shot {method}: AUROC "
              f"{report['result']['auroc']['mean']:.2f}", flush=True)
    auroc = {method: entry["result"]["auroc"]["mean"] for method, entry in methods.items()}
    return {"dataset": dataset, "n_way": n_way, "n_unknown": n_way, "n_shot": n_shot,
            "n_query": methods["mavae"]["result"]["n_query"], "methods": methods,
            "baselines_with_auroc_above_mavae": sorted(
                method for method, value in auroc.items() if value > auroc["mavae"])}


def kept_settings(path: Path, rerun: list[str], args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    """The settings of datasets not rerun, from the report at `path` when it used the
    same episodes and seed (each keeps the command that produced it): rerunning LFW-a
    alone leaves the Omniglot rows as they were measured."""
    if not path.is_file():
        return []
    previous = json.loads(path.read_text())
    if (previous.get("episodes"), previous.get("seed")) != (args.episodes, args.seed):
        return []
    return [{"command": previous["command"], **setting} for setting in previous["settings"]
            if setting["dataset"] not in rerun]


def markdown(report: dict[str, Any], source: str = "results/open_set/open_set.json") -> str:
    """The results table, generated from the JSON report at `source`."""
    lines = [
        "# Few-shot open-set recognition",
        "",
        f"Generated by `{report['command']}` from `{source}`; test split, "
        f"{report['episodes']} episodes per setting (seed {report['seed']}), the same "
        "episodes for every method; mean ± 95% CI over episodes. Each setting has N known "
        "classes (K shots each) and N unknown classes; AUROC and FPR at 95% TPR rank "
        "known against unknown queries by each method's unknown score (docs/open_set.md).",
        "",
        f"Training: {report['training_note']}",
        "",
        "| setting | method | " + " | ".join(title for _, title in METRICS) + " |",
        "|---|---|" + "---:|" * len(METRICS),
    ]
    for setting in report["settings"]:
        name = (f"{setting['dataset']} {setting['n_way']}+{setting['n_unknown']}, "
                f"{setting['n_shot']}-shot, {setting['n_query']} queries")
        for method, entry in setting["methods"].items():
            cells = [f"{entry['result'][key]['mean']:.2f} ± {entry['result'][key]['ci95']:.2f}"
                     for key, _ in METRICS]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    commands = sorted({setting.get("command", report["command"])
                       for setting in report["settings"]})
    if len(commands) > 1:
        lines += ["", "Commands, each for the settings of its datasets:", "",
                  *(f"- `{command}`" for command in commands)]
    lines += ["", "Where a baseline's AUROC is above the MA-VAE's:", ""]
    for setting in report["settings"]:
        above = setting["baselines_with_auroc_above_mavae"]
        lines.append(f"- {setting['dataset']} {setting['n_shot']}-shot: "
                     + (", ".join(above) if above else "none"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = checkpoint_paths(args.checkpoint)
    command = command_line()
    settings = [{**evaluate_setting(paths, dataset, n_way, n_shot, args), "command": command}
                for dataset, n_way, n_shot in SETTINGS if dataset in args.datasets]
    settings = kept_settings(args.out, args.datasets, args) + settings
    budgets = sorted({(entry["training"]["dataset"], entry["training"]["max_minutes"])
                      for setting in settings for entry in setting["methods"].values()})
    report = {
        "benchmark": "few-shot open-set recognition (gaussmem.open_set)",
        **provenance(), "seed": args.seed, "episodes": args.episodes,
        "split": "test", "torch_threads": args.threads,
        "training_note": "each method's CPU preset, one thread, wall-clock budget "
        "(validation excluded) per dataset: " + ", ".join(
            f"{dataset} {minutes:g} min" for dataset, minutes in budgets)
        + "; best checkpoint by validation accuracy",
        "settings": settings,
    }
    write_json(args.out, report)
    write_text_atomic(args.markdown, markdown(report, os.path.relpath(args.out, REPO_ROOT)))
    print(f"wrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
