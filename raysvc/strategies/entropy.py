"""Maximum predictive entropy."""

import numpy as np

from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


@register
class Entropy(Strategy):
    name = "entropy"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        candidates = pool.unlabeled_indices
        scores = entropy(pool.probs[candidates])
        # stable sort on a random permutation breaks ties at random, not by index
        order = rng.permutation(len(candidates))
        top = order[np.argsort(-scores[order], kind="stable")[:budget]]
        return Selection(query=candidates[top])
