"""BADGE (Ash et al., ICLR 2020) on last-layer gradient embeddings, as each setting's official code.

* Prompt learning (``pool.embeddings`` is None): k-means++ seeding on ``(onehot - p) (x) f``
  with f the VLM image features, as ml-postech/active-prompt-learning @105a662
  ``trainers/active_learning/badge.py:42-96`` (without its row-index bug, badge.py:53,
  which zeroes the last ``N mod 32`` embeddings).
* Students (``pool.embeddings`` set, ActiveKD): one gradient embedding from ``pool.probs``
  (the student's heads combined) and its penultimate features, L2-normalised, then a
  deterministic farthest-first on cosine distance, as erjui/PCoreSet @075a76a
  ``strategies.py:154-289`` (``strategy='badge'``).
"""

import numpy as np

from raysvc.strategies._badge import LazyGradientFactor, badge_select, cosine_farthest_first, gradient_factor
from raysvc.strategies.base import ColdStartOptions, Pool, Selection, Strategy, cold_start_picks
from raysvc.strategies.registry import STRATEGIES

__all__ = ["Badge", "badge_select", "cosine_farthest_first", "gradient_factor"]


@STRATEGIES.register
class Badge(Strategy):
    """BADGE: k-means++ on gradient embeddings, or ActiveKD's cosine farthest-first for students.

    Prompt learning: the gradients on ``pool.features``; students: on ``pool.embeddings``
    (see the module docstring).

    ``cold_start="random"``: uniform picks while nothing is labeled (APL ``alvlm.py:531-532``).
    """

    Options = ColdStartOptions
    name = "badge"
    requires = frozenset({"probs", "features"})
    optional = frozenset({"embeddings"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        cold = cold_start_picks(self.options, pool, budget, rng)
        if cold is not None:
            return Selection(query=cold)
        if pool.embeddings is not None:
            pairs = [(LazyGradientFactor(pool.probs), pool.embeddings)]
            return Selection(query=cosine_farthest_first(pairs, pool.labeled, budget))
        pairs = [(LazyGradientFactor(pool.probs), pool.features)]
        return Selection(query=badge_select(pairs, pool.labeled, budget, rng))
