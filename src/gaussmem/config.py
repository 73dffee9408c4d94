"""Typed training configuration: the schema, its method-independent checks, overrides.

A run is fully described by one `TrainConfig`: defaults live here in code, a preset
(gaussmem.presets) picks the paper's experiment, a TOML file and `--set
section.field=value` overrides adjust it, and the resolved result is written to
`config.json` in the run directory and inside every checkpoint. Every default that the
paper does not fix says where it comes from. What only some methods implement (bfloat16,
distortions, CUDA graphs, other memory terms) each method checks itself
(`MethodTraining.check_config`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaussmem.data.augmentation import AugmentConfig
from gaussmem.errors import ConfigError, DeviceError
from gaussmem.losses import (
    CONSISTENCY_TRAINS,
    CROSS_STYLES,
    MEMORY_TERMS,
    SIMILARITY_KINDS,
    LossWeights,
)
from gaussmem.models.vae import VAEConfig
from gaussmem.plumbing.device import check_device_name
from gaussmem.plumbing.precision import PRECISION_SETTINGS


@dataclass
class DataConfig:
    """Which classes train and which select the model (never the test split)."""

    dataset: str = "omniglot"
    scheme: str = "vinyals"
    train_subset: str = "train"
    # None ("none" on the command line): no validation. For a final fit on train + val
    # (Omniglot `trainval`: the 1,200 characters that the paper and Vinyals et al. train
    # on) with a recipe and budget already chosen on `val`; the run keeps its last
    # checkpoint only.
    val_subset: str | None = "val"
    data_dir: str | None = None
    cache_dir: str | None = None


@dataclass
class EpisodeConfig:
    """Training episodes (section 3.2): `batch_episodes` parallel `n_way` episodes share
    one memory, so each step trains a `batch_episodes * n_way`-way problem.

    A training episode draws its classes, clears the memory and runs `steps_per_episode`
    steps on them; each step draws `images_per_class` fresh drawings per class, queries
    the memory with them (triplet), takes one optimizer step, then writes them with the
    paper's update rule. Clearing per episode is Kaiser et al.'s episodic setting: one
    memory kept over all 4,800 training classes sees a class only every few hundred
    steps, its entry is stale by then and the triplet has no positive.
    """

    n_way: int = 5
    batch_episodes: int = 16
    steps_per_episode: int = 5
    # ProtoNet / Matching Nets: the first `n_shot` drawings of each class are its support,
    # the other `images_per_class - n_shot` its queries. Unused by the MA-VAE and Kaiser.
    n_shot: int = 1
    # Two drawings per class: x and x' for the paper's cross-reconstruction term.
    images_per_class: int = 2
    # MA-VAE: drawings of each class written into the cleared memory before an
    # episode's first step, so that no step queries an empty memory (0: the first step
    # of every episode has no positive, hence no triplet gradient).
    memory_support: int = 1
    # Slots of the training memory; None: enough that an episode never overwrites
    # (every drawing of the episode a new entry).
    memory_capacity: int | None = None

    @property
    def n_classes(self) -> int:
        return self.n_way * self.batch_episodes

    @property
    def resolved_memory_capacity(self) -> int:
        if self.memory_capacity is not None:
            return self.memory_capacity
        per_class = self.memory_support + self.images_per_class * self.steps_per_episode
        return self.n_classes * per_class


@dataclass
class SimilarityConfig:
    """How divergences become the triplet's similarities (eq. 1 by default)."""

    kind: str = "paper"  # "paper": exp(-SKL); "per_dim": exp(-SKL / d_c)
    temperature: float = 1.0


