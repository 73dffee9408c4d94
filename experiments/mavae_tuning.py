"""MA-VAE training variants under a fixed budget, scored on the validation split.

    python experiments/mavae_tuning.py --minutes 7.5 [--only NAME ...] [--seed S ...]
        [--json results/tuning/mavae_tuning.json]   (also writes the .md beside it)
    python experiments/mavae_tuning.py --steps 2200 --device cuda --parallel 4 \
        --cuda-graph --only NAME ... --seed 0 1

Each variant is `gaussmem train --preset cpu-quick` with `--set` overrides and a budget:
`--minutes` of wall clock (cosine decay over it; on a CPU with nothing else running),
or `--steps` with no wall clock, so that runs trained side by side on one GPU
(`--parallel`) train exactly what one alone would. Its best checkpoint (selected by the
validation task its overrides name) is then evaluated on the validation split only:
20-way 5-shot (the cell where cpu-quick trailed the paper) and 5-way 1-shot, 1,000
episodes each, seed 0, 15 queries per class. Every override is spelled out, so a
variant means the same thing whatever the preset's defaults become. Run directories
are `runs/tuning/<minutes>min|<steps>steps[-gpu]-<variant>[-seed<S>]`, each with its
training log beside it; a finished run is evaluated, not retrained, and an interrupted
one resumes from its last checkpoint. Results from
different budgets, seeds and devices are merged into one JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gaussmem.plumbing.atomic import write_text_atomic
from gaussmem.plumbing.hardware import describe_hardware
from gaussmem.plumbing.script_record import merge_by_identity, provenance, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]

# How best.ckpt is picked: validation 5-way 1-shot over 200 episodes (the default until
# the select20w1s rows) or 20-way 1-shot over 1,000 (today's default).
SELECT_5W1S = ["validation.n_way=5", "validation.episodes=200"]
SELECT_20W1S = ["validation.n_way=20", "validation.episodes=1000"]
# cpu-quick's model, optimizer and loss weights before the rows that changed them.
FIRST_MODEL = ["model.style_dim=16", "optim.lr=1e-3", "optim.warmup_steps=0",
               "loss.latent=0.1"]


def spelled(*groups: list[str] | str) -> list[str]:
    """Overrides from `groups` in order, a later `key=value` replacing an earlier one's
    value in place, so every variant lists each setting once."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in [group] if isinstance(group, str) else group:
            key, value = override.split("=", 1)
            merged[key] = value
    return [f"{key}={value}" for key, value in merged.items()]


# 128 classes per step (8-way x 16): cpu-quick's default until this benchmark.
BASE = spelled(["episodes.n_way=8", "precision=bfloat16", "model.decoder_hidden_channels=32"],
               FIRST_MODEL, SELECT_5W1S)
# 512 classes per step (32-way x 16), cpu-quick's default since the 512classes rows.
BASE_512 = spelled(["episodes.n_way=32", "precision=bfloat16",
                    "model.decoder_hidden_channels=32"], FIRST_MODEL)
