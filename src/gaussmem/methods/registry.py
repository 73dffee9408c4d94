"""Method name -> classifier class, so train and evaluate never repeat an if/elif chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gaussmem.config import TrainConfig
from gaussmem.errors import UnknownMethodError
from gaussmem.methods.base import FewShotClassifier

_METHODS: dict[str, type[FewShotClassifier]] = {}


def register_method(name: str) -> Callable[[type[FewShotClassifier]], type[FewShotClassifier]]:
    """Class decorator: make `cls` available as `name` (timm's `@register_model`)."""

    def decorate(cls: type[FewShotClassifier]) -> type[FewShotClassifier]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered to {_METHODS[name]}")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return decorate


def method_class(name: str) -> type[FewShotClassifier]:
    """The class registered as `name`; `UnknownMethodError` lists the known names."""
    if name not in _METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; known: {available_methods()}")
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)


def classifier_from_checkpoint(checkpoint: dict[str, Any]) -> FewShotClassifier:
    """Rebuild whichever method the checkpoint's config names."""
    return method_class(checkpoint["config"]["method"]).from_checkpoint(checkpoint)


# --- training recipes -------------------------------------------------------------------
# How a method trains (model, optimizer, sampler, one step) is registered under the same
# name as its classifier, so `gaussmem.train` runs any method without naming one.
_TRAININGS: dict[str, type] = {}


def register_training(name: str) -> Callable[[type], type]:
    """Class decorator: `cls` (a `MethodTraining`) trains the method called `name`."""

    def decorate(cls: type) -> type:
        if name in _TRAININGS and _TRAININGS[name] is not cls:
            raise ValueError(f"training for {name!r} is already registered to "
                             f"{_TRAININGS[name]}")
        _TRAININGS[name] = cls
        return cls

    return decorate


def training_class(name: str) -> type:
    """The `MethodTraining` subclass registered as `name`."""
    if name not in _TRAININGS:
        raise UnknownMethodError(f"no training registered for method {name!r}; known: "
                                 f"{sorted(_TRAININGS)}")
    return _TRAININGS[name]


def check_method_settings(config: TrainConfig) -> None:
    """Refuse, before anything runs, a method name no module registered or a setting
    that `config.method` does not implement (`MethodTraining.check_config`)."""
    method_class(config.method)
    training_class(config.method).check_config(config)
