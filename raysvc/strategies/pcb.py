"""PCB (Bang et al., CVPR 2024, "Active Prompt Learning in Vision Language Models").

BADGE proposes a candidate set larger than the budget; PCB then draws from it class by
class, always from the class with the fewest labeled images so far, so the labeled set
stays balanced. As kaist-dmlab/pcb @7f32a1b ``pcb.py`` (byte-identical in
ml-postech/active-prompt-learning @105a662 ``trainers/active_learning/pcb.py``) and the
loop that calls it (APL ``trainers/alvlm.py:505, 543-555``).
"""

import dataclasses
import math
from typing import ClassVar

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import option
from raysvc.strategies._badge import LazyGradientFactor, badge_select
from raysvc.strategies.base import ColdStartOptions, Pool, Selection, Strategy, cold_start_picks
from raysvc.strategies.registry import STRATEGIES


def balance_classes(
    classes: np.ndarray, counts: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions of ``budget`` of the candidates, candidate i being predicted ``classes[i]``,
    by the official rule (``pcb.py:PCB.select``, 45-66), in pick order.

    Repeatedly ``c = argmin counts`` over all classes, the first minimum (``torch.argmin``).
    If c has a candidate not yet taken, one of them drawn uniformly is taken and
    ``counts[c] += 1``; otherwise one of all the candidates not yet taken is drawn
    uniformly and no count changes, so once the scarcest class runs out every remaining
    pick of the round is uniform. The official code draws with python's global ``random``
    (``shuffle`` within the class, ``randint`` otherwise); ``rng`` draws from the same laws.
    """
    if budget > len(classes):
        raise ValueError(f"budget {budget} exceeds the {len(classes)} candidates")
    counts = np.array(counts, dtype=np.int64)
    taken = np.zeros(len(classes), dtype=bool)
    picks = []
    while len(picks) < budget:
        c = int(np.argmin(counts))
        members = np.flatnonzero((classes == c) & ~taken)
        if len(members):
            counts[c] += 1
        else:
            members = np.flatnonzero(~taken)
        pick = int(rng.choice(members))
        taken[pick] = True
        picks.append(pick)
    return np.array(picks, dtype=np.int64)


@STRATEGIES.register
class PCB(Strategy):
    """BADGE candidates, then one at a time from the class with the fewest labeled images.

    :func:`balance_classes` on the candidates' predicted classes, the labeled images counted
    by their stored label.

    ``candidate_fraction`` x the pool size (labeled images included) candidates, rounded
    down: the official ``int(len(unlabeled_dst) * GAMMA)`` with GAMMA = 0.1, where
    ``unlabeled_dst`` is the whole training set (alvlm.py:499, 505). raysvc raises it to the
    budget when smaller (the official loop would never end) and caps it at the unlabeled pool.

    ``cold_start="random"``: uniform picks while nothing is labeled, as the official loop,
    which runs neither BADGE nor PCB in round 0 (alvlm.py:531-532, 550).

    Pools of more than ``max_badge_pool`` unlabeled images: BADGE runs on a seeded uniform
    subsample of that many unlabeled images and proposes ``candidate_fraction`` of the
    subsample (raysvc's scaling; see ``max_badge_pool``). Smaller pools are as official.
    """

    @dataclasses.dataclass(frozen=True)
    class Options(ColdStartOptions):
        candidate_fraction: float = option(0.1, "BADGE proposes this share of the pool, labeled included")

        def check(self):
            if not 0 < self.candidate_fraction <= 1:
                raise ConfigError(f"option candidate_fraction={self.candidate_fraction!r}: must be in (0, 1]")

    name = "pcb"
    requires = frozenset({"probs", "features"})
    optional = frozenset({"embeddings"})

    # BADGE proposes its candidates from at most this many unlabeled images: above it, from
    # a seeded uniform subsample of that size (each k-means++ pick reads every image it
    # chooses from; the official 128 000 picks over 1.28M images would read the (N, C)
    # probabilities 128 000 times). Below it, the whole unlabeled pool.
    max_badge_pool: ClassVar[int] = 20_000

    def badge_pool_size(self, pool: Pool, budget: int) -> int | None:
        """The size of BADGE's subsample, or None when BADGE sees the whole unlabeled pool."""
        if len(pool.unlabeled_indices) > self.max_badge_pool:
            return max(self.max_badge_pool, budget)
        return None

    def n_candidates(self, pool: Pool, budget: int) -> int:
        """``floor(candidate_fraction x N)`` (of the subsample above ``max_badge_pool``), at least
        the budget, at most what BADGE chooses from."""
        seen = self.badge_pool_size(pool, budget)
        if seen is not None:
            return min(max(budget, math.floor(self.options.candidate_fraction * seen)), seen)
        official = math.floor(self.options.candidate_fraction * len(pool.labeled))
        return min(max(official, budget), len(pool.unlabeled_indices))

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        cold = cold_start_picks(self.options, pool, budget, rng)
        if cold is not None:
            return Selection(query=cold)
        h = pool.embeddings if pool.embeddings is not None else pool.features
        excluded = pool.labeled
        seen = self.badge_pool_size(pool, budget)
        if seen is not None:
            excluded = np.ones(len(pool.labeled), dtype=bool)
            excluded[rng.choice(pool.unlabeled_indices, size=seen, replace=False)] = False
        candidates = badge_select([(LazyGradientFactor(pool.probs), h)], excluded, self.n_candidates(pool, budget), rng)
        counts = pool.labeled_counts()
        predicted = pool.probs[candidates].argmax(1)
        return Selection(query=candidates[balance_classes(predicted, counts, budget, rng)])
