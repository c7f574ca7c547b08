"""Learners by name (``coop``, and the ActiveKD students ``no-distill``, ``kd-zeroshot``,
``kd-fewshot``): each module of this package registers its learners with
``@LEARNERS.register`` (see :mod:`raysvc.registry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raysvc.learners.base import Learner, LocalRunner, TrainRunner
from raysvc.registry import LEARNERS

if TYPE_CHECKING:
    from raysvc.experiment import Experiment


def make_learner(name: str, experiment: Experiment, options: Mapping[str, Any] | None = None) -> Learner:
    """The learner ``name`` for ``experiment`` with validated ``options``, for use outside a run."""
    part = LEARNERS.part(name, options)
    return part.cls(experiment, part.options)


__all__ = ["LEARNERS", "Learner", "LocalRunner", "TrainRunner", "make_learner"]
