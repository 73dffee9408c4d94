"""Typed training configuration, the named presets of the paper's experiments, overrides.

A run is fully described by one `TrainConfig`: defaults live here in code, a preset picks
the paper's experiment, a TOML file and `--set section.field=value` overrides adjust it,
and the resolved result is written to `config.json` in the run directory and inside every
checkpoint. Every default that the paper does not fix says where it comes from.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaussmem.errors import GaussmemError
from gaussmem.losses import SIMILARITY_KINDS, LossWeights
from gaussmem.models.vae import VAEConfig


class ConfigError(GaussmemError):
    """A preset name, config file or override that cannot be applied."""


@dataclass
class DataConfig:
    """Which classes train and which select the model (never the test split)."""

    dataset: str = "omniglot"
    scheme: str = "vinyals"
    train_subset: str = "train"
    val_subset: str = "val"
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
    steps, its entry is stale by then and the triplet has no positive (CALIBRATION.md).
    """

    n_way: int = 5
    batch_episodes: int = 16
    steps_per_episode: int = 5
    # Two drawings per class: x and x' for the paper's cross-reconstruction term.
    images_per_class: int = 2
    # Slots of the training memory; None: enough that an episode never overwrites
    # (n_classes * images_per_class * steps_per_episode, every write a new entry).
    memory_capacity: int | None = None

    @property
    def n_classes(self) -> int:
        return self.n_way * self.batch_episodes

    @property
    def resolved_memory_capacity(self) -> int:
        if self.memory_capacity is not None:
            return self.memory_capacity
        return self.n_classes * self.images_per_class * self.steps_per_episode


@dataclass
class SimilarityConfig:
    """How divergences become the triplet's similarities (eq. 1 by default)."""

    kind: str = "paper"  # "paper": exp(-SKL); "per_dim": exp(-SKL / d_c)
    temperature: float = 1.0


@dataclass
class OptimConfig:
    """Adam with cosine decay: 1e-3 trained and 3e-3 diverged in calibration."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    # Clip the global gradient norm: early on a positive can appear or vanish between
    # steps, which makes the triplet's gradient jump.
    grad_clip: float = 5.0
    # "cosine": lr * 0.5 * (1 + cos(pi * progress)), progress = max(step, time) fraction
    # of the budget, so a wall-clock-bounded run also ends at a low learning rate.
    schedule: str = "cosine"
    final_lr_fraction: float = 0.02


@dataclass
class BudgetConfig:
    """Training stops at whichever comes first."""

    max_steps: int = 20000
    max_minutes: float | None = None


@dataclass
class ValidationConfig:
    """Periodic support-query evaluation on `data.val_subset` to pick the best checkpoint."""

    every_steps: int = 500
    n_way: int = 5
    n_shot: int = 1
    n_query: int = 5
    episodes: int = 200
    seed: int = 1234


@dataclass
class TrainConfig:
    """Everything a training run needs; `gaussmem train` resolves and saves one."""

    method: str = "mavae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: VAEConfig = field(default_factory=VAEConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # Evaluation shape the preset is meant for (recorded; `gaussmem evaluate` decides).
    eval_n_way: int = 5
    # channels_last was 1.5-2x faster for the conv trunk on CPU in calibration.
    channels_last: bool = True
    num_threads: int | None = None
    log_every: int = 50
    checkpoint_every: int = 500
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.similarity.kind not in SIMILARITY_KINDS:
            raise ConfigError(f"similarity.kind must be one of {SIMILARITY_KINDS}, "
                              f"got {self.similarity.kind!r}")
        if "test" in (self.data.train_subset, self.data.val_subset):
            raise ConfigError("training and model selection never use the test split; got "
                              f"data.train_subset={self.data.train_subset!r}, "
                              f"data.val_subset={self.data.val_subset!r}")
        if self.episodes.images_per_class < 2:
            raise ConfigError("episodes.images_per_class must be >= 2 (cross-reconstruction "
                              f"needs a second drawing), got {self.episodes.images_per_class}")


def _paper(n_way: int, batch_episodes: int, eval_n_way: int) -> TrainConfig:
    config = TrainConfig(episodes=EpisodeConfig(n_way=n_way, batch_episodes=batch_episodes),
                         eval_n_way=eval_n_way)
    config.budget.max_steps = 30000
    return config


def _cpu_quick() -> TrainConfig:
    # 128 classes per step trained better than 32 or 64 (CALIBRATION.md); 8-way x 16.
    config = TrainConfig(episodes=EpisodeConfig(n_way=8, batch_episodes=16))
    config.budget = BudgetConfig(max_steps=100_000, max_minutes=15.0)
    # Validation (200 episodes, ~10 s, not counted in the budget) every ~2-3 minutes on
    # the shared 2-core CPU, fine enough to time "minutes to 97% 5-way 1-shot".
    config.validation.every_steps = 150
    config.checkpoint_every = 150
    return config


def _smoke() -> TrainConfig:
    # Seconds on a CPU: for tests and for checking an installation end to end.
    config = TrainConfig(episodes=EpisodeConfig(n_way=4, batch_episodes=2,
                                                steps_per_episode=2))
    config.model.hidden_channels = 16
    config.model.content_dim = 8
    config.model.style_dim = 4
    config.model.decoder_hidden_channels = 16
    config.budget = BudgetConfig(max_steps=6)
    config.validation = ValidationConfig(every_steps=3, n_way=3, n_shot=1, n_query=2,
                                         episodes=4)
    config.log_every = 2
    config.checkpoint_every = 3
    return config


#: Preset name -> constructor. One per experiment of the paper, plus CPU/test sizes.
PRESETS: dict[str, Callable[[], TrainConfig]] = {
    # Table 1, n_train = n_test: 5-way episodes, batch 16 (80 classes share the memory).
    "omniglot-5way": lambda: _paper(5, 16, 5),
    # Table 1, 20-way, batch 16.
    "omniglot-20way": lambda: _paper(20, 16, 20),
    # Table 1, n_train < n_test: trained 5-way with batch 16, tested 20-way.
    "omniglot-5way-to-20way": lambda: _paper(5, 16, 20),
    # Table 2: 5-way tasks with batch 20 (tested 100-way) ...
    "omniglot-parallel": lambda: _paper(5, 20, 100),
    # ... and 20-way tasks with batch 20 (tested 400-way).
    "omniglot-parallel-20way": lambda: _paper(20, 20, 400),
    "cpu-quick": _cpu_quick,
    "smoke": _smoke,
}


def preset(name: str) -> TrainConfig:
    """The named preset's config; raises `ConfigError` listing the names on a typo."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


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
    return cls(**kwargs)


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


def resolve(preset_name: str | None = None, config_file: str | Path | None = None,
            overrides: Iterable[str] = ()) -> TrainConfig:
    """Preset, then TOML file, then `--set` overrides, in that order of precedence."""
    config = preset(preset_name) if preset_name else TrainConfig()
    if config_file is not None:
        path = Path(config_file)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from error
        config = merge(config, values)
    return merge(config, parse_overrides(overrides))
