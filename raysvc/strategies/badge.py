"""BADGE (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings.

With a multi-head model (``pool.head_probs``, ActiveKD's CE and KD heads on shared
features) the gradient embedding concatenates every head's, so one (p - onehot, h)
factor pair per head enters the factorised distance.
"""

import numpy as np

from raysvc.strategies._badge import LazyGradientFactor, badge_select, gradient_factor
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register

__all__ = ["Badge", "badge_select", "gradient_factor"]


@register
class Badge(Strategy):
    """Gradient embeddings use ``pool.embeddings`` when given (students), else ``pool.features``,
    and one head per array of ``pool.head_probs`` when given, else ``pool.probs``."""

    name = "badge"
    requires = frozenset({"probs", "features"})
    optional = frozenset({"embeddings", "head_probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        h = pool.embeddings if pool.embeddings is not None else pool.features
        pairs = [(LazyGradientFactor(p), h) for p in (pool.head_probs or (pool.probs,))]
        return Selection(query=badge_select(pairs, pool.labeled, budget, rng))
