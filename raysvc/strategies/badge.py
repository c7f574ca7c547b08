"""BADGE (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings.

The pool carries one probability array, so this strategy is single-head. Dual-head
BADGE (ActiveKD, both heads' gradients concatenated) is for the learner that owns both
heads to call :func:`badge_select` with one pair per head::

    badge_select([(gradient_factor(p_ce), h), (gradient_factor(p_kd), h)], labeled, budget, rng)
"""

import numpy as np

from raysvc.strategies._badge import badge_select, gradient_factor
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register

__all__ = ["Badge", "badge_select", "gradient_factor"]


@register
class Badge(Strategy):
    """Gradient embeddings use ``pool.embeddings`` when given (students), else ``pool.features``."""

    name = "badge"
    requires = frozenset({"probs", "features"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        h = pool.embeddings if pool.embeddings is not None else pool.features
        pairs = [(gradient_factor(pool.probs), h)]
        return Selection(query=badge_select(pairs, pool.labeled, budget, rng))
