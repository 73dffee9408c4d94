"""Matching Networks' attention temperature, chosen on the validation split.

    python experiments/matching_scale.py [--steps 1500] [--json results/speed/matching_scale.json]

Trains the `matching-cpu` preset for a fixed number of steps (not minutes, so machine
load cannot favour one setting) with `matching.cosine_scale` in {1, 10, 30, 60, 100},
and once with full context embeddings at 30, and records the validation 5-way 1-shot
accuracy (200 fixed episodes of the validation classes) after every 500 steps. A run
directory that already holds a finished run of the same command is read, not retrained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gaussmem.metrics_log import read_metrics
from gaussmem.plumbing.script_record import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {f"scale{s}": [f"matching.cosine_scale={s}"] for s in (1, 10, 30, 60, 100)}
VARIANTS["scale30-fce"] = ["matching.cosine_scale=30", "matching.fce=true"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--json", default=str(ROOT / "results" / "speed" / "matching_scale.json"))
    args = parser.parse_args()
    rows = []
    for name, overrides in VARIANTS.items():
        run_dir = Path(args.runs) / f"matching-{name}"
        command = [sys.executable, "-m", "gaussmem", "train", "--preset", "matching-cpu",
                   "--run-dir", str(run_dir), "--max-steps", str(args.steps), "--seed", "0",
                   "--set", "budget.max_minutes=none", "--no-progress",
                   # The validation task these runs were measured with (5-way 1-shot).
                   "--set", "validation.n_way=5", "--set", "validation.episodes=200"]
        for override in overrides:
            command += ["--set", override]
        if not (run_dir / "summary.json").exists():
            subprocess.run(command, check=True, cwd=ROOT)
        summary = json.loads((run_dir / "summary.json").read_text())
        validation = [{"step": r["step"], "accuracy": r["val_accuracy"], "ci95": r["val_ci95"]}
                      for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "val"]
        rows.append({"variant": name, "overrides": overrides, "steps": summary["step"],
                     "train_minutes": summary["elapsed_seconds"] / 60,
                     "best_val_accuracy": summary["best_val_accuracy"],
                     "validation": validation, "train_command": " ".join(command[1:])})
        print(f"{name}: best validation 5-way 1-shot {summary['best_val_accuracy']:.2f}%")
    report = {**provenance(), "preset": "matching-cpu", "seed": 0,
              "measure": "validation 5-way 1-shot accuracy (%), 200 fixed episodes, seed 1234",
              "results": rows}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
