"""Episodic training of the memory-augmented VAE: one explicit loop.

Each training episode draws `n_classes = batch_episodes * n_way` classes (section 3.2:
the parallel episodes of a batch share one memory, so the model is trained to tell all
of them apart), clears the memory and runs `steps_per_episode` steps. A step:

1. draws `images_per_class` fresh drawings of every class: `(P * C, 1, 28, 28)`;
2. encodes them, samples z_c and z_s, decodes x from (z_c, z_s) and from (z_c of the
   class's other drawing, z_s) (the paper's two generative terms);
3. looks up, against the memory as it stands (constants), each query's nearest entry
   with its label (positive) and with another label (negative) -> triplet term;
4. takes one Adam step on the total loss (gradient clipped);
5. writes the step's content posteriors into the memory with the paper's rule
   (`GaussianMemory.update_`: merge into the nearest entry if its label is right, else
   create an entry).

The loop also validates on the validation split (never the test split), keeps `best`
and `last` checkpoints (atomic), logs JSONL metrics, and stops at a step or wall-clock
budget; `resume` continues a run exactly where its last checkpoint left it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gaussmem.atomic import write_text_atomic
from gaussmem.checkpoint import load_checkpoint, save_checkpoint
from gaussmem.config import TrainConfig, from_dict, to_dict
from gaussmem.data.class_images import ClassImageSet
from gaussmem.errors import GaussmemError
from gaussmem.evaluate import evaluate_support_query
from gaussmem.losses import scaled_similarity, total_loss
from gaussmem.memory import GaussianMemory
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.metrics_log import MetricsLog
from gaussmem.models.vae import GaussianVAE
from gaussmem.seeding import global_rng_state, seed_everything, set_global_rng_state

LAST_CHECKPOINT = "checkpoints/last.ckpt"
BEST_CHECKPOINT = "checkpoints/best.ckpt"


class TrainingError(GaussmemError):
    """A run directory or resume request that cannot be used."""


class TrainingClassSampler:
    """Draws training episodes' classes and each step's drawings with its own RNG.

    `next_batch()` returns uint8 `(images_per_class, n_classes, H, W)`: drawing-major, so
    drawing p of class c sits at flat index `p * n_classes + c` and `roll(n_classes)`
    pairs every image with another drawing of its class. A new episode (new classes)
    starts every `steps_per_episode` batches; `new_episode` says when.
    """

    def __init__(self, dataset: ClassImageSet, n_classes: int, images_per_class: int,
                 steps_per_episode: int, seed: int) -> None:
        if n_classes > dataset.n_classes:
            raise TrainingError(f"{n_classes} classes per step but {dataset.name} has "
                                f"{dataset.n_classes}")
        if images_per_class > dataset.n_samples_per_class:
            raise TrainingError(f"{images_per_class} drawings per class but {dataset.name} "
                                f"has {dataset.n_samples_per_class}")
        self.dataset = dataset
        self.n_classes = n_classes
        self.images_per_class = images_per_class
        self.steps_per_episode = steps_per_episode
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._classes = np.zeros(n_classes, dtype=np.int64)
        self._step_in_episode = 0

    @property
    def new_episode(self) -> bool:
        """True when the next batch starts a new episode (the memory must be cleared)."""
        return self._step_in_episode % self.steps_per_episode == 0

    def next_batch(self) -> np.ndarray:
        if self.new_episode:
            self._classes = self._rng.choice(self.dataset.n_classes, self.n_classes,
                                             replace=False)
            self._step_in_episode = 0
        keys = self._rng.random((self.n_classes, self.dataset.n_samples_per_class))
        drawings = np.argsort(keys, axis=1)[:, : self.images_per_class]
        self._step_in_episode += 1
        return self.dataset.images[self._classes[:, None], drawings].transpose(1, 0, 2, 3)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "classes": self._classes.tolist(),
                "step_in_episode": self._step_in_episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._classes = np.asarray(state["classes"], dtype=np.int64)
        self._step_in_episode = int(state["step_in_episode"])


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
    vae: GaussianVAE
    optimizer: torch.optim.Optimizer
    memory: GaussianMemory
    sampler: TrainingClassSampler
    val_set: ClassImageSet | None
    state: TrainState = field(default_factory=TrainState)


def images_to_tensor(images: np.ndarray, channels_last: bool) -> torch.Tensor:
    """uint8 `(P, C, H, W)` strokes-bright -> float32 `(P * C, 1, H, W)` in [0, 1]."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).flatten(0, 1).unsqueeze(1)
    tensor = pixels.to(torch.float32).div_(255.0)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def forward_losses(vae: GaussianVAE, memory: GaussianMemory, images: torch.Tensor,
                   labels: torch.Tensor, n_classes: int, config: TrainConfig
                   ) -> tuple[dict[str, torch.Tensor], Any]:
    """Loss terms and diagnostics of one step; returns `(terms, content posterior)`.

    `images (P * C, 1, H, W)` drawing-major, `labels (P * C,)` class ids 0..C-1.
    Diagnostic terms (no gradient): `accuracy` (nearest entry has the query's label),
    `positive_rate` (an entry with the query's label exists), `sim_positive`,
    `sim_negative` (means over queries with one).
    """
    posteriors = vae.encode(images)
    content, style = posteriors
    z_content = vae.reparameterize(content)
    z_style = vae.reparameterize(style)
    # Rolling by n_classes pairs drawing p of each class with drawing p-1 of the same
    # class: x is decoded from z_c of x' (same class) and its own z_s.
    z_other_content = z_content.roll(n_classes, dims=0)
    logits = vae.decode(torch.cat([z_content, z_other_content]), torch.cat([z_style, z_style]))
    self_logits, cross_logits = logits.chunk(2)

    variance = content.var
    positive = memory.nearest_with_label(content.mean, variance, labels)
    negative = memory.nearest_with_other_label(content.mean, variance, labels)
    similarity = config.similarity
    kwargs = {"kind": similarity.kind, "dim": content.mean.shape[1],
              "temperature": similarity.temperature}
    # Divergence +inf (no entry) gives similarity exactly 0 and no gradient.
    sim_positive = scaled_similarity(positive.divergence, **kwargs)
    sim_negative = scaled_similarity(negative.divergence, **kwargs)
    terms = total_loss(sim_positive=sim_positive, sim_negative=sim_negative,
                       content=content, style=style, self_logits=self_logits,
                       cross_logits=cross_logits, images=images, weights=config.loss)
    with torch.no_grad():
        has_positive = positive.slots >= 0
        has_negative = negative.slots >= 0
        terms["accuracy"] = (has_positive & (positive.divergence < negative.divergence)
                             ).float().mean()
        terms["positive_rate"] = has_positive.float().mean()
        terms["sim_positive"] = _masked_mean(sim_positive, has_positive)
        terms["sim_negative"] = _masked_mean(sim_negative, has_negative)
        terms["divergence_positive"] = _masked_mean(positive.divergence, has_positive)
        terms["content_variance"] = variance.mean()
    return terms, content


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, 0).sum() / mask.sum().clamp_min(1)


