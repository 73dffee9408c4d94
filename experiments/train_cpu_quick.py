"""Benchmark: train a CPU preset of any method, then evaluate it on the paper's tables.

Runs the real commands (`gaussmem train`, `gaussmem evaluate`) so each result JSON names
the exact command that produced it, then writes a training record (throughput, minutes
to 97% validation 5-way 1-shot, validation accuracy per minute, hardware) and
regenerates results/omniglot.md.

    python experiments/train_cpu_quick.py --run-dir runs/cpu-quick-seed0 --tag cpu-quick
    python experiments/train_cpu_quick.py --preset protonet-cpu --run-dir runs/protonet-cpu5 \
        --tag protonet-cpu5

    python experiments/train_cpu_quick.py --preset lfw-cpu --run-dir runs/lfw-mavae-cpu15 \
        --tag mavae-cpu15

Evaluations, all on the test split with seed 0, of the checkpoint training selected on
the validation split only (or, for a run trained on train + val with
`--set data.train_subset=trainval --set data.val_subset=none`, its last checkpoint).
Omniglot: 5/20-way 1/5-shot with `--episodes` (1,000), 100- and 400-way with
`--large-episodes` (1,000: evaluation encodes each test image once, so large episodes
cost little more than small ones); the online protocol. LFW-a (a preset whose
data.dataset is "lfw"): 5/20/80-way 1/5-shot with `--episodes`.
Results go to `results/<dataset>/<tag>/`: `training.json`, one `<N>w<K>s.json` per
cell, `online-<N>w<K>s.json` and, with `--judge`, the MA-VAE's `generative.json`
(`--cells generative` runs that alone); each record carries its identity under "run"
(`run_identity`), so the tables never read a file's name.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from gaussmem.metrics_log import read_metrics
from gaussmem.plumbing.hardware import cpu_in_words, describe_hardware
from gaussmem.plumbing.script_record import write_json

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def online_cells(cells: str | None) -> list[tuple[int, int]]:
    """The online-protocol evaluations `--cells` asks for: "online-NwKs" (a stream of N
    classes, accuracy up to the K-th shot); "online" is "online-5w5s", the default."""
    wanted = cells.split(",") if cells else ["online"]
    found = []
    for cell in wanted:
        if cell == "online":
            found.append((5, 5))
        elif match := re.fullmatch(r"online-(\d+)w(\d+)s", cell):
            found.append((int(match[1]), int(match[2])))
    return found


def run_identity(dataset: str, tag: str, training: dict, preset: str | None,
                 overrides: list[str]) -> dict[str, object]:
    """What produced a result: kept inside every record of a run (training and each
    evaluation), so a table reads a row's method, recipe, budget, seed, hardware and code
    from the record itself and a file can move without changing the tables."""
    machine = training.get("hardware", {})
    on_gpu = training.get("device", "cpu").startswith("cuda")
    return {"dataset": dataset, "tag": tag, "method": training.get("method", "mavae"),
            "recipe": {"preset": preset, "overrides": overrides},
            "budget": {"steps": training.get("steps"),
                       "train_minutes": training.get("train_minutes")},
            "seed": training.get("config", {}).get("seed"),
            "hardware": (f"1 GPU ({machine.get('gpu', '?')})" if on_gpu else
                         cpu_in_words(machine)),
            "commit": machine.get("gaussmem")}


def training_record(run_dir: Path, tag: str, command: list[str], note: str,
                    concurrent_runs: int = 0) -> dict[str, object]:
    """Summarize a finished run from its metrics.jsonl and summary.json."""
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    episodes = config["episodes"]
    # Runs before the baselines existed did not record images per step (MA-VAE formula).
    images_per_step = summary.get("images_per_step") or (
        episodes["n_way"] * episodes["batch_episodes"] * episodes["images_per_class"])
    # Overall rate = all images / all training seconds (what a budget buys); the median
    # of the logging windows shows the rate when the machine was not busy elsewhere.
    windows = sorted(r["images_per_second"] for r in train)
    machine = describe_hardware()
    return {
        "tag": tag, "kind": "training", "command": " ".join(command), "run_dir": str(run_dir),
        "method": config.get("method", "mavae"), "config": config, "note": note,
        # Other trainings that shared the device meanwhile: their steps slow this one's,
        # so its images/s is not the device's speed (benchmarks/train_step_speed.py is).
        "concurrent_runs": concurrent_runs,
        "device": summary.get("device", "cpu"),
        "steps": summary["step"], "train_minutes": summary["elapsed_seconds"] / 60.0,
        "images_per_second_overall": summary["step"] * images_per_step
        / summary["elapsed_seconds"],
        "images_per_second_median_window": windows[len(windows) // 2] if windows else None,
        "best_val_accuracy": summary["best_val_accuracy"], "best_step": summary["best_step"],
        "minutes_to_97_val_5w1s": summary["minutes_to_97"],
        "validation": [{"step": r["step"], "minutes": r["minutes"],
                        "accuracy": r["val_accuracy"], "ci95": r["val_ci95"],
                        "time_to_97_accuracy": r.get("time_to_97_accuracy",
                                                     r["val_accuracy"])} for r in val],
        "triplet_diagnostics": [{k: r.get(k) for k in ("step", "loss", "triplet",
                                                       "triplet_grad_norm", "positive_rate",
                                                       "accuracy")}
                                for r in train[:: max(1, len(train) // 20)]],
        # The training's threads (`num_threads`, else torch's default, as here), not
        # this driver's.
        "hardware": {**machine, "torch_threads": config.get("num_threads")
                     or machine["torch_threads"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--run-dir", default="runs/cpu-quick-seed0")
    parser.add_argument("--tag", default="cpu-quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--large-episodes", type=int, default=1000)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--keep-record", action="store_true",
                        help="with --skip-train: keep the existing training record (e.g. "
                        "one written on the GPU machine that trained the run) and only "
                        "evaluate")
    parser.add_argument("--concurrent-runs", type=int, default=0,
                        help="how many other trainings shared the device (kept in the "
                        "training record)")
    parser.add_argument("--skip-eval", action="store_true",
                        help="train and write the training record only (evaluate later with "
                        "--skip-train, e.g. several evaluations side by side)")
    parser.add_argument("--eval-threads", type=int, default=None,
                        help="torch threads of each `gaussmem evaluate` (default: torch's)")
    parser.add_argument("--note", default="", help="free text kept in the training record")
    parser.add_argument("--cells", default=None,
                        help="comma-separated subset of cells to evaluate, e.g. 20w1s,20w5s; "
                        "online-NwKs for the online protocol over N classes up to K shots, "
                        "online for online-5w5s (default: all eight and online)")
    parser.add_argument("--results", default="results")
    parser.add_argument("--judge", default=None,
                        help="an MA-VAE run also gets `gaussmem generative-report` on the test "
                        "split, its generations judged by this few-shot checkpoint (trained "
                        "apart from the model): generative.json beside the cells")
    args = parser.parse_args()

    gaussmem = [sys.executable, "-m", "gaussmem"]
    run_dir = Path(args.run_dir)
    train_command = [*gaussmem, "train", "--preset", args.preset, "--run-dir", str(run_dir),
                     "--seed", str(args.seed), "--no-progress"]
    for override in args.overrides:
        train_command += ["--set", override]
    if not args.skip_train:
        run(train_command)
    if args.keep_record and not args.skip_train:
        parser.error("--keep-record only goes with --skip-train")
    dataset = json.loads((run_dir / "config.json").read_text())["data"]["dataset"]
    results = Path(args.results) / dataset / args.tag
    if args.keep_record:
        if not (results / "training.json").exists():
            parser.error(f"--keep-record: no training.json in {results}")
        record = json.loads((results / "training.json").read_text())
    else:
        record = training_record(run_dir, args.tag, train_command, args.note,
                                 args.concurrent_runs)
        record["run"] = run_identity(dataset, args.tag, record, args.preset, args.overrides)
        results.mkdir(parents=True, exist_ok=True)
        write_json(results / "training.json", record)
    if args.skip_eval:
        return 0
    # A run without validation (data.val_subset none: a final fit on train + val) has
    # no best checkpoint; its last one is the model.
    validated = json.loads((run_dir / "config.json").read_text())["data"]["val_subset"]
    checkpoint = run_dir / "checkpoints" / ("best.ckpt" if validated else "last.ckpt")
    threads = ["--threads", str(args.eval_threads)] if args.eval_threads else []
    cells = [(5, 1, args.episodes), (5, 5, args.episodes), (20, 1, args.episodes),
             (20, 5, args.episodes), (100, 1, args.large_episodes),
             (100, 5, args.large_episodes), (400, 1, args.large_episodes),
             (400, 5, args.large_episodes)]
    if dataset == "lfw":  # the paper's Table 3; the test split has 80 people
        cells = [(n_way, n_shot, args.episodes) for n_way in (5, 20, 80)
                 for n_shot in (1, 5)]
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [cell for cell in cells if f"{cell[0]}w{cell[1]}s" in wanted]
    for n_way, n_shot, episodes in cells:
        out = results / f"{n_way}w{n_shot}s.json"
        run([*gaussmem, "evaluate", "--checkpoint", str(checkpoint), "--n-way", str(n_way),
             "--n-shot", str(n_shot), "--episodes", str(episodes), "--seed", "0",
             "--split", "test", "--json", str(out), "--no-progress", *threads])
        report = json.loads(out.read_text())
        report["tag"] = args.tag
        report["run"] = record["run"]
        # The evaluation's own thread count, not this driver's.
        threads_used = report.get("hardware", {}).get("torch_threads")
        report["hardware"] = {**describe_hardware(), "torch_threads": threads_used}
        write_json(out, report, sort_keys=True)
    # The online protocol needs classes shown repeatedly: not on mirrored LFW-a.
    for n_way, n_shot in online_cells(args.cells) if dataset == "omniglot" else []:
        online = results / f"online-{n_way}w{n_shot}s.json"
        run([*gaussmem, "evaluate", "--checkpoint", str(checkpoint), "--protocol", "online",
             "--n-way", str(n_way), "--n-shot", str(n_shot), "--episodes", str(args.episodes),
             "--seed", "0", "--split", "test", "--json", str(online), "--no-progress",
             *threads])
        report = json.loads(online.read_text())
        report["run"] = record["run"]
        write_json(online, report, sort_keys=True)
    if args.judge and record["run"]["method"] == "mavae":
        out = results / "generative.json"
        run([*gaussmem, "generative-report", "--checkpoint", str(checkpoint), "--judge",
             args.judge, "--split", "test", "--seed", "0", "--json", str(out), *threads])
        report = json.loads(out.read_text())
        report.update({"kind": "generative", "tag": args.tag, "run": record["run"]})
        write_json(out, report, sort_keys=True)
    run([sys.executable, str(ROOT / "scripts" / "make_results_table.py")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
