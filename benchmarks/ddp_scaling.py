"""Training throughput and validation accuracy of 1 process against K torchrun ranks at
the same global batch, through the real `gaussmem train` command.

    PYTHONPATH=src python benchmarks/ddp_scaling.py [--ranks 2] [--steps 150] \
        [--repeats 2] [--json results/systems/ddp_scaling.json]

Both runs train cpu-quick's model on `--n-way` x `--global-episodes` classes per step
(2 drawings each), one thread per process, for the same number of steps with a
step-based schedule (no wall-clock budget: the learning rate then depends on the step
only, so both runs see the same schedule), then validate once on the validation split
(cpu-quick's fixed episodes). The single process trains all the episodes; each of the K
ranks trains `global-episodes / K` of them, and all ranks share one memory of every
class. Images/s is the median over log windows (every 10 steps) after the first (the
warm-up), counted over all ranks. The machine's load average is recorded before and
after each run: on a shared machine, other work takes cores from the ranks.

The ceiling: K plain single-process runs of one rank's share, started together and
sharing nothing (no memory, no gradients); their summed images/s is what the machine
gives K processes, so `ddp_share_of_independent` is what the shared memory and DDP's
synchronization cost. Then the way DDP is usually scaled: K ranks that each train the
single process's whole batch (a global batch K times larger, so its validation accuracy
is not comparable), `speedup_fixed_per_rank_batch`; the fixed costs of a step (the
memory search over every rank's classes, the gather, the all-reduce) are then shared
by twice the images. Each round runs the four in turn; images/s are medians over
`--repeats` rounds.
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


def train_command(launch: list[str], episodes: int, seed: int, args: argparse.Namespace,
                  run_dir: Path) -> list[str]:
    """`gaussmem train` of `args.steps` steps of `episodes` episodes (per process)."""
    return [*launch, "train", "--preset", "cpu-quick", "--run-dir", str(run_dir),
            "--seed", str(seed), "--max-steps", str(args.steps), "--no-progress",
            "--set", "budget.max_minutes=none", "--set", "num_threads=1",
            "--set", f"episodes.n_way={args.n_way}",
            "--set", f"episodes.batch_episodes={episodes}",
            "--set", f"log_every={LOG_EVERY}",
            "--set", f"validation.every_steps={args.steps}",
            "--set", f"checkpoint_every={args.steps}"]


def one_thread_environment() -> dict[str, str]:
    """This environment with OpenMP held to one thread, as every timed process runs."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def images_per_second(run_dir: Path) -> list[float]:
    """The run's log windows after the first (the warm-up)."""
    records = read_metrics(run_dir / "metrics.jsonl")
    return [r["images_per_second"] for r in records if r["kind"] == "train"][1:]


