"""Uniform random sampling from the unlabeled pool."""

import numpy as np

from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register


@register
class Random(Strategy):
    name = "random"

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(query=rng.choice(pool.unlabeled_indices, size=budget, replace=False))
