"""Query strategies: one per module, all behind :mod:`raysvc.strategies.registry`."""

from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "Pool", "Selection", "Strategy", "make_strategy"]