def learning_rate(config: TrainConfig, step: int, elapsed_seconds: float) -> float:
    """Cosine decay over the budget's progress (the larger of step and time fractions)."""
    optim, budget = config.optim, config.budget
    if optim.schedule == "constant":
        return optim.lr
    progress = step / max(1, budget.max_steps)
    if budget.max_minutes:
        progress = max(progress, elapsed_seconds / (60.0 * budget.max_minutes))
    progress = min(1.0, progress)
    floor = optim.final_lr_fraction
    return optim.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(trainer: Trainer, measure_triplet_grad: bool = False) -> dict[str, torch.Tensor]:
    """One optimizer step and the memory write that follows it; returns the terms."""
    config, memory = trainer.config, trainer.memory
    if trainer.sampler.new_episode:
        memory.reset_()
    n_classes = trainer.sampler.n_classes
    images = images_to_tensor(trainer.sampler.next_batch(), config.channels_last)
    labels = torch.arange(n_classes).repeat(config.episodes.images_per_class)
    for group in trainer.optimizer.param_groups:
        group["lr"] = learning_rate(config, trainer.state.step, trainer.state.elapsed_seconds)

    terms, content = forward_losses(trainer.vae, memory, images, labels, n_classes, config)
    if measure_triplet_grad:
        # The risk the issue names: exp(-SKL) ~ 0 everywhere makes the triplet constant.
        # Its gradient with respect to the content posterior says whether it is.
        grads = torch.autograd.grad(terms["triplet"], [content.mean, content.log_var],
                                    retain_graph=True, allow_unused=True)
        norm = sum(float(g.square().sum()) for g in grads if g is not None)
        terms["triplet_grad_norm"] = torch.tensor(math.sqrt(norm))
    trainer.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(trainer.vae.parameters(),
                                                        config.optim.grad_clip)
    trainer.optimizer.step()
    memory.update_(content.mean.detach(), content.var.detach(), labels)
    trainer.state.step += 1
    return terms


