"""The training loop, the same for every method: one explicit loop.

Each method registers a `MethodTraining` (gaussmem.methods.training) under its name:
its network, optimizer, batch sampler, training memory and one optimizer step (the
MA-VAE's episodic step is in gaussmem.methods.mavae_training, the baselines' next to
their classifiers). This loop owns what they share: the learning-rate schedule, the
step and wall-clock budgets, JSONL metrics, validation on the validation split (never
the test split) through the `FewShotClassifier` interface, `best` and `last` checkpoints
(atomic), and `resume`, which continues a run exactly where its last checkpoint left it.
SIGINT and SIGTERM stop a run between steps: the step under way finishes, `last` is
saved after it, and `TrainingInterrupted` says so; resuming from there is the same as
never having stopped.

Under torchrun (gaussmem.distributed) every rank runs this loop over its share of the
step; rank 0 alone writes the run directory (config, metrics, TensorBoard, checkpoints,
whatever `on_finish` adds) and validates while the others wait at a barrier. Before
each step the ranks agree on rank 0's clock and on any rank's stop signal, so they take
the same steps at the same learning rates and stop together.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import gaussmem.methods  # noqa: F401  (registers every built-in method and its training)
from gaussmem.checkpoint import load_checkpoint, save_checkpoint
from gaussmem.config import TrainConfig, from_dict, to_dict
from gaussmem.data.datasets import FewShotDataset
from gaussmem.data.training_sampler import StreamSampler, TrainingClassSampler, images_to_tensor
from gaussmem.distributed import Distributed, current, rank_seed
from gaussmem.errors import TrainingError
from gaussmem.evaluate import EvaluationResult, evaluate_support_query
from gaussmem.methods.registry import training_class
from gaussmem.methods.training import MethodTraining
from gaussmem.metrics_log import MetricsLog
from gaussmem.plumbing.atomic import write_text_atomic
from gaussmem.plumbing.cuda_graphs import set_learning_rate
from gaussmem.plumbing.seeding import global_rng_state, seed_everything, set_global_rng_state
from gaussmem.progress import (
    format_left,
    time_left_seconds,
    train_postfix,
    training_bar,
    validation_line,
)
from gaussmem.run_dir import check_fresh_run_dir, clear_run, remove_orphans, write_failed

LAST_CHECKPOINT = "checkpoints/last.ckpt"
BEST_CHECKPOINT = "checkpoints/best.ckpt"


@dataclass
class TrainState:
    """What the loop mutates; all of it goes into checkpoints."""

    step: int = 0
    elapsed_seconds: float = 0.0
    best_val_accuracy: float = -1.0
    best_step: int = -1
    minutes_to_97: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trainer:
    """The objects of a run, built by `build_trainer`."""

    config: TrainConfig
    run_dir: Path
    method: MethodTraining
    val_set: FewShotDataset | None
    state: TrainState = field(default_factory=TrainState)

    # The method's parts under the names benchmarks and older code use.
    @property
    def model(self) -> torch.nn.Module:
        return self.method.model

    @property
    def vae(self) -> torch.nn.Module:
        return self.method.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.method.optimizer

    @property
    def memory(self) -> torch.nn.Module | None:
        return self.method.memory

    @property
    def sampler(self) -> Any:
        return self.method.sampler


def learning_rate(config: TrainConfig, step: int, elapsed_seconds: float) -> float:
    """The schedule's learning rate at `step` (see `OptimConfig.schedule`), times the
    linear warm-up factor `min(1, (step + 1) / warmup_steps)`.

    "cosine" decays over the budget's progress (the larger of step and time fractions).
    """
    optim = config.optim
    warmup = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
    return warmup * _scheduled_rate(config, step, elapsed_seconds)


def _scheduled_rate(config: TrainConfig, step: int, elapsed_seconds: float) -> float:
    optim, budget = config.optim, config.budget
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "step":
        return optim.lr * optim.decay_factor ** (step // max(1, optim.decay_every))
    progress = step / max(1, budget.max_steps)
    if budget.max_minutes:
        progress = max(progress, elapsed_seconds / (60.0 * budget.max_minutes))
    progress = min(1.0, progress)
    floor = optim.final_lr_fraction
    return optim.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(trainer: Trainer, measure_triplet_grad: bool = False) -> dict[str, torch.Tensor]:
    """One optimizer step of the run's method at the scheduled learning rate.

    `measure_triplet_grad`: also compute the method's costlier diagnostics (the MA-VAE's
    triplet gradient norm); the loop asks for them on logging steps.
    """
    lr = learning_rate(trainer.config, trainer.state.step, trainer.state.elapsed_seconds)
    set_learning_rate(trainer.method.optimizer, lr)
    terms = trainer.method.train_step(measure=measure_triplet_grad)
    trainer.state.step += 1
    return terms


def build_trainer(config: TrainConfig, run_dir: Path, train_set: FewShotDataset,
                  val_set: FewShotDataset | None) -> Trainer:
    """Seeded model, optimizer, memory and sampler of `config.method`, for a fresh run."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    recipe = training_class(config.method)
    ranks = current()
    if ranks.world_size > 1 and not recipe.distributed:
        raise TrainingError(f"method {config.method!r} trains in one process; launch it "
                            "without torchrun (multi-process training is the MA-VAE's)")
    seed_everything(config.seed)
    method = recipe(config, train_set)
    if ranks.rank:
        # Rank 0's weights reach every rank through DDP; the noise must differ.
        seed_everything(rank_seed(config.seed, ranks.rank))
    return Trainer(config, Path(run_dir), method, val_set)