# cpu-quick's model and optimizer from the warm-up rows until c2 = 0.3.
TODAY_512 = spelled(BASE_512, ["model.style_dim=4", "optim.lr=2e-3", "optim.warmup_steps=100"])
# cpu-quick with c2 = 0.3 (between the latent0.3 and latent1 rows).
C2_512 = spelled(TODAY_512, "loss.latent=0.3")
#: name -> (overrides of cpu-quick, what it tests)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "float32-dec64": (spelled(["episodes.n_way=8", "precision=float32",
                               "model.decoder_hidden_channels=64"], FIRST_MODEL,
                              SELECT_5W1S),
                      "cpu-quick before this benchmark: float32, 64-channel decoder"),
    "bfloat16-dec32": (BASE, "bfloat16 autocast and a 32-channel decoder: ~1.9x the "
                             "images/s (benchmarks/train_step_speed.py)"),
    "bfloat16-dec32-3drawings": (spelled(BASE, "episodes.images_per_class=3"),
                                 "3 drawings per class per step: more shots per step"),
    "bfloat16-dec32-10steps": (spelled(BASE, "episodes.steps_per_episode=10"),
                               "10 steps per training episode: queries meet entries "
                               "merged from more drawings, as 5-shot supports are"),
    "bfloat16-dec32-256classes": (spelled(BASE, "episodes.n_way=16"),
                                  "256 classes per step (16-way x 16) instead of 128: "
                                  "harder negatives, half the steps"),
    "bfloat16-dec32-512classes": (spelled(BASE, "episodes.n_way=32"),
                                  "512 classes per step (32-way x 16): harder negatives "
                                  "still, a quarter of the steps"),
    "bfloat16-dec32-generative0.3": (spelled(BASE, "loss.generative=0.3"),
                                     "c3 = 0.3: less of the trunk spent on reconstruction"),
    "bfloat16-dec32-temperature2": (spelled(BASE, "similarity.temperature=2"),
                                    "exp(-SKL / 2): negatives must be twice as far apart "
                                    "to stop contributing (a wider margin)"),
    "bfloat16-dec32-temperature4": (spelled(BASE, "similarity.temperature=4"),
                                    "exp(-SKL / 4): a wider margin still"),
    "bfloat16-dec32-temperature8": (spelled(BASE, "similarity.temperature=8"),
                                    "exp(-SKL / 8): a wider margin still"),
    "bfloat16-dec32-latent0.01": (spelled(BASE, "loss.latent=0.01"),
                                  "c2 = 0.01: less pull of the content means towards 0"),
    "512classes-select20w1s": (spelled(BASE_512, SELECT_20W1S),
                               "best.ckpt picked by validation 20-way 1-shot over 1,000 "
                               "episodes instead of 5-way 1-shot over 200 (saturated)"),
    "1024classes-select20w1s": (spelled(BASE_512, "episodes.n_way=64", SELECT_20W1S),
                                "1024 classes per step (64-way x 16): 128 -> 256 -> 512 "
                                "improved each time"),
    "512classes-lr2e-3-select20w1s": (spelled(BASE_512, "optim.lr=2e-3", SELECT_20W1S),
                                      "Adam lr 2e-3: 512-class steps average 4x the "
                                      "gradients of the 128-class steps lr 1e-3 was set on"),
    "512classes-content128-select20w1s": (spelled(BASE_512, "model.content_dim=128", SELECT_20W1S),
                                          "128-d content: room for 4,112 training classes "
                                          "(and 400-way tests) at the same trunk cost"),
    "512classes-temperature4-select20w1s": (spelled(BASE_512, "similarity.temperature=4",
                                                    SELECT_20W1S),
                                            "exp(-SKL / 4), +0.1 at 128 classes: does it "
                                            "hold at 512?"),
    "512classes-style4-select20w1s": (spelled(BASE_512, "model.style_dim=4", SELECT_20W1S),
                                      "4-d style: less room for the class in z_s, so the "
                                      "decoder must read z_c (docs/generative.md)"),
    "512classes-style4-hidden80": (spelled(BASE_512, "model.style_dim=4",
                                           "model.hidden_channels=80", SELECT_20W1S),
                                   "an 80-channel trunk: validation 20-way 1-shot flattened "
                                   "after ~10 of 15 minutes at 64; ~1.12x the step time"),
    # The variants from here on ran after the trunk's blocks moved the ReLU after the
    # max-pool (the same function, ~1.1x the steps per minute); those above ran before.
    "512classes-style4-relu-after-pool": (spelled(BASE_512, "model.style_dim=4", SELECT_20W1S),
                                          "512classes-style4-select20w1s again, with the "
                                          "faster trunk: what the extra steps buy"),
    "512classes-style4-hidden80-relu-after-pool": (
        spelled(BASE_512, "model.style_dim=4", "model.hidden_channels=80", SELECT_20W1S),
        "512classes-style4-hidden80 again, with the faster trunk"),
    "512classes-style4-lr2e-3-warmup100": (
        spelled(TODAY_512, SELECT_20W1S),
        "Adam lr 2e-3 after a 100-step linear warm-up: without one it collapsed in its "
        "first 50 steps; validation still rose at the end of 15 minutes at 1e-3"),
    "512classes-style4-lr3e-3-warmup100": (
        spelled(BASE_512, "model.style_dim=4", "optim.lr=3e-3", "optim.warmup_steps=100",
                SELECT_20W1S),
        "Adam lr 3e-3 after a 100-step warm-up: does the gain of 2e-3 over 1e-3 go on?"),
    # The paper's step (5-way x 16 = 80 classes): do cpu-quick's choices carry over to the
    # presets omniglot-5way / -5way-to-20way, which so far keep the library defaults?
    "80classes-paper-presets-model": (
        spelled(["episodes.n_way=5", "precision=float32", "model.decoder_hidden_channels=64"],
                FIRST_MODEL, SELECT_20W1S),
        "omniglot-5way's model and optimizer (the library defaults) at the CPU budget"),
    "80classes-cpu-quick-model": (
        spelled(["episodes.n_way=5", "precision=bfloat16", "model.decoder_hidden_channels=32",
                 "model.style_dim=4", "optim.lr=2e-3", "optim.warmup_steps=100",
                 "loss.latent=0.1"], SELECT_20W1S),
        "the same 80-class steps with cpu-quick's model and optimizer of the warm-up rows"),
    # After the GPU runs: cpu-quick's validation stops rising after ~2,000 steps however
    # many more it trains, so these change the objective rather than the schedule.
    "512classes-today-generative3": (
        spelled(TODAY_512, "loss.generative=3", SELECT_20W1S),
        "c3 = 3: c3 = 0.3 scored lower at 128 classes, so does more reconstruction "
        "regularize the content posterior further?"),
    "512classes-today-latent0.3": (
        spelled(TODAY_512, "loss.latent=0.3", SELECT_20W1S),
        "c2 = 0.3: c2 = 0.01 scored lower at 128 classes; a stronger pull to the prior"),
    # Regularizers on top of c2 = 0.3: validation peaks near step 2,000 and then slides
    # (on a GPU), as if the model learned the training drawings rather than the classes.
    "512classes-c2-affine": (
        spelled(C2_512, "augment.max_rotation_degrees=10", "augment.max_scale=0.1",
                "augment.max_shift=0.07", SELECT_20W1S),
        "random affine distortions of every training image (rotation +-10 deg, scale "
        "+-10%, shift +-2 px): each showing of a class is a new image"),
    "512classes-today-latent1": (
        spelled(TODAY_512, "loss.latent=1", SELECT_20W1S),
        "c2 = 1: 0.01 < 0.1 < 0.3 on validation; does a stronger pull still help?"),
    "512classes-today-latent2": (
        spelled(TODAY_512, "loss.latent=2", SELECT_20W1S),
        "c2 = 2: between 1 (the best so far) and 3 (lower)"),
    "512classes-today-latent3": (
        spelled(TODAY_512, "loss.latent=3", SELECT_20W1S),
        "c2 = 3: where does the gain of a stronger pull to the prior stop?"),
    # Longer budgets: at c2 = 0.1 validation slid after ~2,000 steps (GPU rows); do c2 = 1
    # and distortions let the steps past it pay? (run with --minutes 40)
    "512classes-latent1-affine": (
        spelled(TODAY_512, "loss.latent=1", "augment.max_rotation_degrees=10",
                "augment.max_scale=0.1", "augment.max_shift=0.07", SELECT_20W1S),
        "c2 = 1 and the distortions of 512classes-c2-affine: a regularized recipe for "
        "budgets past the ~2,000 steps where the plain one stops rising"),
    # Today's preset (c2 = 1) with one more setting changed, at 15 minutes.
    "512classes-latent1-temperature4": (
        spelled(TODAY_512, "loss.latent=1", "similarity.temperature=4", SELECT_20W1S),
        "exp(-SKL / 4) with c2 = 1: it scored +0.16 over exp(-SKL) at c2 = 0.1 "
        "(512classes-temperature4-select20w1s); does it add to c2 = 1?"),
    "512classes-latent1-temperature0.5": (
        spelled(TODAY_512, "loss.latent=1", "similarity.temperature=0.5", SELECT_20W1S),
        "exp(-2 SKL) with c2 = 1: exp(-SKL / 4) trailed exp(-SKL) at c2 = 1, so is a "
        "sharper similarity better for the more compact posteriors c2 = 1 leaves?"),
    "512classes-latent1-content32": (
        spelled(TODAY_512, "loss.latent=1", "model.content_dim=32", SELECT_20W1S),
        "32-d content with c2 = 1: a 128-d content scored lower than 64 at c2 = 0.1 "
        "(512classes-content128-select20w1s); does the other direction score higher?"),
    "512classes-latent1-wd5e-4": (
        spelled(TODAY_512, "loss.latent=1", "optim.weight_decay=5e-4", SELECT_20W1S),
        "Adam's L2 weight decay 5e-4 with c2 = 1: validation peaks near step 2,000 and "
        "then slides (cpu-quick's GPU run), so does another regularizer lift the peak?"),
    "512classes-latent1-3blocks": (
        spelled(TODAY_512, "loss.latent=1", "model.n_blocks=3", SELECT_20W1S),
        "three conv blocks instead of four: the heads read a 3x3x64 = 576-d feature that "
        "keeps where strokes are, instead of the fourth block's 64-d max over it"),
    "512classes-latent1-lr3e-3": (
        spelled(TODAY_512, "loss.latent=1", "optim.lr=3e-3", SELECT_20W1S),
        "Adam lr 3e-3 (100-step warm-up) with c2 = 1: it tied 2e-3 at c2 = 0.1 "
        "(512classes-style4-lr3e-3-warmup100); does the stronger pull to the prior let "
        "a larger rate pay?"),
    # Run at 15 and at 40 minutes: the wider trunk takes more time per step.
    "512classes-latent1-hidden80": (
        spelled(TODAY_512, "loss.latent=1", "model.hidden_channels=80", SELECT_20W1S),
        "an 80-channel trunk with c2 = 1: at c2 = 0.1 and lr 1e-3 it tied 64 within the "
        "CI (512classes-style4-hidden80*); does the stronger pull to the prior, or a "
        "longer budget, let the wider trunk's capacity pay?"),
    "512classes-latent1-ema0.998": (
        spelled(TODAY_512, "loss.latent=1", "optim.ema_decay=0.998", SELECT_20W1S),
        "validation and checkpoints on a moving average of the weights (decay 0.998, "
        "~500 steps): past step ~1,500 the trained weights' checkpoints wander within a "
        "CI of each other; does their average score higher than any one of them?"),
    # Beyond the paper's objective: every variant of the triplet's setting has plateaued
    # near the same validation score, so change what c1 weighs.
    "512classes-latent1-softmax": (
        spelled(TODAY_512, "loss.latent=1", "loss.memory_term=softmax", SELECT_20W1S),
        "c1 weighs a softmax over all memory entries (P(entry) proportional to exp(-SKL)) "
        "instead of the triplet: every close negative gets a gradient, not just the "
        "nearest one"),
    "512classes-latent1-softmax-temperature0.25": (
        spelled(TODAY_512, "loss.latent=1", "loss.memory_term=softmax",
                "similarity.temperature=0.25", SELECT_20W1S),
        "the memory softmax with exp(-SKL / 0.25): at T = 1 the pull of c2 = 1 to the "
        "prior keeps the means too close for a confident softmax over ~1,000 entries; "
        "a sharper one needs 4x smaller divergences for the same margin"),
    # Variants too slow for a 2-core CPU's 15 minutes, for a fixed step budget on a GPU
    # (`--steps 2200 --device cuda`, the step count cpu-quick-trainval trains): each
    # gives the preset more of something the CPU could not afford.
    "512classes-latent1-float32": (
        spelled(TODAY_512, "loss.latent=1", "precision=float32", SELECT_20W1S),
        "float32 instead of bfloat16 autocast at the same steps: bfloat16 bought its place "
        "with speed on the CPU (more steps per minute), not with accuracy per step"),
    "512classes-latent1-hidden128": (
        spelled(TODAY_512, "loss.latent=1", "model.hidden_channels=128", SELECT_20W1S),
        "a 128-channel trunk (~4x the convolutions): 80 channels tied 64 in 15 CPU minutes, "
        "where the wider trunk trained fewer steps"),
    "512classes-latent1-hidden192": (
        spelled(TODAY_512, "loss.latent=1", "model.hidden_channels=192", SELECT_20W1S),
        "a 192-channel trunk: 128 channels scored above 64 on all three validation tasks at "
        "equal steps (+0.49 on 20-way 1-shot); does a wider trunk still gain?"),
    # Aimed at the one cell still under Kaiser et al. (5-way 5-shot, where the 128-channel
    # trainval recipe scored 99.53-99.55 over 10,000 test episodes against 99.6): each is
    # compared on validation 5-way 5-shot x 10,000 episodes (experiments/episode_errors.py)
    # as well as on the table's cells.
    "512classes-latent1-hidden128-10steps": (
        spelled(TODAY_512, "loss.latent=1", "model.hidden_channels=128",
                "episodes.steps_per_episode=10", SELECT_20W1S),
        "10 steps per training episode: a class's later queries meet an entry merged from "
        "up to 18 drawings, nearer a 5-shot test entry (5 merged supports) than 1-shot"),
    "512classes-latent1-hidden128-3drawings": (
        spelled(TODAY_512, "loss.latent=1", "model.hidden_channels=128",
                "episodes.images_per_class=3", SELECT_20W1S),
        "3 drawings per class per step (1.5x the images): more same-class pairs for the "
        "triplet and more drawings merged into each entry before the next step's queries"),
    "512classes-latent1-hidden128-temperature4": (
        spelled(TODAY_512, "loss.latent=1", "model.hidden_channels=128",
                "similarity.temperature=4", SELECT_20W1S),
        "exp(-SKL / 4) with the 128-channel trunk: among the 15-minute 64-channel runs it "
        "had the highest validation 20-way 5-shot"),
    "512classes-latent1-decoder64": (
        spelled(TODAY_512, "loss.latent=1", "model.decoder_hidden_channels=64", SELECT_20W1S),
        "the 64-channel decoder the presets narrowed to 32 for CPU speed: does a better "
        "reconstruction shape the content latent better?"),
    "1024classes-latent1": (
        spelled(TODAY_512, "loss.latent=1", "episodes.n_way=64", SELECT_20W1S),
        "1,024 classes per step at the same steps (2x the images): 128 -> 256 -> 512 "
        "each scored higher, 1,024 lower only where a CPU minute bought half the steps"),
    "2048classes-latent1": (
        spelled(TODAY_512, "loss.latent=1", "episodes.n_way=128", SELECT_20W1S),
        "2,048 classes per step (4x the images): half the training classes share one "
        "memory, so the triplet's nearest negatives are the hardest the split has"),
}
CELLS = ((20, 5), (5, 1))


