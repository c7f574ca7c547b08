"""Uniform random sampling from the unlabeled pool."""

import numpy as np

from raysvc.strategies.base import Pool, Selection, Strategy, uniform_picks
from raysvc.strategies.registry import STRATEGIES


@STRATEGIES.register
class Random(Strategy):
    name = "random"

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(query=uniform_picks(pool, budget, rng))