def train_run(ranks: int, args: argparse.Namespace, run_dir: Path,
              episodes_per_rank: int | None = None) -> dict[str, Any]:
    """One `gaussmem train` of `args.steps` steps on `ranks` processes, each training
    `episodes_per_rank` episodes (default: its share of the global batch); its figures."""
    if episodes_per_rank is None:
        episodes_per_rank = args.global_episodes // ranks
    command = train_command(launcher(ranks), episodes_per_rank, args.seed, args, run_dir)
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True, env=one_thread_environment())
    wall_seconds = time.perf_counter() - started
    rates = images_per_second(run_dir)
    validation = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "val"][-1]
    # The preset's "auto" precision, as training resolved it on this machine.
    precision = json.loads((run_dir / "config.json").read_text())["precision"]
    return {"ranks": ranks, "episodes_per_rank": episodes_per_rank, "precision": precision,
            "command": " ".join(command), "steps": args.steps,
            "images_per_second_median": statistics.median(rates),
            "images_per_second_windows": rates, "wall_seconds": wall_seconds,
            "val_accuracy": validation["val_accuracy"], "val_ci95": validation["val_ci95"],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def independent_run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The machine's ceiling for `args.ranks` processes: as many plain single-process
    runs of one rank's share at once, sharing nothing; their images/s summed."""
    episodes = args.global_episodes // args.ranks
    commands = [train_command(launcher(1), episodes, args.seed + index, args,
                              scratch / f"independent{index}")
                for index in range(args.ranks)]
    load_before = os.getloadavg()
    processes = [subprocess.Popen(command, env=one_thread_environment())
                 for command in commands]
    if any(process.wait() for process in processes):
        raise RuntimeError("an independent run failed")
    medians = [statistics.median(images_per_second(scratch / f"independent{index}"))
               for index in range(args.ranks)]
    return {"processes": args.ranks, "episodes_per_process": episodes,
            "commands": [" ".join(command) for command in commands],
            "images_per_second_median_per_process": medians,
            "images_per_second_summed": sum(medians),
            "load_average_before": [round(x, 2) for x in load_before]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--n-way", type=int, default=32)
    parser.add_argument("--global-episodes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of (1 process, K ranks, K independent processes, K ranks "
                             "at the single process's batch each); "
                             "images/s are the medians over rounds")
    parser.add_argument("--json", type=Path, default=Path("results/systems/ddp_scaling.json"))
    args = parser.parse_args()
    if args.global_episodes % args.ranks:
        parser.error(f"--global-episodes {args.global_episodes} is not a multiple of "
                     f"--ranks {args.ranks}")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as scratch:
        for index in range(args.repeats):
            folder = Path(scratch) / f"round{index}"
            rounds.append({"single": train_run(1, args, folder / "ranks1"),
                           "ddp": train_run(args.ranks, args, folder / f"ranks{args.ranks}"),
                           "independent": independent_run(args, folder),
                           "ddp_fixed_per_rank": train_run(
                               args.ranks, args, folder / f"ranks{args.ranks}-per-rank",
                               episodes_per_rank=args.global_episodes)})
    single = statistics.median(r["single"]["images_per_second_median"] for r in rounds)
    parallel = statistics.median(r["ddp"]["images_per_second_median"] for r in rounds)
    ceiling = statistics.median(r["independent"]["images_per_second_summed"] for r in rounds)
    per_rank = statistics.median(r["ddp_fixed_per_rank"]["images_per_second_median"]
                                 for r in rounds)
    speedup = parallel / single
    runs = [rounds[0]["single"], rounds[0]["ddp"]]
    report = {
        "benchmark": "ddp_scaling", **provenance(), "seed": args.seed, "preset": "cpu-quick",
        "precision": runs[0]["precision"],
        "global_batch": {"classes_per_step": args.n_way * args.global_episodes,
                         "drawings_per_class": 2, "steps": args.steps},
        "threads_per_process": 1, "repeats": args.repeats, "rounds": rounds, "runs": runs,
        "images_per_second": {"single": single, "ddp": parallel,
                              "independent_summed": ceiling,
                              "ddp_fixed_per_rank_batch": per_rank},
        "speedup": speedup, "target_speedup": 1.8,
        "speedup_fixed_per_rank_batch": per_rank / single,
        "independent_speedup": ceiling / single, "ddp_share_of_independent": parallel / ceiling,
        "notes": "Images/s counts every rank's images. The machine is shared with other "
                 "jobs: see the load averages before and after each run; a speedup under "
                 "load says more about the other jobs than about DDP. GPU measurements "
                 "(images/s per GPU with and without DDP, time to 97%) were not taken: "
                 "no GPU was available.",
    }
    write_json(args.json, report)
    print(json.dumps({"speedup": round(speedup, 3),
                      "independent_speedup": round(ceiling / single, 3),
                      "speedup_fixed_per_rank_batch": round(per_rank / single, 3),
                      "val_accuracy": [run["val_accuracy"] for run in runs],
                      "val_ci95": [run["val_ci95"] for run in runs]}))


if __name__ == "__main__":
    main()