@dataclass
class OptimConfig:
    """Adam with cosine decay at Adam's customary rate; the presets' validated rate and
    warm-up are in gaussmem.presets (results/tuning/mavae_tuning.md)."""

    lr: float = 1e-3
    # Adam's (L2) weight decay; off in every preset: no consistent gain on validation
    # across seeds (results/tuning/mavae_tuning.md, `512classes-latent1-wd5e-4`).
    weight_decay: float = 0.0
    # Clip the global gradient norm: early on a positive can appear or vanish between
    # steps, which makes the triplet's gradient jump. The MA-VAE's loss is in nats per
    # image (sums over pixels), so its everyday gradient norm is in the thousands: the
    # clip must sit above that, or every step is clipped and the reconstruction's share
    # of the gradient decides the direction alone.
    grad_clip: float = 10_000.0
    # "cosine": lr * 0.5 * (1 + cos(pi * progress)), progress = max(step, time) fraction
    # of the budget, so a wall-clock-bounded run also ends at a low learning rate.
    # "step": lr * decay_factor ** (step // decay_every) (Snell et al.: halve every 2000
    # episodes). "constant": lr.
    schedule: str = "cosine"
    final_lr_fraction: float = 0.02
    decay_every: int = 2000
    decay_factor: float = 0.5
    # Adam's epsilon; Kaiser et al.'s code uses 1e-4, PyTorch's default is 1e-8.
    adam_eps: float = 1e-8
    # Linear warm-up from lr / warmup_steps to lr over the first steps, then the schedule;
    # 0: none. It guards a larger rate against an early collapse (results/tuning/mavae_tuning.md).
    warmup_steps: int = 0
    # Exponential moving average of the weights, updated after every step with this decay;
    # 0: none. Validation, best/last checkpoints and the figures then use the average,
    # with BatchNorm statistics recomputed for it (gaussmem.weight_average). No preset uses
    # it: it did not beat the trained weights on validation (results/tuning/mavae_tuning.md).
    ema_decay: float = 0.0


SCHEDULES = ("cosine", "step", "constant")


@dataclass
class ProtoNetConfig:
    """Prototypical Networks (Snell et al. 2017): Conv4 trunk, squared Euclidean distance."""

    # Conv4 (4 x [conv3x3-64, BN, ReLU, maxpool]) on 28x28: a 64-d embedding.
    hidden_channels: int = 64
    n_blocks: int = 4


@dataclass
class MatchingConfig:
    """Matching Networks (Vinyals et al. 2016): Conv4 trunk, cosine attention."""

    hidden_channels: int = 64
    n_blocks: int = 4
    # Multiplies the cosine similarities before the attention softmax (an inverse
    # temperature): with the paper's plain cosine the softmax over [-1, 1] is so flat that
    # training stalls (validation split: results/speed/matching_scale.json). Argmax at
    # test time is unaffected by the scale.
    cosine_scale: float = 30.0
    # Full context embeddings (bidirectional LSTM over the support set, attention LSTM
    # for the queries with `fce_steps` read steps). Off by default, as in most
    # re-implementations' Omniglot numbers.
    fce: bool = False
    fce_steps: int = 10


@dataclass
class KaiserConfig:
    """Kaiser et al. 2017, "Learning to Remember Rare Events": defaults from their code
    (tensorflow/models research/learning_to_remember_rare_events)."""

    # "kaiser": their LeNet-style encoder (conv3x3-64 x2, pool, conv3x3-128 x2, pool,
    # fc -> key_dim, no batch norm); "conv4": the Conv4 trunk + linear -> key_dim.
    encoder: str = "kaiser"
    key_dim: int = 128
    # Nearest keys searched for the positive/negative of the loss (their choose_k).
    choose_k: int = 256
    # Margin of the memory loss max(sim_neg - sim_pos + alpha, 0).
    alpha: float = 0.1
    # Uniform noise in [-age_noise, age_noise] added to ages when picking the oldest slot.
    age_noise: float = 8.0
    # Dropout keep probability on the embedding during training (their keep_prob=0.3).
    keep_prob: float = 0.3


@dataclass
class BudgetConfig:
    """Training stops at whichever comes first."""

    max_steps: int = 20000
    max_minutes: float | None = None


@dataclass
class ValidationConfig:
    """Periodic support-query evaluation on `data.val_subset`: one task picks the best
    checkpoint, another times "minutes to 97%" (the speed figure of issue #4)."""

    every_steps: int = 500
    # The task that picks `best.ckpt`: a harder task than 5-way 1-shot, which saturates
    # and picked mid-run checkpoints that scored lower than the last one on every harder
    # validation task (results/tuning/checkpoint_selection.json).
    n_way: int = 20
    n_shot: int = 1
    n_query: int = 5
    episodes: int = 1000
    seed: int = 1234
    # The task timed for "minutes to 97% validation 5-way 1-shot". Evaluated separately
    # only when it differs from the selection task.
    time_to_97_n_way: int = 5
    time_to_97_n_shot: int = 1
    time_to_97_episodes: int = 200

    @property
    def times_selection_task(self) -> bool:
        """Whether the selection task is also the timed one (evaluate once)."""
        return ((self.time_to_97_n_way, self.time_to_97_n_shot, self.time_to_97_episodes)
                == (self.n_way, self.n_shot, self.episodes))


