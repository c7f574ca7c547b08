"""Maximum predictive entropy."""

import numpy as np

from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register


_CHUNK = 16_384


def entropy(probs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Entropy of each row of ``probs`` (of ``probs[rows]`` when given), computed in float32
    (float64 for float64 input) row chunks: clipping at 1e-12 in float16 would give 0 and
    NaN, and whole-array temporaries would be three (N, C) arrays."""
    n = len(probs) if rows is None else len(rows)
    dtype = np.float64 if probs.dtype == np.float64 else np.float32
    out = np.empty(n, dtype=dtype)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = probs[start:stop] if rows is None else probs[rows[start:stop]]
        p = np.clip(np.asarray(chunk, dtype=dtype), 1e-12, 1.0)
        out[start:stop] = -(p * np.log(p)).sum(axis=1)
    return out


@register
class Entropy(Strategy):
    name = "entropy"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        candidates = pool.unlabeled_indices
        scores = entropy(pool.probs, candidates)
        # stable sort on a random permutation breaks ties at random, not by index
        order = rng.permutation(len(candidates))
        top = order[np.argsort(-scores[order], kind="stable")[:budget]]
        return Selection(query=candidates[top])
