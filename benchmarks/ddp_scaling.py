"""Training throughput and validation accuracy of 1 process against K torchrun ranks at
the same global batch, through the real `gaussmem train` command.

    PYTHONPATH=src python benchmarks/ddp_scaling.py [--ranks 2] [--steps 150] \
        [--json results/ddp_scaling.json]

Both runs train cpu-quick's model on `--n-way` x `--global-episodes` classes per step
(2 drawings each), one thread per process, for the same number of steps with a
step-based schedule (no wall-clock budget: the learning rate then depends on the step
only, so both runs see the same schedule), then validate once on the validation split
(cpu-quick's fixed episodes). The single process trains all the episodes; each of the K
ranks trains `global-episodes / K` of them, and all ranks share one memory of every
class. Images/s is the median over log windows (every 10 steps) after the first (the
warm-up), counted over all ranks. The machine's load average is recorded before and
after each run: on a shared machine, other work takes cores from the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gaussmem.metrics_log import read_metrics
from gaussmem.plumbing.script_record import provenance, write_json

LOG_EVERY = 10


def launcher(ranks: int) -> list[str]:
    """`python -m gaussmem` alone; torchrun's module for several ranks, run by this
    interpreter (a `torchrun` on PATH may belong to another Python without gaussmem)."""
    if ranks == 1:
        return [sys.executable, "-m", "gaussmem"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={ranks}", "-m", "gaussmem"]


def train_run(ranks: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """One `gaussmem train` of `args.steps` steps on `ranks` processes; its figures."""
    episodes_per_rank = args.global_episodes // ranks
    command = [*launcher(ranks), "train", "--preset", "cpu-quick", "--run-dir", str(run_dir),
               "--seed", str(args.seed), "--max-steps", str(args.steps), "--no-progress",
               "--set", "budget.max_minutes=none", "--set", "num_threads=1",
               "--set", f"episodes.n_way={args.n_way}",
               "--set", f"episodes.batch_episodes={episodes_per_rank}",
               "--set", f"log_every={LOG_EVERY}",
               "--set", f"validation.every_steps={args.steps}",
               "--set", f"checkpoint_every={args.steps}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment)
    wall_seconds = time.perf_counter() - started
    records = read_metrics(run_dir / "metrics.jsonl")
    rates = [r["images_per_second"] for r in records if r["kind"] == "train"][1:]
    validation = [r for r in records if r["kind"] == "val"][-1]
    return {"ranks": ranks, "episodes_per_rank": episodes_per_rank,
            "command": " ".join(command), "steps": args.steps,
            "images_per_second_median": statistics.median(rates),
            "images_per_second_windows": rates, "wall_seconds": wall_seconds,
            "val_accuracy": validation["val_accuracy"], "val_ci95": validation["val_ci95"],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--n-way", type=int, default=32)
    parser.add_argument("--global-episodes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("results/ddp_scaling.json"))
    args = parser.parse_args()
    if args.global_episodes % args.ranks:
        parser.error(f"--global-episodes {args.global_episodes} is not a multiple of "
                     f"--ranks {args.ranks}")
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as scratch:
        runs = [train_run(ranks, args, Path(scratch) / f"ranks{ranks}")
                for ranks in (1, args.ranks)]
    single, parallel = runs
    speedup = parallel["images_per_second_median"] / single["images_per_second_median"]
    report = {
        "benchmark": "ddp_scaling", **provenance(), "seed": args.seed, "preset": "cpu-quick",
        "global_batch": {"classes_per_step": args.n_way * args.global_episodes,
                         "drawings_per_class": 2, "steps": args.steps},
        "threads_per_process": 1, "runs": runs, "speedup": speedup, "target_speedup": 1.8,
        "notes": "Images/s counts every rank's images. The machine is shared with other "
                 "jobs: see the load averages before and after each run; a speedup under "
                 "load says more about the other jobs than about DDP. GPU measurements "
                 "(images/s per GPU with and without DDP, time to 97%) were not taken: "
                 "no GPU was available.",
    }
    write_json(args.json, report)
    print(json.dumps({"speedup": round(speedup, 3),
                      "val_accuracy": [run["val_accuracy"] for run in runs],
                      "val_ci95": [run["val_ci95"] for run in runs]}))


if __name__ == "__main__":
    main()
