"""Greedy k-center selection (CoreSet, Sener & Savarese 2018) and its recompute-all reference.

:func:`kcenter_greedy` keeps, for every candidate, its squared distance to the nearest
centre and folds in only the newest centre at each pick: O(pool) work and memory per
pick, never a pool x pool matrix. :func:`kcenter_greedy_reference` recomputes every
candidate-to-centre distance at each step, as the official CoreSet code does; tests and
benchmarks use it to show both pick the same indices.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

# Elements of one candidates x centres block (64 MiB in float32): bounds the memory of
# folding in many labeled centres at once.
CHUNK_ELEMENTS = 1 << 24


class Backend(NamedTuple):
    """An array namespace with numpy-compatible calls, and moves to and from it."""

    xp: object
    put: Callable[[np.ndarray], object]
    get: Callable[[object], np.ndarray]


def array_backend() -> Backend:
    """float32 arrays in torch on the GPU when there is one, else in numpy.

    On CPU numpy's BLAS matrix-vector products measured about twice as fast as torch's.
    """
    import torch  # lazily: numpy-only callers should not pay for importing torch

    if torch.cuda.is_available():
        return Backend(
            torch,
            lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device="cuda"),
            lambda x: x.cpu().numpy(),
        )
    return Backend(np, lambda x: np.asarray(x, dtype=np.float32), np.asarray)


def _check(points: np.ndarray, labeled: np.ndarray, budget: int) -> np.ndarray:
    candidates = np.flatnonzero(~labeled)
    if points.ndim != 2 or len(points) != len(labeled):
        raise ValueError("points must be (N, D) with one row per entry of labeled")
    if not 1 <= budget <= len(candidates):
        raise ValueError(f"budget {budget} not in [1, {len(candidates)}] unlabeled points")
    return candidates


def kcenter_greedy(
    points: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Pool indices of ``budget`` unlabeled points, in pick order, each farthest from its
    nearest labeled or already picked point; ties go to the lowest index.

    With nothing labeled the first pick is drawn uniformly with ``rng``.
    """
    candidates = _check(points, labeled, budget)
    be = array_backend()
    x = be.put(points[candidates])
    sq = (x * x).sum(1)
    centres = be.put(points[labeled])
    picks = []
    if len(centres):
        min_d = None
        step = max(1, CHUNK_ELEMENTS // len(candidates))
        for start in range(0, len(centres), step):
            c = centres[start : start + step]
            d = be.xp.amin(sq[:, None] + (c * c).sum(1)[None, :] - 2 * (x @ c.T), axis=1).clip(min=0)
            min_d = d if min_d is None else be.xp.minimum(min_d, d, out=min_d)
    else:
        first = int(rng.integers(len(candidates)))
        picks.append(first)
        min_d = (sq + sq[first] - 2 * (x @ x[first])).clip(min=0)
        min_d[first] = -1.0
    while len(picks) < budget:
        # argmax returns the first maximum on numpy and torch alike: lowest index wins ties
        j = int(min_d.argmax())
        picks.append(j)
        d = (sq + sq[j] - 2 * (x @ x[j])).clip(min=0)
        be.xp.minimum(min_d, d, out=min_d)
        # a duplicate of a centre is at distance 0 and could otherwise be picked twice
        min_d[j] = -1.0
    return candidates[np.array(picks, dtype=np.int64)]


def kcenter_greedy_reference(
    points: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Same contract as :func:`kcenter_greedy`, recomputing all distances in float64 at each step."""
    candidates = _check(points, labeled, budget)
    x = np.asarray(points, dtype=np.float64)
    picked = np.zeros(len(points), dtype=bool)
    if not labeled.any():
        picked[candidates[rng.integers(len(candidates))]] = True
    order = list(np.flatnonzero(picked))
    while len(order) < budget:
        centres = x[labeled | picked]
        cand = x[candidates]
        sq_dist = (cand**2).sum(1)[:, None] + (centres**2).sum(1)[None, :] - 2 * cand @ centres.T
        nearest = np.sqrt(sq_dist.clip(min=0)).min(1)
        nearest[picked[candidates]] = -1.0
        j = candidates[int(nearest.argmax())]
        picked[j] = True
        order.append(j)
    return np.array(order, dtype=np.int64)
