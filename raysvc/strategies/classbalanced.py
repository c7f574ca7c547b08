"""Class-balanced sampling (ActiveKD baseline): more of the budget to rarely labeled classes.

As erjui/PCoreSet @075a76a ``strategies.py:291-425`` (``ClassBalancedSampling``).
"""

import numpy as np

from raysvc.chunks import COPY_ROWS
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import STRATEGIES


def classbalanced_allocation(labeled_counts: np.ndarray, predicted_classes: np.ndarray, budget: int) -> np.ndarray:
    """(C,) images to draw per class, the official rule (``strategies.py:304-372``).

    Only ``predicted_classes`` (the classes predicted somewhere in the unlabeled pool) take
    part. With any label, w_c = 1 / (n_c + 1) where a class with no labeled image counts
    as having one (``counts.get(c, eps) + eps`` with eps = 1); with none, w_c = 1. Then
    ``alloc_c = floor(budget * w_c / sum w)``, and what is left goes +1 per class in
    descending weight (a stable sort: ties to the lower class id), in one pass.
    An allocation may exceed a class's members; :class:`ClassBalanced` fills the overflow.
    """
    labeled_counts = np.asarray(labeled_counts, dtype=np.float64)
    classes = np.asarray(predicted_classes, dtype=np.int64)
    if labeled_counts.sum() > 0:
        weights = 1.0 / (np.maximum(labeled_counts[classes], 1.0) + 1.0)
    else:
        weights = np.ones(len(classes))
    weights = weights / weights.sum()
    alloc = np.floor(budget * weights).astype(np.int64)
    remainder = budget - int(alloc.sum())
    alloc[np.argsort(-weights, kind="stable")[:remainder]] += 1
    out = np.zeros(len(labeled_counts), dtype=np.int64)
    out[classes] = alloc
    return out


@STRATEGIES.register
class ClassBalanced(Strategy):
    """More of the budget to rarely labeled classes, drawn at random within each predicted class.

    Predict every unlabeled image's class (argmax ``pool.probs``: the student's heads
    combined), allocate the budget by :func:`classbalanced_allocation`, draw each class's
    share uniformly among its predicted members, in ascending class order; budget a class
    could not use (it has fewer members than its share) goes to a uniform draw among the
    members of the predicted classes not yet taken. The official code draws with torch's
    and python's global RNGs; ``rng`` draws from the same laws.
    """

    name = "classbalanced"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        unlabeled = pool.unlabeled_indices
        predicted = np.concatenate(
            [pool.probs[unlabeled[s : s + COPY_ROWS]].argmax(1) for s in range(0, len(unlabeled), COPY_ROWS)]
        )
        counts = pool.labeled_counts()
        alloc = classbalanced_allocation(counts, np.unique(predicted), budget)
        taken = np.zeros(len(unlabeled), dtype=bool)
        picks = []
        for c in np.flatnonzero(alloc):
            members = np.flatnonzero(predicted == c)
            chosen = rng.choice(members, size=min(int(alloc[c]), len(members)), replace=False)
            taken[chosen] = True
            picks.append(chosen)
        overflow = budget - int(taken.sum())
        if overflow:
            picks.append(rng.choice(np.flatnonzero(~taken), size=overflow, replace=False))
        return Selection(query=unlabeled[np.concatenate(picks)])