def build_trainer(config: TrainConfig, run_dir: Path, train_set: ClassImageSet,
                  val_set: ClassImageSet | None) -> Trainer:
    """Seeded model, optimizer, memory and sampler for a fresh run."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    vae = GaussianVAE(config.model)
    if config.channels_last:
        vae = vae.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.optim.lr,
                                 weight_decay=config.optim.weight_decay)
    episodes = config.episodes
    memory = GaussianMemory(episodes.resolved_memory_capacity, config.model.content_dim,
                            seed=config.seed)
    sampler = TrainingClassSampler(train_set, episodes.n_classes, episodes.images_per_class,
                                   episodes.steps_per_episode, seed=config.seed)
    return Trainer(config, Path(run_dir), vae, optimizer, memory, sampler, val_set)


def checkpoint_dict(trainer: Trainer) -> dict[str, Any]:
    """The plain-dict checkpoint of the trainer's current state."""
    state = trainer.state
    return {
        "config": to_dict(trainer.config), "method": trainer.config.method,
        "model": trainer.vae.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "memory": trainer.memory.state_dict(), "step": state.step,
        "elapsed_seconds": state.elapsed_seconds, "rng": global_rng_state(),
        "sampler": trainer.sampler.state_dict(),
        "best": {"val_accuracy": state.best_val_accuracy, "step": state.best_step,
                 "minutes_to_97": state.minutes_to_97},
        "extra": {"history": state.history},
    }


