"""BADGE (Ash et al., ICLR 2020) on factorised gradient embeddings: k-means++ seeding, and
ActiveKD's deterministic farthest-first on cosine distance.

The last-layer gradient embedding of image i is g_i = a_i outer h_i with
a = p - onehot(argmax p) and h the penultimate features. It is never materialised
(1000 classes x 1024 features would be 1M floats per image):

    ||g_i - g_j||^2 = ||a_i||^2 ||h_i||^2 + ||a_j||^2 ||h_j||^2 - 2 (a_i . a_j)(h_i . h_j).

An embedding made of several gradients concatenated is given as a list of (a, h) pairs;
their squared distances (and dot products) add up. Seeding keeps each
candidate's squared distance to its nearest centre and folds in only the newest centre:
O(pool x (C + D)) work and O(pool) extra memory per pick.

``bench/reference.py`` materialises the embeddings; tests use it to show the factorised
seeding picks the same indices with the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raysvc.chunks import COMPUTE_ROWS
from raysvc.strategies._faiss import gather_f32
from raysvc.strategies._kcenter import Backend, array_backend, half_backend, put_rows_half, use_half

Pair = tuple[np.ndarray, np.ndarray]


def gradient_factor(probs: np.ndarray) -> np.ndarray:
    """a = p - onehot(argmax p), the class factor of the last-layer gradient embedding."""
    a = np.array(probs, dtype=np.result_type(probs.dtype, np.float32))
    a[np.arange(len(a)), np.argmax(probs, axis=1)] -= 1.0
    return a


class LazyGradientFactor:
    """:func:`gradient_factor` of ``probs``, computed only for the rows indexed.

    Stands in for the (N, C) array in an (a, h) pair so that no whole-pool copy of the
    probabilities is made: :func:`badge_select` reads the candidate rows in chunks.
    """

    ndim = 2

    def __init__(self, probs: np.ndarray):
        self.probs = probs
        self.shape = probs.shape

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, rows) -> np.ndarray:
        return gradient_factor(self.probs[rows])


def _check(pairs: Sequence[Pair], n: int | None = None) -> int:
    if not pairs:
        raise ValueError("BADGE needs at least one (a, h) pair")
    n = len(pairs[0][0]) if n is None else n
    for a, h in pairs:
        if a.ndim != 2 or h.ndim != 2 or len(a) != n or len(h) != n:
            raise ValueError(f"each (a, h) pair must be two 2-D arrays with {n} rows")
    return n


def _factors(pairs: Sequence[Pair], rows: np.ndarray, be: Backend):
    # a may be a LazyGradientFactor: gathered a block at a time, its (rows, C) temporaries stay small
    fac = [(be.put(gather_f32(a, rows, COMPUTE_ROWS)), be.put(gather_f32(h, rows, COMPUTE_ROWS))) for a, h in pairs]
    norms = sum((a * a).sum(1) * (h * h).sum(1) for a, h in fac)
    return fac, norms


def _factors_half(pairs: Sequence[Pair], rows: np.ndarray):
    """:func:`_factors` with float16 torch factors and float32 norms (large CPU pools,
    see :data:`~raysvc.strategies._kcenter.HALF_MIN_ROWS`)."""
    import torch

    fac, norms = [], np.zeros(len(rows), dtype=np.float32)
    for a, h in pairs:
        a16, a_sq = put_rows_half(a, rows)
        h16, h_sq = put_rows_half(h, rows)
        fac.append((a16, h16))
        norms += a_sq * h_sq
    return fac, torch.from_numpy(norms)


def _sq_dist(fac, norms, j: int):
    cross = sum(_f32(a @ a[j]) * _f32(h @ h[j]) for a, h in fac)
    return (norms + norms[j] - 2 * cross).clip(min=0)


def _f32(v):
    """float16 torch results to float32; numpy and float32 tensors unchanged."""
    return v if isinstance(v, np.ndarray) or v.dtype != _torch_half() else v.float()


def _torch_half():
    import torch

    return torch.float16


def gradient_sq_distances(pairs: Sequence[Pair], index: int) -> np.ndarray:
    """Squared distances from every image's gradient embedding to image ``index``'s."""
    n = _check(pairs)
    be = array_backend()
    fac, norms = _factors(pairs, np.arange(n), be)
    return np.asarray(be.get(_sq_dist(fac, norms, index)), dtype=np.float64)


def sample_d2(weights: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> int:
    """k-means++'s D² draw: an index with probability proportional to ``weights`` among those
    not ``chosen`` (uniform when every weight left is 0)."""
    weights = np.where(chosen, 0.0, weights)
    total = weights.sum()
    if total <= 0:  # every candidate left coincides with a centre
        return int(rng.choice(np.flatnonzero(~chosen)))
    return int(rng.choice(len(weights), p=weights / total))


def unlabeled_candidates(labeled: np.ndarray, budget: int) -> np.ndarray:
    """The unlabeled positions, once ``budget`` is checked against them."""
    candidates = np.flatnonzero(~labeled)
    if not 1 <= budget <= len(candidates):
        raise ValueError(f"budget {budget} not in [1, {len(candidates)}] unlabeled points")
    return candidates


def badge_select(
    pairs: Sequence[Pair], labeled: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Pool indices of ``budget`` unlabeled images chosen by k-means++ seeding, in pick order.

    ``pairs``: the (a, h) factors of the embedding, a = :func:`gradient_factor` of the
    probabilities (the strategies pass one pair). On CPU with at least ``HALF_MIN_ROWS``
    (500 000) candidates the factors are held in float16 (see
    :data:`~raysvc.strategies._kcenter.HALF_MIN_ROWS`). The first centre is the image of
    largest gradient norm (lowest index on ties), as in the official BADGE code (APL
    ``badge.py:61-88``); each next one is drawn with ``rng``
    proportionally to its squared distance to the nearest centre (the official code draws
    with numpy's global RNG and rejects repeats: the same law). As in BADGE, labeled
    images are excluded and are not centres.
    """
    _check(pairs, len(labeled))
    candidates = unlabeled_candidates(labeled, budget)
    be = array_backend()
    if use_half(be, len(candidates)):
        be = half_backend()
        fac, norms = _factors_half(pairs, candidates)
    else:
        fac, norms = _factors(pairs, candidates, be)
    first = int(norms.argmax())
    chosen = np.zeros(len(candidates), dtype=bool)
    chosen[first] = True
    picks = [first]
    min_d = _sq_dist(fac, norms, first)
    while len(picks) < budget:
        j = sample_d2(np.asarray(be.get(min_d), dtype=np.float64), chosen, rng)
        chosen[j] = True
        picks.append(j)
        be.xp.minimum(min_d, _sq_dist(fac, norms, j), out=min_d)
    return candidates[np.array(picks, dtype=np.int64)]