@dataclass(frozen=True)
class Budget:
    """A wall-clock budget (`minutes`, cosine decay over it) or a step budget (`steps`,
    no wall clock, so a run sharing its device trains the same steps, only slower)."""

    minutes: float | None = None
    steps: int | None = None

    def label(self) -> str:
        return f"{self.minutes:g} min" if self.minutes is not None else f"{self.steps} steps"

    def directory_prefix(self) -> str:
        return self.label().replace(" ", "")

    def train_arguments(self) -> list[str]:
        if self.minutes is not None:
            return ["--max-minutes", f"{self.minutes:g}"]
        return ["--max-steps", str(self.steps), "--set", "budget.max_minutes=none"]


def run_name(budget: Budget, on_gpu: bool, variant: str, seed: int) -> str:
    """A run's directory name: `<budget>[-gpu]-<variant>[-seed<S>]`."""
    return (f"{budget.directory_prefix()}{'-gpu' if on_gpu else ''}-{variant}"
            + (f"-seed{seed}" if seed else ""))


def train_command(run_dir: Path, overrides: list[str], budget: Budget, seed: int,
                  device: str, threads: int | None, cuda_graph: bool,
                  validate_every: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "gaussmem", "train", "--preset", "cpu-quick",
               "--run-dir", str(run_dir), *budget.train_arguments(), "--seed", str(seed),
               "--no-progress", "--set", f"device={device}"]
    if threads is not None:
        command += ["--set", f"num_threads={threads}"]
    if cuda_graph:
        command += ["--set", "cuda_graph=true"]
    if validate_every is not None:
        command += ["--set", f"validation.every_steps={validate_every}",
                    "--set", f"checkpoint_every={validate_every}"]
    for override in overrides:
        command += ["--set", override]
    return command