@dataclass
class TrainConfig:
    """Everything a training run needs; `gaussmem train` resolves and saves one."""

    method: str = "mavae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    # The MA-VAE's network; the baselines read their own section below, and every method
    # takes its input side from `model.image_size` (28 on Omniglot, 84 on LFW-a).
    model: VAEConfig = field(default_factory=VAEConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    protonet: ProtoNetConfig = field(default_factory=ProtoNetConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    kaiser: KaiserConfig = field(default_factory=KaiserConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Evaluation shape the preset is meant for (recorded; `gaussmem evaluate` decides).
    eval_n_way: int = 5
    # channels_last: the conv trunk's faster layout on CPU (results/speed/speed-cpu.json).
    channels_last: bool = True
    # "bfloat16": the MA-VAE's networks run under bfloat16 autocast (gaussmem.plumbing.precision);
    # heads, memory and losses stay float32. Evaluation always embeds in float32.
    # "auto": bfloat16 where the training device has it natively, else float32; training
    # replaces it with the one chosen, so a run's config.json and checkpoints say which.
    precision: str = "float32"
    # "auto": the first CUDA GPU if torch sees one, else the CPU; or "cpu", "cuda",
    # "cuda:N" (gaussmem.plumbing.device). The MA-VAE trains on either; the baselines on the CPU
    # (with "auto" they take the CPU even where a GPU exists).
    device: str = "auto"
    # MA-VAE on a CUDA GPU: record the training step once as a CUDA graph and replay it
    # (gaussmem.plumbing.cuda_graphs): small steps, such as the paper's presets' 80-320 classes,
    # are bound by kernel launches there. Off by default: the MA-VAE with the triplet
    # term and no weight average only, and it drops the triplet gradient-norm diagnostic
    # (a second backward pass the recorded step does not make).
    cuda_graph: bool = False
    num_threads: int | None = None
    log_every: int = 50
    checkpoint_every: int = 500
    tensorboard: bool = False
    # MA-VAE: `gaussmem train` writes reconstruction/generation figures from the
    # validation split into run_dir/figures at the end of a run (gaussmem.figures); the
    # library's `train` writes none itself.
    run_figures: bool = True

    def __post_init__(self) -> None:
        _check_numbers(self)
        if self.similarity.kind not in SIMILARITY_KINDS:
            raise ConfigError(f"similarity.kind must be one of {SIMILARITY_KINDS}, "
                              f"got {self.similarity.kind!r}")
        if self.loss.memory_term not in MEMORY_TERMS:
            raise ConfigError(f"loss.memory_term must be one of {MEMORY_TERMS}, "
                              f"got {self.loss.memory_term!r}")
        if self.loss.content_consistency < 0:
            raise ConfigError("loss.content_consistency must be >= 0 (0: off), got "
                              f"{self.loss.content_consistency}")
        if self.loss.cross_style not in CROSS_STYLES:
            raise ConfigError(f"loss.cross_style must be one of {CROSS_STYLES}, "
                              f"got {self.loss.cross_style!r}")
        if self.loss.consistency_trains not in CONSISTENCY_TRAINS:
            raise ConfigError("loss.consistency_trains must be one of "
                              f"{CONSISTENCY_TRAINS}, got {self.loss.consistency_trains!r}")
        if "test" in (self.data.train_subset, self.data.val_subset):
            raise ConfigError("training and model selection never use the test split; got "
                              f"data.train_subset={self.data.train_subset!r}, "
                              f"data.val_subset={self.data.val_subset!r}")
        if self.precision not in PRECISION_SETTINGS:
            raise ConfigError(f"precision must be one of {PRECISION_SETTINGS}, "
                              f"got {self.precision!r}")
        try:
            check_device_name(self.device)
        except DeviceError as error:
            raise ConfigError(str(error)) from None
        if self.optim.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.optim.warmup_steps}")
        if not 0 <= self.optim.ema_decay < 1:
            raise ConfigError(f"optim.ema_decay must be in [0, 1) (0: no weight average), "
                              f"got {self.optim.ema_decay}")
        if self.optim.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, "
                              f"got {self.optim.schedule!r}")
        if not 1 <= self.episodes.n_shot < self.episodes.images_per_class:
            raise ConfigError("episodes.n_shot must leave at least one query per class: "
                              f"n_shot={self.episodes.n_shot}, "
                              f"images_per_class={self.episodes.images_per_class}")
        augment = self.augment
        for name in ("max_rotation_degrees", "max_scale", "max_shift"):
            if getattr(augment, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(augment, name)}")
        if augment.max_scale >= 1:
            raise ConfigError(f"augment.max_scale must be < 1 (a scale factor of at least "
                              f"1 - max_scale > 0), got {augment.max_scale}")
        if self.episodes.images_per_class < 2:
            raise ConfigError("episodes.images_per_class must be >= 2 (cross-reconstruction "
                              f"needs a second drawing), got {self.episodes.images_per_class}")


#: Seeds feed NumPy's legacy global RNG (gaussmem.plumbing.seeding), which takes 32 bits.
MAX_SEED = 2**32 - 1

#: Counts, sizes and periods, with the least value each can take. A step budget or a
#: period of 0 would train nothing (and name a checkpoint never written) or divide by 0.
_INTEGER_MINIMUMS = {
    "seed": 0, "validation.seed": 0, "budget.max_steps": 1, "log_every": 1,
    "checkpoint_every": 1, "validation.every_steps": 1, "validation.n_way": 2,
    "validation.n_shot": 1, "validation.n_query": 1, "validation.episodes": 1,
    "validation.time_to_97_n_way": 2, "validation.time_to_97_n_shot": 1,
    "validation.time_to_97_episodes": 1, "episodes.n_way": 1, "episodes.batch_episodes": 1,
    "episodes.steps_per_episode": 1, "episodes.memory_capacity": 1,
    "optim.decay_every": 1, "num_threads": 1, "eval_n_way": 2,
    "matching.fce_steps": 1, "kaiser.key_dim": 1, "kaiser.choose_k": 1,
}

#: Rates and scales that must be > 0 (0 or less learns nothing or divides by 0).
_POSITIVE_FLOATS = ("optim.lr", "optim.adam_eps", "optim.grad_clip", "optim.decay_factor",
                    "similarity.temperature", "budget.max_minutes", "matching.cosine_scale")


def _field(config: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def _float_fields(config: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    """`(dotted name, value)` of every float in the config tree."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            yield from _float_fields(value, f"{prefix}{item.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{item.name}", value


def _check_numbers(config: TrainConfig) -> None:
    """Every float finite, counts and periods at least their minimum, rates positive,
    seeds in range: a `ConfigError` naming the field and value before anything runs."""
    for name, value in _float_fields(config):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    for name, least in _INTEGER_MINIMUMS.items():
        value = _field(config, name)
        if value is not None and value < least:
            raise ConfigError(f"{name} must be >= {least}, got {value}")
    for name in ("seed", "validation.seed"):
        if _field(config, name) > MAX_SEED:
            raise ConfigError(f"{name} must be in 0..{MAX_SEED}, got {_field(config, name)}")
    for name in _POSITIVE_FLOATS:
        value = _field(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    if not 0 <= config.optim.final_lr_fraction <= 1:
        raise ConfigError("optim.final_lr_fraction must be in [0, 1], got "
                          f"{config.optim.final_lr_fraction}")
    if config.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {config.optim.weight_decay}")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as nested plain dicts (JSON/TOML-friendly)."""
    return dataclasses.asdict(config)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Coerce `value` (from TOML, JSON or a `--set` string) to the field's annotation."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(annotation, value, where)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in typing.get_args(annotation):
            return None
        raise ConfigError(f"{where}: None is not allowed")
    target = args[0] if args else annotation
    try:
        if target is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return target(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: cannot read {value!r} as {target.__name__}") from error


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from nested dicts; unknown keys are an error, not ignored."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as error:  # a section's own check of its values (`__post_init__`)
        raise ConfigError(f"{where}: {error}") from error


def merge(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`config` with the nested `values` laid over it."""
    merged = to_dict(config)

    def lay(target: dict[str, Any], source: dict[str, Any]) -> None:
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                lay(target[key], value)
            else:
                target[key] = value

    lay(merged, values)
    return from_dict(TrainConfig, merged)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "seed=1"]` -> `{"optim": {"lr": "3e-4"}, "seed": "1"}`."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        *parents, leaf = key.strip().split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value.strip()
    return nested


def merge_file(config: TrainConfig, config_file: str | Path) -> TrainConfig:
    """`config` with the TOML file `config_file` laid over it."""
    path = Path(config_file)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    return merge(config, values)