def cosine_farthest_first(pairs: Sequence[Pair], labeled: np.ndarray, budget: int) -> np.ndarray:
    """Pool indices of ``budget`` unlabeled images, in pick order, by ActiveKD's BADGE
    (erjui/PCoreSet @075a76a ``strategies.py:154-289``): the gradient embeddings are
    L2-normalised, and each pick maximises the cosine distance ``1 - g.g_s`` to its nearest
    pick, the first maximum winning (``torch.argmax``). No sampling, no ``rng``.

    First pick: the lowest index among non-zero embeddings (index 0 if all are zero).
    The official code takes ``argmax`` of the norms *after* normalisation, which are 1 up
    to float32 rounding, so its first pick is decided by rounding noise; "lowest index"
    is what the expression means and what it returns whenever the norms round alike.
    Labeled images are neither candidates nor centres (the official code scores the
    unlabeled pool only).
    """
    _check(pairs, len(labeled))
    candidates = unlabeled_candidates(labeled, budget)
    be = array_backend()
    fac, sq_norms = _factors(pairs, candidates, be)
    sq = np.asarray(be.get(sq_norms), dtype=np.float64)
    inv_norm = be.put(np.divide(1.0, np.sqrt(sq), out=np.zeros_like(sq), where=sq > 0))
    nonzero = np.flatnonzero(sq > 0)

    def cosine_distance_to(j: int):
        dot = sum(_f32(a @ a[j]) * _f32(h @ h[j]) for a, h in fac)
        return 1.0 - dot * inv_norm * inv_norm[j]

    first = int(nonzero[0]) if len(nonzero) else 0
    picks = [first]
    min_d = cosine_distance_to(first)
    min_d[first] = -np.inf
    while len(picks) < budget:
        j = int(min_d.argmax())
        picks.append(j)
        be.xp.minimum(min_d, cosine_distance_to(j), out=min_d)
        min_d[j] = -np.inf
    return candidates[np.array(picks, dtype=np.int64)]