def train_all(jobs: list[tuple[Path, list[str]]], parallel: int,
              finished: Callable[[Path], None] = lambda run_dir: None,
              other_trainings: int = 0) -> None:
    """Train every job not yet finished, up to `parallel` side by side, and call
    `finished(run_dir)` as each one ends (finished earlier included), so its evaluation
    overlaps the trainings still running and a benchmark cut short keeps what ended.
    Each training logs to `<run_dir>.log` and notes in `<run_dir>/sharing.json` how many
    other trainings shared its device (its images/s is a share). A run interrupted
    earlier (a last checkpoint, no summary) resumes from its checkpoint; one stopped
    before its first checkpoint starts again (--overwrite). A failed
    training does not stop the others; the benchmark then exits naming each failed
    log."""
    pending = [(run_dir, command) for run_dir, command in jobs
               if not (run_dir / "summary.json").exists()]
    others = min(parallel, len(pending)) - 1 + other_trainings
    lock = threading.Lock()
    failed: list[str] = []

    def train(run_dir: Path, command: list[str]) -> None:
        interrupted = (run_dir / "checkpoints" / "last.ckpt").exists()
        # Killed before its first checkpoint, a run left metrics but nothing to resume:
        # train it afresh in its place.
        command = [*command, "--resume" if interrupted else "--overwrite"]
        print("+", " ".join(command[1:]), flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run trained its earlier steps beside as many others as it did then.
        shared = max(others, concurrent_runs(run_dir)) if interrupted else others
        write_json(run_dir / "sharing.json", {"concurrent_runs": shared}, indent=None)
        with open(f"{run_dir}.log", "a" if interrupted else "w") as log:
            code = subprocess.run(command, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            with lock:
                failed.append(f"{run_dir}.log ({code})")
            print(f"training failed ({code}); see {run_dir}.log", flush=True)
        else:
            finished(run_dir)

    for run_dir, _ in jobs:
        if (run_dir / "summary.json").exists():
            finished(run_dir)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(train, *job) for job in pending]:
            future.result()
    if failed:
        raise SystemExit("training failed; see " + ", ".join(failed))


def concurrent_runs(run_dir: Path) -> int:
    """Other trainings that shared the run's device (0 for runs from before they were
    noted: those trained alone)."""
    sharing = read_json(run_dir / "sharing.json")
    return sharing["concurrent_runs"] if sharing else 0


def evaluate_cell(run_dir: Path, n_way: int, n_shot: int, device: str,
                  threads: int | None = None) -> dict[str, float]:
    """The run's best checkpoint on `n_way`-way `n_shot`-shot validation episodes
    (cached in `<run_dir>/val-<N>w<K>s.json`)."""
    out = run_dir / f"val-{n_way}w{n_shot}s.json"
    if not out.exists():
        command = [sys.executable, "-m", "gaussmem", "evaluate", "--checkpoint",
                   str(run_dir / "checkpoints" / "best.ckpt"), "--split", "val",
                   "--n-way", str(n_way), "--n-shot", str(n_shot), "--episodes", "1000",
                   "--seed", "0", "--device", device, "--no-progress", "--json", str(out)]
        if threads is not None:
            command += ["--threads", str(threads)]
        subprocess.run(command, check=True, cwd=ROOT)
    accuracy = json.loads(out.read_text())["result"]["accuracy"]
    return {"mean": accuracy["mean"], "ci95": accuracy["ci95"]}


def selection_task(overrides: list[str]) -> str:
    """The validation task that picked best.ckpt, e.g. "20w1s x 1000" (every variant
    pins it in its overrides)."""
    values = dict(override.split("=", 1) for override in overrides)
    return f"{values['validation.n_way']}w1s x {values['validation.episodes']}"


def read_rows(path: Path) -> list[dict]:
    """The report's rows (none if it does not exist yet)."""
    report = read_json(path) or {"results": []}
    # Rows from before the CPU was kept per row were all measured on the report's CPU.
    for row in report["results"]:
        row.setdefault("cpu", report["hardware"]["cpu"])
    return report["results"]


@contextmanager
def locked_directory(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (flock on the directory itself: the report
    is replaced by a rename, so a lock on the file would not be shared), so that two
    benchmarks writing one report side by side (e.g. two step budgets on one GPU) each
    merge their row into what the other wrote instead of overwriting it."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def row_budget(row: dict) -> str:
    """A row's budget as shown: "15 min" or "2200 steps"."""
    return Budget(row.get("minutes"), row.get("max_steps")).label()


def row_device(row: dict) -> str:
    """Where a row trained: its GPU, else its CPU (rows before GPUs kept only the CPU)."""
    return row.get("device") or row["cpu"]


def render(report: dict) -> str:
    """The report as a Markdown table, one row per (budget, variant, seed, device)."""
    hardware = report["hardware"]
    lines = ["# MA-VAE training variants (validation split)", "",
             "Generated by `python experiments/mavae_tuning.py --minutes M` (or `--steps N`); "
             "do not edit by hand. Each row: `gaussmem train --preset cpu-quick --seed S` "
             "with the overrides shown and a budget of M minutes (`--max-minutes M`: the "
             "cosine decay spans them) or of N steps (`--max-steps N`, no wall clock), "
             "then its best checkpoint (picked by the `validation.*` task in its "
             "overrides) evaluated on the **validation** split, 1,000 episodes, seed 0, "
             "± 95% CI. \"selection task: best\" is that task (N-way 1-shot x episodes) "
             "and its accuracy at the kept checkpoint, as measured during training. "
             f"The last run that wrote this report used torch {hardware['torch']}; the "
             "device is each row's (a minute buys more "
             "steps on a faster one, so compare minute-budget rows of one device). Images/s "
             "of runs trained side by side on one device are each run's share. Each row's "
             "whole training command (validation interval included) is its "
             "`train_command` in the JSON.", "",
             "| budget | variant | training seed S | device | overrides | steps | images/s | "
             "min to 97% | selection task: best | val 20w5s | val 5w1s | what it tests |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        to_97 = "-" if row["minutes_to_97"] is None else f"{row['minutes_to_97']:.1f}"
        cells = " | ".join(f"{row[key]['mean']:.2f} ± {row[key]['ci95']:.2f}"
                           for key in ("val_20w5s", "val_5w1s"))
        selection = f"{selection_task(row['overrides'])}: {row['best_val_accuracy']:.2f}"
        shared = row.get("concurrent_runs", 0)
        speed = f"{row['images_per_second']:.0f}" + (f" ({shared + 1} side by side)"
                                                     if shared else "")
        lines.append(f"| {row_budget(row)} | {row['variant']} | {row.get('seed', 0)} | "
                     f"{row_device(row)} | "
                     f"{', '.join(f'`{o}`' for o in row['overrides'])} | {row['steps']} | "
                     f"{speed} | {to_97} | {selection} | {cells} | {row['purpose']} |")
    return "\n".join(lines) + "\n"


def row_key(row: dict) -> tuple[float, int, str, int, str]:
    """What makes a row: a rerun on another device adds a row instead of replacing one."""
    return (row.get("minutes") or 0.0, row.get("max_steps") or 0, row["variant"],
            row.get("seed", 0), row_device(row))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_group = parser.add_mutually_exclusive_group()
    budget_group.add_argument("--minutes", type=float, default=7.5,
                              help="wall-clock training budget")
    budget_group.add_argument("--steps", type=int, default=None,
                              help="step budget instead, with no wall clock")
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(VARIANTS))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "tuning"))
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="training seeds, each a row (evaluation episodes keep seed 0)")
    parser.add_argument("--device", default="cpu",
                        help="where to train and encode: cpu, cuda or cuda:N")
    parser.add_argument("--parallel", type=int, default=1,
                        help="trainings side by side on the device (a GPU idles on one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of each training (default: torch's)")
    parser.add_argument("--other-trainings", type=int, default=0,
                        help="trainings outside this benchmark sharing the device, e.g. "
                             "another benchmark beside it (kept in each row with its own "
                             "--parallel runs, since each run's images/s is a share)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay each training step as a CUDA graph (cuda only)")
    parser.add_argument("--validate-every", type=int, default=None,
                        help="steps between validations and checkpoints (default: the "
                             "preset's 150; fewer validations leave a GPU less idle)")
    parser.add_argument("--json", default=str(ROOT / "results" / "tuning" / "mavae_tuning.json"))
    parser.add_argument("--print-overrides", metavar="VARIANT", choices=sorted(VARIANTS),
                        help="print the variant's overrides (space-separated key=value) "
                             "and exit, e.g. to train it on train + val for the test table")
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.other_trainings < 0:
        parser.error(f"--other-trainings must be >= 0, got {args.other_trainings}")
    if args.validate_every is not None and args.validate_every < 1:
        parser.error(f"--validate-every must be >= 1, got {args.validate_every}")
    if args.cuda_graph and not args.device.startswith("cuda"):
        parser.error("--cuda-graph needs --device cuda")
    if args.print_overrides:
        print(" ".join(VARIANTS[args.print_overrides][0]))
        return 0
    budget = Budget(steps=args.steps) if args.steps is not None else Budget(args.minutes)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    hardware = describe_hardware()
    device_name = hardware.get("gpu") if args.device.startswith("cuda") else None
    # Seed-major order: a benchmark cut short has every variant's first seed first.
    jobs = {}
    for seed in args.seed:
        for name, (overrides, purpose) in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            run_dir = Path(args.runs) / run_name(budget, bool(device_name), name, seed)
            command = train_command(run_dir, overrides, budget, seed, args.device,
                                    args.threads, args.cuda_graph, args.validate_every)
            jobs[run_dir] = (name, overrides, purpose, seed, command)
    # One run recorded at a time: on a 16-core GPU machine, two evaluations side by side
    # with torch's default 16 threads each (beside trainings) did not finish a
    # 1,000-episode cell in 3 minutes, where one alone took about 10 s (the episodes'
    # memory runs on the CPU); the lock also keeps the report's rewrites whole.
    lock = threading.Lock()

    def record(run_dir: Path) -> None:
        """Evaluate a finished run and rewrite the report with its row."""
        name, overrides, purpose, seed, command = jobs[run_dir]
        summary = json.loads((run_dir / "summary.json").read_text())
        with lock:
            evaluations = {f"val_{w}w{s}s": evaluate_cell(run_dir, w, s, args.device,
                                                          args.threads)
                           for w, s in CELLS}
            row = {"variant": name, "minutes": budget.minutes, "max_steps": budget.steps,
                   "seed": seed, "cpu": hardware["cpu"], "device": device_name,
                   "concurrent_runs": concurrent_runs(run_dir), "purpose": purpose,
                   "overrides": overrides, "steps": summary["step"],
                   "images_per_second": summary["step"] * summary["images_per_step"]
                   / summary["elapsed_seconds"],
                   "best_step": summary["best_step"],
                   "minutes_to_97": summary["minutes_to_97"],
                   "best_val_accuracy": summary["best_val_accuracy"],
                   "train_command": " ".join(["gaussmem", *command[3:]]), **evaluations}
            print(f"{budget.label()} {name} seed {seed}: " + ", ".join(
                f"{w}w{s}s {row[f'val_{w}w{s}s']['mean']:.2f}" for w, s in CELLS),
                flush=True)
            with locked_directory(path.parent):
                rows = merge_by_identity(read_rows(path), row, row_key)
                report = {**provenance(hardware), "preset": "cpu-quick",
                          "measure": "validation split accuracy (%), 1,000 episodes, seed "
                                     "0, 15 queries per class, best checkpoint by the "
                                     "validation task in its overrides",
                          "results": sorted(rows, key=row_key)}
                write_json(path, report)
                write_text_atomic(path.with_suffix(".md"), render(report))

    train_all([(run_dir, job[-1]) for run_dir, job in jobs.items()], args.parallel, record,
              args.other_trainings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
