"""Maximum predictive entropy (APL @105a662 ``trainers/active_learning/entropy.py``; ActiveKD's
"uncertainty", erjui/PCoreSet @075a76a ``strategies.py:33-52``, on the combined heads' probs)."""

import numpy as np

from raysvc.chunks import COMPUTE_ROWS
from raysvc.strategies.base import ColdStartOptions, Pool, Selection, Strategy, cold_start_picks
from raysvc.strategies.registry import STRATEGIES


def entropy(probs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Entropy of each row of ``probs`` (of ``probs[rows]`` when given), computed in float32
    (float64 for float64 input) row chunks: clipping at 1e-12 in float16 would give 0 and
    NaN, and whole-array temporaries would be three (N, C) arrays."""
    n = len(probs) if rows is None else len(rows)
    dtype = np.float64 if probs.dtype == np.float64 else np.float32
    out = np.empty(n, dtype=dtype)
    for start in range(0, n, COMPUTE_ROWS):
        stop = min(start + COMPUTE_ROWS, n)
        chunk = probs[start:stop] if rows is None else probs[rows[start:stop]]
        p = np.clip(np.asarray(chunk, dtype=dtype), 1e-12, 1.0)
        out[start:stop] = -(p * np.log(p)).sum(axis=1)
    return out


@STRATEGIES.register
class Entropy(Strategy):
    """The unlabeled images of highest predictive entropy, highest first.

    Ties go in random order (the official ``np.argsort`` / ``torch.sort`` leave them in an
    unspecified one).

    ``cold_start="random"``: uniform picks while nothing is labeled (APL ``alvlm.py:531-532``).
    """

    Options = ColdStartOptions
    name = "entropy"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        cold = cold_start_picks(self.options, pool, budget, rng)
        if cold is not None:
            return Selection(query=cold)
        candidates = pool.unlabeled_indices
        scores = entropy(pool.probs, candidates)
        # stable sort on a random permutation breaks ties at random, not by index
        order = rng.permutation(len(candidates))
        top = order[np.argsort(-scores[order], kind="stable")[:budget]]
        return Selection(query=candidates[top], query_scores=scores[top])