def checkpoint_dict(trainer: Trainer) -> dict[str, Any]:
    """The plain-dict checkpoint of the trainer's current state."""
    state = trainer.state
    return {
        "config": to_dict(trainer.config), "method": trainer.config.method,
        **trainer.method.state_dict(), "step": state.step,
        "elapsed_seconds": state.elapsed_seconds, "rng": global_rng_state(),
        "best": {"val_accuracy": state.best_val_accuracy, "step": state.best_step,
                 "minutes_to_97": state.minutes_to_97},
        "extra": {"history": state.history},
    }


def restore_trainer(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Load a checkpoint's model, optimizer, memory, sampler, RNG and loop state."""
    trainer.method.load_state_dict(checkpoint)
    ranks = current()
    if ranks.is_main:
        set_global_rng_state(checkpoint["rng"])
    else:
        # The checkpoint holds rank 0's streams only.
        seed_everything(rank_seed(trainer.config.seed, ranks.rank, int(checkpoint["step"])))
    best = checkpoint["best"]
    trainer.state = TrainState(step=int(checkpoint["step"]),
                               elapsed_seconds=float(checkpoint["elapsed_seconds"]),
                               best_val_accuracy=float(best["val_accuracy"]),
                               best_step=int(best["step"]), minutes_to_97=best["minutes_to_97"],
                               history=list(checkpoint["extra"]["history"]))


def validate(trainer: Trainer) -> dict[str, float]:
    """Support-query accuracy on the validation split with the config's fixed episodes:
    `val_accuracy` of the selection task, `time_to_97_accuracy` of the timed task."""
    val = trainer.config.validation
    classifier = trainer.method.classifier()

    def run(n_way: int, n_shot: int, episodes: int) -> EvaluationResult:
        return evaluate_support_query(classifier, trainer.val_set, n_way=n_way,
                                      n_shot=n_shot, n_query=val.n_query,
                                      episodes=episodes, seed=val.seed)

    selection = run(val.n_way, val.n_shot, val.episodes)
    values = {"val_accuracy": selection.accuracy.mean, "val_ci95": selection.accuracy.ci95,
              "val_seconds": selection.seconds}
    if val.times_selection_task:
        values["time_to_97_accuracy"] = values["val_accuracy"]
        return values
    timed = run(val.time_to_97_n_way, val.time_to_97_n_shot, val.time_to_97_episodes)
    values.update(time_to_97_accuracy=timed.accuracy.mean,
                  time_to_97_ci95=timed.accuracy.ci95,
                  val_seconds=selection.seconds + timed.seconds)
    return values


def _validate_and_checkpoint(trainer: Trainer, log: MetricsLog | None, do_validate: bool,
                             say: Callable[[str], None]) -> None:
    """Validate (optionally), update best, write last (and best) checkpoints: on rank 0,
    while any other rank waits for it, after every rank's BatchNorm statistics are
    averaged (gaussmem.methods.mavae_training). `say` gets the validation's one
    readable line."""
    ranks = current()
    ranks.average_buffers_(trainer.method.model)
    if ranks.is_main:
        assert log is not None
        _validate_and_checkpoint_here(trainer, log, do_validate, say)
    ranks.barrier()


def _validate_and_checkpoint_here(trainer: Trainer, log: MetricsLog, do_validate: bool,
                                  say: Callable[[str], None]) -> None:
    state = trainer.state
    if do_validate and trainer.val_set is not None:
        values = validate(trainer)
        values["minutes"] = state.elapsed_seconds / 60.0
        log.log("val", state.step, values)
        state.history.append({"step": state.step, **values})
        if values["time_to_97_accuracy"] >= 97.0 and state.minutes_to_97 is None:
            state.minutes_to_97 = values["minutes"]
        if values["val_accuracy"] > state.best_val_accuracy:
            state.best_val_accuracy, state.best_step = values["val_accuracy"], state.step
            _save(trainer, BEST_CHECKPOINT)
        say(validation_line(trainer.config.validation, trainer.config.budget, state.step,
                            values, state.best_val_accuracy, state.best_step))
    _save(trainer, LAST_CHECKPOINT)


def _save(trainer: Trainer, name: str) -> None:
    """Write checkpoint `name` of the run; a failed write (disk full) is a one-line
    error, and the previous file stays whole (the write is atomic)."""
    path = trainer.run_dir / name
    try:
        save_checkpoint(path, checkpoint_dict(trainer))
    except OSError as error:
        raise write_failed(path, error, trainer.run_dir / LAST_CHECKPOINT) from error


def _go_on(trainer: Trainer, ranks: Distributed, stop: _StopRequest,
           stop_at_step: int | None) -> bool:
    """Whether every rank takes another step: the ranks first agree on rank 0's clock
    and on a stop signal any of them received (see the module docstring)."""
    state = trainer.state
    stop.signal_number, state.elapsed_seconds = ranks.agree(stop.signal_number,
                                                            state.elapsed_seconds)
    return (_budget_left(trainer) and (stop_at_step is None or state.step < stop_at_step)
            and stop.signal_number is None)


def _budget_left(trainer: Trainer) -> bool:
    budget, state = trainer.config.budget, trainer.state
    if state.step >= budget.max_steps:
        return False
    return not (budget.max_minutes and state.elapsed_seconds >= 60.0 * budget.max_minutes)


class _RunningMeans:
    """Sums loss terms as tensors between log points: one host sync per log, not per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {key: float(total) / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


class TrainingInterrupted(Exception):  # noqa: N818 (a request, not a fault)
    """A run stopped by SIGINT or SIGTERM after saving `last` at a step boundary."""

    def __init__(self, signal_number: int, step: int, checkpoint: Path) -> None:
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} after step {step}; {checkpoint} holds it, "
                         "continue with --resume")

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signal_number


class _StopRequest:
    """The signal handler of `_stop_on_signals`: notes the first signal; a second one
    means "now", and interrupts the step under way (the last checkpoint on disk stays
    the previous consistent one)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __call__(self, signal_number: int, frame: object) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = signal_number


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    """SIGINT and SIGTERM set the yielded request instead of ending the process; the
    previous handlers come back on exit. Outside the main thread (where Python cannot
    handle signals) nothing is installed."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {number: signal.signal(number, request)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_loop(trainer: Trainer, log: MetricsLog | None, *, progress: bool = True,
             validation_lines: bool = True, stop_at_step: int | None = None) -> None:
    """Train until the budget (or `stop_at_step`, a test hook that simulates a kill),
    showing a progress bar (`progress`) and a line per validation (`validation_lines`).

    `log`: the run's metrics on rank 0, None on the other ranks (which log nothing).
    Raises `TrainingInterrupted` after SIGINT or SIGTERM (see the module docstring).
    """
    config, state = trainer.config, trainer.state
    ranks = current()
    progress = progress and ranks.is_main
    # Images/s counts every rank's images: the global batch's throughput.
    images_per_step = trainer.method.images_per_step * ranks.world_size
    bar = training_bar(config.budget, state.step, enabled=progress)
    # tqdm.write prints above the bar (or plainly, without one).
    say = bar.write if validation_lines and ranks.is_main else (lambda line: None)
    # The pace of this session (a resumed run's earlier steps ran elsewhere, maybe).
    first_step, first_seconds, postfix = state.step, state.elapsed_seconds, {}
    running, window_start, window_images = _RunningMeans(), time.perf_counter(), 0
    trainer.method.model.train()
    with _stop_on_signals() as stop, contextlib.closing(bar):
        while _go_on(trainer, ranks, stop, stop_at_step):
            step_start = time.perf_counter()
            log_now = (state.step + 1) % config.log_every == 0
            running.add(train_step(trainer, measure_triplet_grad=log_now))
            state.elapsed_seconds += time.perf_counter() - step_start
            window_images += images_per_step
            steps_done = state.step - first_step
            postfix["left"] = format_left(time_left_seconds(
                config.budget, state.step, state.elapsed_seconds,
                (state.elapsed_seconds - first_seconds) / steps_done if steps_done else None))
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if log_now:
                # The loss terms of the global batch: the mean of the ranks' shares.
                values = ranks.average(running.pop())
            if log_now and log is not None:
                values["images_per_second"] = window_images / (time.perf_counter()
                                                               - window_start)
                values["lr"] = float(trainer.optimizer.param_groups[0]["lr"])
                values["minutes"] = state.elapsed_seconds / 60.0
                log.log("train", state.step, values)
                postfix = {**train_postfix(values, trainer.method.postfix_terms),
                           "left": postfix["left"]}
                window_start, window_images = time.perf_counter(), 0
            if state.step % config.validation.every_steps == 0:
                _validate_and_checkpoint(trainer, log, do_validate=True, say=say)
            elif state.step % config.checkpoint_every == 0:
                _validate_and_checkpoint(trainer, log, do_validate=False, say=say)
        if stop.signal_number is not None:
            # After the step's own checkpoint (if it had one) this writes the same state.
            ranks.average_buffers_(trainer.method.model)
            if ranks.is_main:
                _save(trainer, LAST_CHECKPOINT)
            ranks.barrier()
            raise TrainingInterrupted(stop.signal_number, state.step,
                                      trainer.run_dir / LAST_CHECKPOINT)
    final_validation = (stop_at_step is None
                        and state.step % config.validation.every_steps != 0)
    _validate_and_checkpoint(trainer, log, do_validate=final_validation, say=say)


@dataclass
class TrainResult:
    """Where a run ended and what it reached."""

    run_dir: Path
    step: int
    elapsed_seconds: float
    best_val_accuracy: float
    best_step: int
    minutes_to_97: float | None
    method: str = "mavae"
    #: Training images one step encodes, over all ranks.
    images_per_step: int = 0
    #: Where the training step ran ("cpu", "cuda:0"; config.device may say "auto").
    device: str = "cpu"
    #: Processes that trained together (torchrun's WORLD_SIZE; 1 for a plain run).
    world_size: int = 1
    #: The checkpoint to use: the best on validation, else (no validation) the last.
    checkpoint: Path | None = None
    #: The run's `figures/` directory, if one was written (`gaussmem train` writes it
    #: through `train`'s `on_finish`).
    figures: Path | None = None


def train(config: TrainConfig | None, run_dir: str | Path, train_set: FewShotDataset,
          val_set: FewShotDataset | None, *, resume: bool = False, progress: bool = True,
          validation_lines: bool = True, stop_at_step: int | None = None,
          overwrite: bool = False, on_finish: Callable[[Trainer], None] | None = None
          ) -> TrainResult:
    """Train (or resume) a run in `run_dir`; see the module docstring for the loop.

    Fresh runs refuse a `run_dir` that already holds a run (pass `resume=True`, or
    `overwrite=True` to delete that run's files first: gaussmem.run_dir). Orphaned
    temporaries of interrupted writes are removed. A write that fails (disk full) is a
    `RunDirectoryError`, and the run stays resumable from its last checkpoint.
    On resume the checkpoint's config is used; if `config` is given, its `budget`
    (to extend a finished run), `device`, `cuda_graph` and `num_threads` (to go on
    where another machine, or another share of this one, stopped; checkpoints load onto
    the CPU and hold no graph) replace the saved ones, nothing else: none of these
    changes what the run learns.

    `on_finish(trainer)` runs on rank 0 once the budget ends the run (not after
    `stop_at_step`), before `summary.json` is written: what it adds to the run directory
    (the figures of `gaussmem train`) is then named in the summary, and a write it fails
    is the run's one-line error. The loop itself writes no figures.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST_CHECKPOINT
    if resume:
        checkpoint = load_checkpoint(last)
        saved = from_dict(TrainConfig, checkpoint["config"])
        if config is not None:
            saved.budget, saved.device = config.budget, config.device
            saved.cuda_graph, saved.num_threads = config.cuda_graph, config.num_threads
        config = saved
    elif config is None:
        raise TrainingError("a fresh run needs a config")
    else:
        check_fresh_run_dir(run_dir, overwrite=overwrite)
    ranks = current()
    # Every rank has checked the directory (and read the checkpoint) before rank 0
    # changes anything in it.
    ranks.barrier()
    if ranks.is_main:
        if not resume:
            clear_run(run_dir)
        remove_orphans(run_dir)
    trainer = build_trainer(config, run_dir, train_set, val_set)
    if resume:
        restore_trainer(trainer, checkpoint)
    if not ranks.is_main:
        run_loop(trainer, None, progress=False, stop_at_step=stop_at_step)
        return _result(trainer, ranks)
    with _failed_writes_named(run_dir):
        write_text_atomic(run_dir / "config.json",
                          json.dumps(to_dict(config), indent=2) + "\n")
        log = MetricsLog(run_dir, tensorboard=config.tensorboard,
                         resumed_at=trainer.state.step if resume else None)
        try:
            run_loop(trainer, log, progress=progress, validation_lines=validation_lines,
                     stop_at_step=stop_at_step)
        finally:
            log.close()
        if stop_at_step is None and on_finish is not None:
            on_finish(trainer)
        result = _result(trainer, ranks)
        summary = {key: str(value) if isinstance(value, Path) else value
                   for key, value in result.__dict__.items()}
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def _result(trainer: Trainer, ranks: Distributed) -> TrainResult:
    """The run's `TrainResult` (on ranks other than 0, without validation scores)."""
    state = trainer.state
    run_dir = trainer.run_dir
    return TrainResult(run_dir, state.step, state.elapsed_seconds,
                       state.best_val_accuracy, state.best_step, state.minutes_to_97,
                       trainer.config.method,
                       trainer.method.images_per_step * ranks.world_size,
                       str(trainer.method.device), ranks.world_size,
                       run_dir / (BEST_CHECKPOINT if trainer.val_set is not None
                                  else LAST_CHECKPOINT),
                       run_dir / "figures" if (run_dir / "figures").is_dir() else None)


@contextlib.contextmanager
def _failed_writes_named(run_dir: Path) -> Iterator[None]:
    """Turn an `OSError` of a write into the run directory (config, metrics, figures,
    summary; checkpoints say it themselves) into the run's one-line error."""
    try:
        yield
    except OSError as error:
        path = Path(error.filename) if error.filename else run_dir
        raise write_failed(path, error, run_dir / LAST_CHECKPOINT) from error


__all__ = ["StreamSampler", "TrainConfig", "TrainResult", "Trainer", "TrainingClassSampler",
           "TrainingError", "TrainingInterrupted", "build_trainer", "images_to_tensor",
           "learning_rate", "train", "train_step"]
