"""Greedy k-center selection (CoreSet, Sener & Savarese 2018) and its recompute-all reference.

With ``normalize=True`` the points are L2-normalised first (rows converted chunk by chunk,
never a normalised copy of the whole pool), so the Euclidean k-center is the k-center on
cosine distance, ``||a - b||^2 = 2 (1 - cos)``: ActiveKD's coreset (erjui/PCoreSet
@075a76a ``strategies.py:54-152``, ``F.normalize`` then ``1 - cos``).

:func:`kcenter_greedy` keeps, for every candidate, its squared distance to the nearest
centre and folds in only the newest centre at each pick: O(pool) work and memory per
pick, never a pool x pool matrix, where the official CoreSet code recomputes every
candidate-to-centre distance at each step (``bench/reference.py`` does that, and the
tests show both pick the same indices).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from raysvc.strategies._faiss import gather_f32, unit_rows

# Elements of one candidates x centres block (64 MiB in float32): bounds the memory of
# folding in many labeled centres at once.
CHUNK_ELEMENTS = 1 << 24
# On CPU (numpy backend), a selection over at least this many candidates keeps them in
# float16 torch tensors: each pick reads every candidate once, so the pick loop is bound
# by memory traffic, and torch's float16 matrix-vector product reads half the bytes
# (measured ~3x faster than float32 here). Squared norms, the distances to labeled
# centres and the running minima stay float32; only the pick-to-candidate dot products
# use float16-rounded coordinates (relative error ~1e-3), so picks at that size can
# differ from the float32 formulation on near ties. Smaller pools are unaffected.
HALF_MIN_ROWS = 500_000
_ROWS = 8192


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


def half_backend() -> Backend:
    """float16 torch tensors on the CPU (see :data:`HALF_MIN_ROWS`); ``get`` returns float32."""
    import torch

    return Backend(
        torch,
        lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.float16),
        lambda x: x.float().numpy(),
    )


def use_half(be: Backend, n_rows: int) -> bool:
    return be.xp is np and n_rows >= HALF_MIN_ROWS


def gather_rows(points: np.ndarray, rows: np.ndarray, normalize: bool) -> np.ndarray:
    """float32 ``points[rows]`` (a copy), L2-normalised when ``normalize``."""
    out = gather_f32(points, rows)
    return unit_rows(out) if normalize else out


def put_rows_half(x: np.ndarray, rows: np.ndarray):
    """(float16 tensor of ``x[rows]``, float32 numpy squared row norms), filled in chunks."""
    import torch

    out = torch.empty((len(rows), x.shape[1]), dtype=torch.float16)
    sq = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _ROWS):
        c = gather_f32(x, rows[start : start + _ROWS])
        sq[start : start + len(c)] = (c * c).sum(1)
        out[start : start + len(c)] = torch.from_numpy(c)
    return out, sq


def _load_half(points: np.ndarray, candidates: np.ndarray, labeled_rows: np.ndarray, normalize: bool = False):
    """Half-precision candidates (tensor), float32 squared norms and, with labeled rows,
    float32 squared distance of each candidate to its nearest labeled centre (tensors).

    The labeled distances are computed in float32 row block by row block as the
    candidates are loaded: one pass over the pool, matrix-matrix products.
    """
    import torch

    n = len(candidates)
    x = torch.empty((n, points.shape[1]), dtype=torch.float16)
    sq = np.empty(n, dtype=np.float32)
    cen = gather_rows(points, labeled_rows, normalize)
    csq = (cen * cen).sum(1)
    min_d = np.full(n, np.inf, dtype=np.float32) if len(cen) else None
    step = max(1, CHUNK_ELEMENTS // _ROWS)
    for start in range(0, n, _ROWS):
        c = gather_rows(points, candidates[start : start + _ROWS], normalize)
        rsq = (c * c).sum(1)
        sq[start : start + len(c)] = rsq
        for t in range(0, len(cen), step):
            block = rsq[:, None] + csq[None, t : t + step] - 2 * (c @ cen[t : t + step].T)
            np.minimum(min_d[start : start + len(c)], block.min(1), out=min_d[start : start + len(c)])
        x[start : start + len(c)] = torch.from_numpy(c)
    if min_d is not None:
        min_d = torch.from_numpy(min_d.clip(min=0))
    return x, torch.from_numpy(sq), min_d


def kcenter_candidates(points: np.ndarray, labeled: np.ndarray, budget: int) -> np.ndarray:
    """The unlabeled positions, once ``points`` and ``budget`` are checked against ``labeled``."""
    candidates = np.flatnonzero(~labeled)
    if points.ndim != 2 or len(points) != len(labeled):
        raise ValueError("points must be (N, D) with one row per entry of labeled")
    if not 1 <= budget <= len(candidates):
        raise ValueError(f"budget {budget} not in [1, {len(candidates)}] unlabeled points")
    return candidates


def kcenter_greedy(
    points: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator, normalize: bool = False,
    reverse: bool = False,
) -> np.ndarray:
    """Pool indices of ``budget`` unlabeled points, in pick order, each farthest from its
    nearest labeled or already picked point; ties go to the lowest index (``torch.argmax``'s
    first maximum in the official code). ``normalize``: on L2-normalised points.
    ``reverse``: each the *nearest* to its nearest centre instead (argmin for argmax, the first
    minimum on ties): ActiveKD's PCoreSet+R.

    With nothing labeled the first pick is drawn uniformly with ``rng`` (the official
    coresets need a labeled point: APL's reads ``labeled[0:2]``, ActiveKD's ``torch.cat([])``
    raises).
    """
    candidates = kcenter_candidates(points, labeled, budget)
    be = array_backend()
    min_d = None  # squared distance of each candidate to its nearest centre (labeled, then picked)
    if use_half(be, len(candidates)):
        be = half_backend()
        x, sq, min_d = _load_half(points, candidates, np.flatnonzero(labeled), normalize)
    else:
        x = be.put(gather_rows(points, candidates, normalize))
        sq = (x * x).sum(1)
        centres = be.put(gather_rows(points, np.flatnonzero(labeled), normalize))
        step = max(1, CHUNK_ELEMENTS // len(candidates))
        for start in range(0, len(centres), step):
            c = centres[start : start + step]
            d = be.xp.amin(sq[:, None] + (c * c).sum(1)[None, :] - 2 * (x @ c.T), axis=1).clip(min=0)
            min_d = d if min_d is None else be.xp.minimum(min_d, d, out=min_d)

    def sq_dist_to(j: int):
        dot = x @ x[j]  # float16 on the half backend: summed with float32 norms
        return (sq + sq[j] - 2 * (dot if dot.dtype == sq.dtype else dot.float())).clip(min=0)

    picks = []
    if min_d is None:
        first = int(rng.integers(len(candidates)))
        picks.append(first)
        min_d = sq_dist_to(first)
        min_d[first] = -1.0
    while len(picks) < budget:
        if reverse:
            # the minimum above lowers a picked point's mark again: re-mark every pick
            min_d[picks] = float("inf")
        # argmax / argmin return the first extremum on numpy and torch alike: lowest index wins ties
        j = int(min_d.argmin() if reverse else min_d.argmax())
        picks.append(j)
        be.xp.minimum(min_d, sq_dist_to(j), out=min_d)
        # a duplicate of a centre is at distance 0 and could otherwise be picked twice
        min_d[j] = -1.0
    return candidates[np.array(picks, dtype=np.int64)]