def restore_trainer(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Load a checkpoint's model, optimizer, memory, sampler, RNG and loop state."""
    trainer.vae.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.memory.load_state_dict(checkpoint["memory"])
    trainer.sampler.load_state_dict(checkpoint["sampler"])
    set_global_rng_state(checkpoint["rng"])
    best = checkpoint["best"]
    trainer.state = TrainState(step=int(checkpoint["step"]),
                               elapsed_seconds=float(checkpoint["elapsed_seconds"]),
                               best_val_accuracy=float(best["val_accuracy"]),
                               best_step=int(best["step"]), minutes_to_97=best["minutes_to_97"],
                               history=list(checkpoint["extra"]["history"]))


def validate(trainer: Trainer) -> dict[str, float]:
    """Support-query accuracy on the validation split with the config's fixed episodes."""
    val = trainer.config.validation
    classifier = MemoryAugmentedVAE(trainer.vae, channels_last=trainer.config.channels_last)
    result = evaluate_support_query(classifier, trainer.val_set, n_way=val.n_way,
                                    n_shot=val.n_shot, n_query=val.n_query,
                                    episodes=val.episodes, seed=val.seed)
    return {"val_accuracy": result.accuracy.mean, "val_ci95": result.accuracy.ci95,
            "val_seconds": result.seconds}


def _validate_and_checkpoint(trainer: Trainer, log: MetricsLog, do_validate: bool) -> None:
    """Validate (optionally), update best, write last (and best) checkpoints."""
    state = trainer.state
    if do_validate and trainer.val_set is not None:
        values = validate(trainer)
        values["minutes"] = state.elapsed_seconds / 60.0
        log.log("val", state.step, values)
        state.history.append({"step": state.step, **values})
        if values["val_accuracy"] >= 97.0 and state.minutes_to_97 is None:
            state.minutes_to_97 = values["minutes"]
        if values["val_accuracy"] > state.best_val_accuracy:
            state.best_val_accuracy, state.best_step = values["val_accuracy"], state.step
            save_checkpoint(trainer.run_dir / BEST_CHECKPOINT, checkpoint_dict(trainer))
    save_checkpoint(trainer.run_dir / LAST_CHECKPOINT, checkpoint_dict(trainer))


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


def run_loop(trainer: Trainer, log: MetricsLog, *, progress: bool = True,
             stop_at_step: int | None = None) -> None:
    """Train until the budget (or `stop_at_step`, a test hook that simulates a kill)."""
    config, state = trainer.config, trainer.state
    images_per_step = trainer.sampler.n_classes * config.episodes.images_per_class
    bar = tqdm(total=config.budget.max_steps, initial=state.step, disable=not progress,
               unit="step", dynamic_ncols=True)
    running, window_start, window_images = _RunningMeans(), time.perf_counter(), 0
    trainer.vae.train()
    try:
        while _budget_left(trainer) and (stop_at_step is None or state.step < stop_at_step):
            step_start = time.perf_counter()
            log_now = (state.step + 1) % config.log_every == 0
            running.add(train_step(trainer, measure_triplet_grad=log_now))
            state.elapsed_seconds += time.perf_counter() - step_start
            window_images += images_per_step
            bar.update(1)
            if log_now:
                values = running.pop()
                values["images_per_second"] = window_images / (time.perf_counter()
                                                               - window_start)
                values["lr"] = trainer.optimizer.param_groups[0]["lr"]
                values["minutes"] = state.elapsed_seconds / 60.0
                log.log("train", state.step, values)
                bar.set_postfix(_postfix(values, config), refresh=False)
                window_start, window_images = time.perf_counter(), 0
            if state.step % config.validation.every_steps == 0:
                _validate_and_checkpoint(trainer, log, do_validate=True)
            elif state.step % config.checkpoint_every == 0:
                _validate_and_checkpoint(trainer, log, do_validate=False)
    except KeyboardInterrupt:
        save_checkpoint(trainer.run_dir / LAST_CHECKPOINT, checkpoint_dict(trainer))
        raise
    finally:
        bar.close()
    final_validation = (stop_at_step is None
                        and state.step % config.validation.every_steps != 0)
    _validate_and_checkpoint(trainer, log, do_validate=final_validation)


def _postfix(values: dict[str, float], config: TrainConfig) -> dict[str, str]:
    postfix = {"loss": f"{values['loss']:.3f}", "trip": f"{values['triplet']:.3f}",
               "gen": f"{values['generative_self']:.3f}", "acc": f"{values['accuracy']:.3f}",
               "img/s": f"{values['images_per_second']:.0f}"}
    if config.budget.max_minutes:
        left = max(0.0, config.budget.max_minutes - values["minutes"])
        postfix["left"] = f"{left:.1f}min"
    return postfix


@dataclass
class TrainResult:
    """Where a run ended and what it reached."""

    run_dir: Path
    step: int
    elapsed_seconds: float
    best_val_accuracy: float
    best_step: int
    minutes_to_97: float | None


def train(config: TrainConfig | None, run_dir: str | Path, train_set: ClassImageSet,
          val_set: ClassImageSet | None, *, resume: bool = False, progress: bool = True,
          stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) a run in `run_dir`; see the module docstring for the loop.

    Fresh runs refuse a `run_dir` that already holds a checkpoint (pass `resume=True`).
    On resume the checkpoint's config is used; if `config` is given, its `budget`
    replaces the saved one (to extend a finished run), nothing else.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST_CHECKPOINT
    if resume:
        checkpoint = load_checkpoint(last)
        saved = from_dict(TrainConfig, checkpoint["config"])
        if config is not None:
            saved.budget = config.budget
        config = saved
    elif config is None:
        raise TrainingError("a fresh run needs a config")
    elif last.exists():
        raise TrainingError(f"{run_dir} already holds a run ({last}); pass --resume to "
                            "continue it or choose another --run-dir")
    trainer = build_trainer(config, run_dir, train_set, val_set)
    if resume:
        restore_trainer(trainer, checkpoint)
    write_text_atomic(run_dir / "config.json", json.dumps(to_dict(config), indent=2) + "\n")
    log = MetricsLog(run_dir, tensorboard=config.tensorboard)
    try:
        run_loop(trainer, log, progress=progress, stop_at_step=stop_at_step)
    finally:
        log.close()
    state = trainer.state
    result = TrainResult(run_dir, state.step, state.elapsed_seconds, state.best_val_accuracy,
                         state.best_step, state.minutes_to_97)
    summary = {**{k: v for k, v in result.__dict__.items() if k != "run_dir"},
               "run_dir": str(run_dir)}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


__all__ = ["TrainConfig", "TrainResult", "Trainer", "build_trainer", "train", "train_step"]
