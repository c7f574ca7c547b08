"""One registry of strategies, filled by each strategy module's ``@register``."""

from __future__ import annotations

import importlib
import pkgutil

from raysvc.errors import ConfigError, UnknownNameError
from raysvc.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"strategy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import raysvc.strategies as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in {"base", "registry"}:
            importlib.import_module(f"{package.__name__}.{info.name}")


def strategy_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError("strategy", name, _REGISTRY)
    return _REGISTRY[name]


def make_strategy(name: str, **params) -> Strategy:
    """Build a strategy by name; unknown names and bad parameters raise ConfigError."""
    cls = strategy_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"strategy {name!r}: {exc}") from None
