"""The strategy registry: every module of this package registers its strategy with ``@register``."""

from __future__ import annotations

from typing import Any

from raysvc.registry import Registry
from raysvc.strategies.base import Strategy

STRATEGIES: Registry[Strategy] = Registry("strategy", "raysvc.strategies")


def register(cls: type[Strategy]) -> type[Strategy]:
    return STRATEGIES.register(cls.name)(cls)


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.resolve(name).cls


def make_strategy(name: str, **params: Any) -> Strategy:
    """The strategy ``name`` with validated ``params``; unknown names and bad options raise ConfigError."""
    return strategy_class(name)(STRATEGIES.options(name, params))
