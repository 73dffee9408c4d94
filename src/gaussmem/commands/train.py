"""`gaussmem train`: train any registered method from a preset, a TOML file, overrides,
then write the run's figures (the training loop itself writes none)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaussmem.commands import DefaultsHelpFormatter, add_data_location_arguments
from gaussmem.commands.arguments import (
    output_directory,
    output_file,
    positive_float,
    positive_int,
    seed,
)
from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir

if TYPE_CHECKING:  # the config module imports torch: not for `--help`
    from gaussmem.config import TrainConfig
    from gaussmem.data.datasets import FewShotDataset
    from gaussmem.distributed import Distributed
    from gaussmem.train import Trainer, TrainResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a few-shot method (the MA-VAE or a baseline) episodically",
        description="Train the paper's memory-augmented VAE or a baseline (protonet, "
        "matching, kaiser) on the training classes of Omniglot or LFW-a (the preset's "
        "data.dataset), validating on the validation classes (never the test classes). "
        "Settings: --preset (default: the method's Omniglot CPU preset), then --config "
        "FILE.toml, then --set section.field=value.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--method", default=None,
                        help="registered method: mavae, protonet, matching, kaiser "
                        "(default: the preset's; without --preset, mavae)")
    parser.add_argument("--preset", default=None,
                        help="named experiment (docs/model.md, docs/baselines.md; a typo "
                        "lists the names); default: cpu-quick for mavae, <method>-cpu for "
                        "a baseline")
    parser.add_argument("--config", default=None, help="TOML file laid over the preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="override one field; repeatable")
    parser.add_argument("--run-dir", type=output_directory, default=None,
                        help="run directory (default: runs/<preset>-<UTC time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="a fresh run in a --run-dir that holds a run: delete that "
                        "run's files first (without it the command refuses)")
    parser.add_argument("--seed", type=seed, default=None, help="override the config's seed")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="step budget")
    parser.add_argument("--max-minutes", type=positive_float, default=None,
                        help="wall-clock budget of training (validation excluded)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard events (needs `tensorboard`)")
    add_data_location_arguments(parser)
    parser.add_argument("--heap-allocator", action="store_true",
                        help="serve every allocation from glibc's heap, never mmap: faster "
                             "CPU steps for a higher peak memory (docs/training.md)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (the validation lines and summary remain)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (preset, --config, --set) as JSON "
                        "and exit without training")
    parser.add_argument("--json", dest="json_path", type=output_file, default=None,
                        help="also write the run's summary here (the run directory's "
                        "summary.json holds it too)")
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.method is not None:
        overrides.insert(0, f"method={args.method}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.max_steps is not None:
        overrides.append(f"budget.max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"budget.max_minutes={args.max_minutes}")
    if args.tensorboard:
        overrides.append("tensorboard=true")
    return overrides


def _saved_config(run_dir: Path) -> TrainConfig:
    """The config of the run in `run_dir` (for --resume without a new budget)."""
    from gaussmem.checkpoint import load_checkpoint
    from gaussmem.config import TrainConfig, from_dict
    from gaussmem.train import LAST_CHECKPOINT

    return from_dict(TrainConfig, load_checkpoint(run_dir / LAST_CHECKPOINT)["config"])


#: The settings `--resume` takes from the command line. None of them changes what a run
#: learns, so a run goes on with a longer budget, on another device or with another
#: share of the CPU's threads (gaussmem.train.train).
RESUME_SETTINGS = ("budget.", "device=", "cuda_graph=", "num_threads=")


def _resume_config(saved: TrainConfig, args: argparse.Namespace) -> TrainConfig | None:
    """The checkpoint's config `saved` with the `RESUME_SETTINGS` given on the command line laid
    over it; None where none is given (the checkpoint's own config, budget included).
    Only what is given replaces the saved value: a run resumed on the CPU keeps its
    budget."""
    from gaussmem.config import merge, parse_overrides

    overrides = _overrides(args)
    given = [item for item in overrides if item.startswith(RESUME_SETTINGS)]
    if args.preset or args.config or len(given) < len(overrides):
        print("gaussmem train: --resume uses the checkpoint's config; only the budget, "
              "device, cuda_graph and num_threads given here replace its own")
    return merge(saved, parse_overrides(given)) if given else None


def _check_disjoint(train_set: Any, val_set: Any | None, data: Any) -> None:
    """Refuse a validation split whose classes are trained on: its scores would pick the
    checkpoint that best remembers them, not the one that generalizes."""
    from gaussmem.train import TrainingError

    if val_set is None:
        return
    shared = sorted(set(train_set.class_names) & set(val_set.class_names))
    if shared:
        raise TrainingError(
            f"data.train_subset={data.train_subset!r} holds {len(shared)} of the "
            f"{len(val_set.class_names)} classes of data.val_subset={data.val_subset!r} "
            f"(e.g. {shared[0]!r}), so validation would score trained classes; to train on "
            "both, set data.val_subset=none (no validation, the last checkpoint is kept)")


def _warn_if_the_cpu_is_busy(config: TrainConfig) -> None:
    """Training on the CPU beside other work: say how many threads would suit it."""
    import torch

    from gaussmem.methods import training_class
    from gaussmem.plumbing.hardware import busy_cpu_warning, other_running_tasks

    if training_class(config.method).training_device(config).type != "cpu":
        return
    threads = config.num_threads or torch.get_num_threads()
    other_tasks = other_running_tasks()
    warning = (None if other_tasks is None else
               busy_cpu_warning(other_tasks, os.cpu_count() or 1, threads))
    if warning:
        print(f"gaussmem train: warning: {warning}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    # Imported here so `gaussmem --help` stays fast (no torch import).
    from gaussmem.config import to_dict
    from gaussmem.distributed import exit_rank, launched_by_torchrun, process_group
    from gaussmem.methods import method_class, training_class
    from gaussmem.presets import default_preset, resolve
    from gaussmem.run_dir import check_fresh_run_dir
    from gaussmem.train import TrainingError

    if args.method is not None:
        method_class(args.method)  # an unknown name fails here, listing the known ones
    preset_name = args.preset or default_preset(args.method or "mavae")
    if args.print_config:
        config = resolve(preset_name, args.config, _overrides(args))
        print(json.dumps(to_dict(config), indent=2))
        return 0
    if args.resume and not args.run_dir:
        raise TrainingError("--resume needs --run-dir")
    if args.resume and args.overwrite:
        raise TrainingError("--resume continues the run in --run-dir and --overwrite "
                            "deletes it: pass one of them")
    if launched_by_torchrun() and not args.run_dir:
        # Each rank would stamp its own default directory.
        raise TrainingError("under torchrun, pass --run-dir (every rank must name the "
                            "same directory)")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = Path(args.run_dir or Path("runs") / f"{preset_name}-{stamp}").resolve()
    if not args.resume:
        check_fresh_run_dir(run_dir, overwrite=args.overwrite)
    saved = _saved_config(run_dir) if args.resume else None
    if saved is not None:
        config = _resume_config(saved, args)
    else:
        config = resolve(preset_name, args.config, _overrides(args))
    # What the run will train with: the checkpoint's config where none replaces it.
    effective = config or saved
    # Under torchrun, join the launch's processes (nccl on GPUs, gloo on CPUs).
    device_type = training_class(effective.method).training_device(effective).type
    with process_group(device_type) as ranks:
        status = _train(args, config, effective, run_dir, ranks)
    if ranks.world_size > 1:
        exit_rank(status)  # see its docstring: a finished rank must not abort at exit
    return status


def _train(args: argparse.Namespace, config: TrainConfig | None, effective: TrainConfig,
           run_dir: Path, ranks: Distributed) -> int:
    """Load the data, train, print where things went (rank 0 prints for every rank)."""
    from gaussmem.data.datasets import load_split
    from gaussmem.plumbing.allocator import keep_freed_memory
    from gaussmem.plumbing.atomic import write_text_atomic
    from gaussmem.train import TrainingInterrupted, train

    data_dir, cache_dir = resolve_data_dir(args.data_dir), resolve_cache_dir(args.cache_dir)
    # A resumed run reads the data its checkpoint was trained on; rank 0 builds a
    # missing cache before the other ranks read it.
    data = effective.data
    with ranks.main_first():
        train_set = load_split(data, data.train_subset, data_dir=data_dir,
                               cache_dir=cache_dir)
        val_set = (None if data.val_subset is None else
                   load_split(data, data.val_subset, data_dir=data_dir, cache_dir=cache_dir))
    _check_disjoint(train_set, val_set, data)
    if ranks.is_main:
        print(f"gaussmem train: run directory {run_dir}"
              + (f" ({ranks.world_size} processes)" if ranks.world_size > 1 else ""))
        _warn_if_the_cpu_is_busy(effective)
    # Faster CPU steps (results/speed/allocator_speed*.json).
    keep_freed_memory(heap_only=args.heap_allocator)
    try:
        result = train(config, run_dir, train_set, val_set, resume=args.resume,
                       progress=not args.no_progress, overwrite=args.overwrite,
                       on_finish=lambda trainer: write_figures(trainer, train_set))
    except TrainingInterrupted as stop:
        if ranks.is_main:
            print(f"gaussmem train: {stop} --run-dir {run_dir}", file=sys.stderr)
        return stop.exit_status
    if ranks.is_main:
        print(summary_text(result, effective))
        if args.json_path:
            write_text_atomic(args.json_path, (run_dir / "summary.json").read_text())
    return 0


def write_figures(trainer: Trainer, train_set: FewShotDataset) -> None:
    """Reconstructions, generations and style transfer of a generative method, from the
    validation split (never the test split), into the run's `figures/`; the
    generations draw z_s from the style prior fitted on `train_set`
    (gaussmem.style_prior), as `gaussmem generate` does by default.

    They draw with the run's best checkpoint on validation, the model `evaluate` and
    the summary point to: where validation peaks early, the last step's weights can
    reconstruct far worse than the model the run ships. The command writes them, not
    the training loop, so a library caller of `gaussmem.train.train` gets a run
    directory without images unless it asks.
    """
    from gaussmem.figures import write_run_figures
    from gaussmem.generative import vae_from_checkpoint
    from gaussmem.style_prior import conditional_style_prior_from
    from gaussmem.train import BEST_CHECKPOINT

    if (trainer.method.generative_model is None or trainer.val_set is None
            or not trainer.config.run_figures):
        return
    vae, checkpoint = vae_from_checkpoint(trainer.run_dir / BEST_CHECKPOINT)
    write_run_figures(trainer.run_dir, vae, trainer.val_set,
                      style_prior=conditional_style_prior_from(vae, train_set),
                      step=int(checkpoint["step"]))


def summary_text(result: TrainResult, config: TrainConfig) -> str:
    """The end of a run for a person: what it reached and where its files are (the
    numbers for scripts are in the run directory's summary.json)."""
    validation = config.validation
    reached = (f"best validation {validation.n_way}-way {validation.n_shot}-shot "
               f"{result.best_val_accuracy:.2f}% at step {result.best_step:,}"
               if config.data.val_subset is not None else
               "no validation (the last checkpoint is the model)")
    lines = [f"gaussmem train: done, {result.method} {result.step:,} steps in "
             f"{result.elapsed_seconds / 60:.1f} min on {result.device}; {reached}",
             f"  checkpoint: {result.checkpoint}"]
    if result.figures is not None:
        lines.append(f"  figures:    {result.figures}")
    lines += [f"  summary:    {result.run_dir / 'summary.json'}",
              f"  evaluate:   gaussmem evaluate --checkpoint {result.checkpoint}"]
    return "\n".join(lines)
