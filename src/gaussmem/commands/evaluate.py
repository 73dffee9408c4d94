"""`gaussmem evaluate`: N-way K-shot accuracy of a checkpoint, mean and 95% CI (the
whole report as JSON with `--json`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gaussmem.commands import DefaultsHelpFormatter, add_data_location_arguments
from gaussmem.commands.arguments import (
    non_negative_float,
    non_negative_int,
    output_file,
    positive_int,
    seed,
)
from gaussmem.errors import EpisodeError
from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir

SPLITS = ("test", "val", "train", "trainval")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="N-way K-shot accuracy of a checkpoint (support-query or online)",
        description="Evaluate a checkpoint on seeded episodes. support-query: write the "
        "K support Gaussians per class into a fresh memory, classify the queries by the "
        "most similar entry. online: Kaiser et al.'s stream protocol (predict, then "
        "learn each item); k-shot accuracy is the accuracy on a class's (k+1)-th showing.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="checkpoint file (.ckpt); several score together as an "
                        "ensemble (support-query only; beyond the paper)")
    parser.add_argument("--n-way", type=positive_int, default=5, help="classes per episode")
    parser.add_argument("--n-shot", type=positive_int, default=1,
                        help="support images per class (online: the largest k reported)")
    parser.add_argument("--n-query", type=positive_int, default=None,
                        help="query images per class (support-query); default: the "
                        "dataset's (gaussmem.evaluate.DEFAULT_N_QUERY on Omniglot, on LFW-a "
                        "the most every person has room for)")
    parser.add_argument("--episodes", type=positive_int, default=None,
                        help="number of episodes; default 1000 (with --open-set: "
                        "gaussmem.open_set.DEFAULT_OPEN_SET_EPISODES)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the episode sampler")
    parser.add_argument("--split", default="test", choices=SPLITS, help="class subset")
    parser.add_argument("--protocol", default="support-query",
                        choices=("support-query", "online", "open-set"),
                        help="evaluation protocol")
    parser.add_argument("--open-set", action="store_true",
                        help="the few-shot open-set protocol (same as --protocol open-set): "
                        "per episode N known classes with K shots and --n-unknown classes "
                        "never shown; closed-set accuracy, AUROC and FPR at 95%% TPR of "
                        "known against unknown queries by each method's unknown score")
    parser.add_argument("--n-unknown", type=positive_int, default=None,
                        help="unknown classes per open-set episode (default: --n-way)")
    parser.add_argument("--json", dest="json_path", type=output_file, default=None,
                        help="write the whole report here as JSON (atomically): "
                        "accuracy, episodes, checkpoint, command, hardware")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto",
                        help="where the encoder runs: auto (a CUDA GPU if there is one and "
                        "the method can use it, else the CPU), cpu, cuda or cuda:N; the "
                        "episodes' memory work stays on the CPU")
    parser.add_argument("--shift-pixels", type=non_negative_int, default=0,
                        help="test-time views (beyond the paper, support-query only): "
                        "also score every image shifted this many pixels left, right, up "
                        "and down, adding the views' scores")
    parser.add_argument("--rotation-degrees", type=non_negative_float, default=0.0,
                        help="test-time views: also score every image turned by + and - "
                        "this angle")
    add_data_location_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from gaussmem.evaluate import evaluate_checkpoint
    from gaussmem.open_set import DEFAULT_OPEN_SET_EPISODES
    from gaussmem.plumbing.allocator import keep_freed_memory
    from gaussmem.plumbing.atomic import write_text_atomic
    from gaussmem.plumbing.hardware import describe_hardware

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.open_set:
        if args.protocol not in ("support-query", "open-set"):
            raise EpisodeError(f"--open-set and --protocol {args.protocol} ask for two "
                               "protocols; give one")
        args.protocol = "open-set"
    if args.n_unknown is not None and args.protocol != "open-set":
        raise EpisodeError("--n-unknown applies to the open-set protocol only (--open-set)")
    if args.episodes is None:
        args.episodes = DEFAULT_OPEN_SET_EPISODES if args.protocol == "open-set" else 1000
    keep_freed_memory()
    report = evaluate_checkpoint(
        [Path(path) for path in args.checkpoint], n_way=args.n_way, n_shot=args.n_shot,
        n_query=args.n_query, episodes=args.episodes, seed=args.seed, split=args.split,
        protocol=args.protocol,
        data_dir=resolve_data_dir(args.data_dir), cache_dir=resolve_cache_dir(args.cache_dir),
        progress=not args.no_progress, device=args.device, shift_pixels=args.shift_pixels,
        rotation_degrees=args.rotation_degrees, n_unknown=args.n_unknown)
    report["command"] = "gaussmem " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    report["hardware"] = describe_hardware(report["device"])
    if args.json_path:
        write_text_atomic(args.json_path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    accuracy = report["result"]["accuracy"]
    combination = report.get("combination")
    members = (f", {len(combination['checkpoints'])} checkpoint(s) x "
               f"{len(combination['views'])} view(s)" if combination else "")
    print(f"{args.n_way}-way {args.n_shot}-shot ({args.protocol}, {args.split}, "
          f"{args.episodes} episodes, seed {args.seed}{members}): "
          f"{accuracy['mean']:.2f}% ± {accuracy['ci95']:.2f}")
    if args.protocol == "open-set":
        result = report["result"]
        print(f"{result['n_unknown']} unknown classes: AUROC {result['auroc']['mean']:.2f}% "
              f"± {result['auroc']['ci95']:.2f}, FPR at 95% TPR "
              f"{result['fpr_at_95_tpr']['mean']:.2f}% ± {result['fpr_at_95_tpr']['ci95']:.2f}")
    return 0
