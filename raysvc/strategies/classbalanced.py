"""Class-balanced sampling (ActiveKD baseline): more of the budget to rarely labeled classes."""

import numpy as np

from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register

_CHUNK = 65_536  # rows per argmax: no copy of the whole unlabeled probs


def inverse_frequency_allocation(
    labeled_counts: np.ndarray, available: np.ndarray, budget: int
) -> np.ndarray:
    """Images to draw per class: ``budget`` split in proportion to w_c = 1 / (n_c + 1).

    A class whose share reaches its ``available`` images gets them all, and the rest of
    the budget is split again over the other classes by their weights; the final shares
    are rounded by largest remainder (ties to the lower class index).
    """
    available = np.asarray(available, dtype=np.int64)
    if budget > available.sum():
        raise ValueError(f"budget {budget} exceeds the {available.sum()} available images")
    weights = 1.0 / (np.asarray(labeled_counts, dtype=np.float64) + 1.0)
    full = available == 0
    remaining = budget
    while True:
        w = np.where(full, 0.0, weights)
        quota = remaining * w / w.sum() if remaining else np.zeros_like(w)
        over = ~full & (quota >= available)
        if not over.any():
            break
        full |= over
        remaining -= int(available[over].sum())
    # quota < available for open classes, so rounding a share up stays within room
    alloc = np.where(full, available, np.floor(quota).astype(np.int64))
    short = budget - int(alloc.sum())
    alloc[np.argsort(-(quota - np.floor(quota)), kind="stable")[:short]] += 1
    return alloc


@register
class ClassBalanced(Strategy):
    """Pseudo-label the unlabeled pool by argmax probs, allocate the budget by
    :func:`inverse_frequency_allocation` of the labeled counts, draw at random per class."""

    name = "classbalanced"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        unlabeled = pool.unlabeled_indices
        pseudo = np.concatenate(
            [pool.probs[unlabeled[s : s + _CHUNK]].argmax(1) for s in range(0, len(unlabeled), _CHUNK)]
        )
        known = pool.labels[pool.labeled & (pool.labels >= 0)]
        counts = np.bincount(known, minlength=pool.n_classes)
        available = np.bincount(pseudo, minlength=pool.n_classes)
        alloc = inverse_frequency_allocation(counts, available, budget)
        query = [
            rng.choice(unlabeled[pseudo == c], size=k, replace=False)
            for c, k in enumerate(alloc)
            if k
        ]
        return Selection(query=np.concatenate(query))
