"""PCB (Bang et al., CVPR 2024, "Active Prompt Learning in Vision Language Models").

BADGE proposes a candidate set larger than the budget; PCB then draws from it class by
class so the pseudo-labeled classes of the labeled set stay balanced.
"""

import dataclasses
import math
from typing import ClassVar

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import Options, option
from raysvc.strategies._badge import LazyGradientFactor, badge_select
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register


def balance_classes(
    candidates: np.ndarray,
    classes: np.ndarray,
    counts: np.ndarray,
    budget: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Take ``budget`` of ``candidates`` (in preference order, class ``classes[i]`` each).

    Repeatedly the class with the fewest images so far (``counts``, then one more per
    pick; ties at random) gives up its most preferred remaining candidate; classes
    without candidates are skipped.
    """
    if budget > len(candidates):
        raise ValueError(f"budget {budget} exceeds the {len(candidates)} candidates")
    counts = np.array(counts, dtype=np.int64)
    queues = [candidates[classes == c] for c in range(len(counts))]
    taken = np.zeros(len(counts), dtype=np.int64)
    open_ = np.array([len(q) > 0 for q in queues])
    picks = []
    while len(picks) < budget:
        fewest = np.flatnonzero(open_ & (counts == counts[open_].min()))
        c = int(rng.choice(fewest))
        picks.append(queues[c][taken[c]])
        taken[c] += 1
        counts[c] += 1
        open_[c] = taken[c] < len(queues[c])
    return np.array(picks, dtype=np.int64)


@register
class PCB(Strategy):
    """BADGE candidates (``candidate_factor`` x budget, at most the unlabeled pool), then
    class-balanced by pseudo-label (argmax probs); labeled images count with their known label.

    Pools of more than ``max_badge_pool`` unlabeled images: BADGE runs on a seeded
    uniform subsample of that many unlabeled images (see ``max_badge_pool``)."""

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        candidate_factor: float = option(10.0, "BADGE proposes this many times the budget as candidates")

        def check(self):
            if not self.candidate_factor >= 1:
                raise ConfigError(f"option candidate_factor={self.candidate_factor!r}: must be >= 1")

    name = "pcb"
    requires = frozenset({"probs", "features"})
    optional = frozenset({"embeddings"})

    # BADGE proposes its candidates from at most this many unlabeled images: above it, from
    # a seeded uniform subsample of that size (each of the candidate_factor x budget
    # k-means++ picks reads every image it chooses from; 10 000 picks over 1.28M images
    # would read the (N, C) probabilities 10 000 times). Below it, the whole unlabeled pool.
    max_badge_pool: ClassVar[int] = 20_000

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        h = pool.embeddings if pool.embeddings is not None else pool.features
        n_candidates = min(math.ceil(self.options.candidate_factor * budget), len(pool.unlabeled_indices))
        pairs = [(LazyGradientFactor(pool.probs), h)]
        excluded = pool.labeled
        unlabeled = pool.unlabeled_indices
        if len(unlabeled) > self.max_badge_pool:
            excluded = np.ones(len(pool.labeled), dtype=bool)
            excluded[rng.choice(unlabeled, size=self.max_badge_pool, replace=False)] = False
            n_candidates = min(n_candidates, self.max_badge_pool)
        candidates = badge_select(pairs, excluded, n_candidates, rng)
        known = pool.labels[pool.labeled & (pool.labels >= 0)]
        counts = np.bincount(known, minlength=pool.n_classes)
        classes = pool.probs[candidates].argmax(1)
        return Selection(query=balance_classes(candidates, classes, counts, budget, rng))
