"""PCoreSet (ActiveKD): greedy k-center in the probability simplex."""

import numpy as np

from raysvc.strategies._kcenter import kcenter_greedy
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import STRATEGIES


@STRATEGIES.register
class PCoreSet(Strategy):
    """Pick images whose probability vector is farthest (Euclidean) from its nearest
    labeled or already picked one, covering the simplex rather than feature space."""

    name = "pcoreset"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(query=kcenter_greedy(pool.probs, pool.labeled, budget, rng))
