"""The strategy registry: every module of this package registers its strategy with
``@STRATEGIES.register`` (see :mod:`raysvc.registry`)."""

from __future__ import annotations

from typing import Any

from raysvc.registry import STRATEGIES
from raysvc.strategies.base import Strategy


def make_strategy(name: str, **options: Any) -> Strategy:
    """The strategy ``name`` with validated ``options``, for use outside a run (a run builds
    its strategy from the plan's part); unknown names and bad options raise ConfigError."""
    part = STRATEGIES.part(name, options)
    return part.cls(part.options)
