"""Learners by name (``coop``, and the ActiveKD students ``no-distill``, ``kd-zeroshot``,
``kd-fewshot``): each module of this package registers its learners with ``@register``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysvc.learners.base import Experiment, Learner, LocalRunner, TrainRunner
from raysvc.registry import Registry

LEARNERS: Registry[Learner] = Registry("learner", "raysvc.learners")


def register(cls: type[Learner]) -> type[Learner]:
    return LEARNERS.register(cls.name)(cls)


def make_learner(name: str, experiment: Experiment, params: Mapping[str, Any] | None = None) -> Learner:
    """The learner ``name`` for ``experiment`` with validated ``params``."""
    return LEARNERS.resolve(name).cls(experiment, LEARNERS.options(name, params))


__all__ = ["LEARNERS", "Experiment", "Learner", "LocalRunner", "TrainRunner", "make_learner", "register"]
