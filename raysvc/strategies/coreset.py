"""CoreSet (Sener & Savarese, ICLR 2018): greedy k-center on image embeddings."""

import numpy as np

from raysvc.strategies._kcenter import kcenter_greedy
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register


@register
class CoreSet(Strategy):
    """Pick images farthest from their nearest labeled or picked one.

    Distances are on ``pool.embeddings`` when the learner provides them (students),
    else on the VLM ``pool.features``; labeled images are the initial centres.
    """

    name = "coreset"
    requires = frozenset({"features"})
    optional = frozenset({"embeddings"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        points = pool.embeddings if pool.embeddings is not None else pool.features
        return Selection(query=kcenter_greedy(points, pool.labeled, budget, rng))
