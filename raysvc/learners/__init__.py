"""Learners by name: ``coop`` (prompt learning) and the ActiveKD student learners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raysvc.errors import ConfigError, UnknownNameError
from raysvc.learners.base import Experiment, Learner, LocalRunner, TrainRunner


def _coop(experiment: Experiment, params: dict[str, Any]) -> Learner:
    from raysvc.learners.coop import CoOpConfig, CoOpLearner

    return CoOpLearner(experiment, CoOpConfig(**params))


_FACTORIES: dict[str, Callable[[Experiment, dict[str, Any]], Learner]] = {"coop": _coop}


def register_learner(name: str, factory: Callable[[Experiment, dict[str, Any]], Learner]) -> None:
    _FACTORIES[name] = factory


def learner_names() -> list[str]:
    return sorted(_FACTORIES)


def validate_learner(name: str) -> None:
    if name not in _FACTORIES:
        raise UnknownNameError("learner", name, _FACTORIES)


def make_learner(name: str, experiment: Experiment, params: dict[str, Any]) -> Learner:
    validate_learner(name)
    try:
        return _FACTORIES[name](experiment, dict(params))
    except TypeError as exc:
        raise ConfigError(f"learner {name!r}: {exc}") from None


__all__ = ["Experiment", "Learner", "LocalRunner", "TrainRunner", "learner_names", "make_learner", "register_learner"]

# the ActiveKD learners register themselves on import
import raysvc.learners.kd  # noqa: E402,F401
