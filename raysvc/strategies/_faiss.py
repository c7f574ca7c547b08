"""K-means and k-nearest neighbours on faiss, on the GPU when one is present.

Every cluster-based strategy goes through these functions so that none of them
builds an n x n distance matrix. faiss reads float32 C-contiguous arrays; inputs of
another dtype (float16 pools) are converted in row chunks, never as a whole-pool copy
beyond the one float32 array a computation needs.

Large pools. Above :data:`LARGE_POOL` points :func:`kmeans` switches to its large-pool
settings (:data:`LARGE_POINTS_PER_CENTROID` training points per centroid, one run,
:data:`LARGE_NITER` Lloyd iterations) and :func:`knn_blocks` to an approximate search
(see there). Below the threshold both behave as on small pools.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import faiss
import numpy as np

from raysvc.chunks import COMPUTE_ROWS, COPY_ROWS
from raysvc.errors import RaysvcBug

# K-means: above this many points, train on a seeded subsample of
# LARGE_POINTS_PER_CENTROID points per centroid, with nredo=1 and LARGE_NITER Lloyd
# iterations, then assign every point. Below it, up to SMALL_POINTS_PER_CENTROID
# points per centroid (faiss's default) and the caller's nredo / niter.
LARGE_POOL = 50_000
SMALL_POINTS_PER_CENTROID = 256
LARGE_POINTS_PER_CENTROID = 64
LARGE_NITER = 6
# Greedy k-means++ seeding runs on at most max(SEED_MIN_POINTS, SEED_POINTS_PER_CENTROID x k)
# of the training points: its cost is k x (2 + ln k) x points x D.
SEED_POINTS_PER_CENTROID = 4
SEED_MIN_POINTS = 10_000
# Large pools with many clusters (K-means for CB at ImageNet size: K = 4C + n_labeled, up to
# ~12 000): the training subsample holds at most LARGE_TRAIN_ELEMENTS floats (512 MB) and
# the centres start from faiss's seeded uniform sample of it (greedy k-means++ costs
# k x ln k x points x D: minutes at that K). Assignment stays exact: an HNSW graph over the
# centres measured slower than faiss's BLAS search at the recall it needs (0.98 at 9x the
# time on 100k x 768 points and 5000 centres).
LARGE_K = 2048
LARGE_TRAIN_ELEMENTS = 1 << 27
# kNN: exact (every pair) up to EXACT_KNN_MAX points, approximate above.
EXACT_KNN_MAX = 50_000


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def gather_f32(x: np.ndarray, rows: np.ndarray | None = None, chunk: int = COPY_ROWS) -> np.ndarray:
    """float32 copy of ``x[rows]`` (all rows when None), converted chunk by chunk so a
    float16 pool is never copied whole in its own dtype first."""
    n = len(x) if rows is None else len(rows)
    if rows is None and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        out[start:stop] = x[start:stop] if rows is None else x[rows[start:stop]]
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every row divided by its L2 norm, in place (a zero row stays zero, as
    ``F.normalize``); ``x`` must be a float array (or a writable view) the caller owns."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _use_gpu() -> bool:
    return faiss.get_num_gpus() > 0


def _flat_index(d: int, metric: str):
    if metric == "l2":
        index = faiss.IndexFlatL2(d)
    elif metric == "ip":
        index = faiss.IndexFlatIP(d)
    else:
        raise RaysvcBug(f"knn metric must be 'l2' or 'ip', got {metric!r}")
    return faiss.index_cpu_to_all_gpus(index) if _use_gpu() else index


def greedy_kmeans_pp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k, D) greedy k-means++ centres of float32 ``x``, as scikit-learn's ``kmeans_plusplus``
    (2 + ln k candidates drawn per step by D^2 sampling; the one that lowers the potential
    most is kept), with float32 BLAS products: scikit-learn upcasts float32 distances to
    float64 block by block, which measured >10x slower here."""
    rng = np.random.default_rng(int(seed) % (2**63))
    n = len(x)
    n_trials = 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centres[0] = x[first]
    closest = np.maximum(sq + sq[first] - 2 * (x @ x[first]), 0.0)
    potential = float(closest.sum(dtype=np.float64))
    for c in range(1, k):
        if potential <= 0:  # every point coincides with a centre: fill with random points
            centres[c:] = x[rng.choice(n, size=k - c, replace=False)] if k - c <= n else x[rng.integers(n, size=k - c)]
            break
        cum = np.cumsum(closest, dtype=np.float64)
        cand = np.minimum(np.searchsorted(cum, rng.random(n_trials) * cum[-1]), n - 1)
        d = np.maximum(sq[cand][:, None] + sq[None, :] - 2 * (x[cand] @ x.T), 0.0)
        np.minimum(d, closest[None, :], out=d)
        pots = d.sum(axis=1, dtype=np.float64)
        best = int(pots.argmin())
        closest, potential = d[best], float(pots[best])
        centres[c] = x[cand[best]]
    return centres


def kmeans(
    x: np.ndarray, k: int, seed: int, niter: int = 20, nredo: int = 3
) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded K-means; returns (centroids (k, D), assignment (N,), inertia).

    ``k`` larger than the number of points is clipped to it. Each of ``nredo`` runs
    starts from greedy k-means++ (as scikit-learn: one plain k-means++ start, faiss's
    own, often merges two well-separated blobs, which a selector then covers twice) and
    runs ``niter`` Lloyd iterations in faiss; the run of lowest training objective is
    kept. Training uses a seeded subsample of at most 256 points per centroid (64 above
    :data:`LARGE_POOL` points, where also nredo = 1 and niter <= :data:`LARGE_NITER`);
    every point is then assigned, in chunks. Inertia is the sum of squared L2 distances
    of all points to their assigned centroid, as in scikit-learn. Above :data:`LARGE_POOL`
    points with at least :data:`LARGE_K` clusters the training set is capped and the
    start is faiss's uniform sample (see :data:`LARGE_K`).
    ``x`` may be any row-indexable (N, D) array, :class:`~raysvc.lazyrows.LazyRows` included.
    """
    n, d = x.shape
    if k < 1 or n < 1:
        raise RaysvcBug(f"kmeans needs k >= 1 and at least one point, got k={k}, n={n}")
    k = min(int(k), n)
    rng = np.random.default_rng(int(seed) % (2**63))
    large = n > LARGE_POOL
    if large:
        nredo, niter = 1, min(niter, LARGE_NITER)
    per_centroid = LARGE_POINTS_PER_CENTROID if large else SMALL_POINTS_PER_CENTROID
    n_train = min(n, k * per_centroid)
    many = large and k >= LARGE_K
    if many:
        n_train = min(n_train, max(k, LARGE_TRAIN_ELEMENTS // d))
    train_rows = None if n_train == n else np.sort(rng.choice(n, size=n_train, replace=False))
    xt = gather_f32(x, train_rows)
    n_seed = min(n_train, max(SEED_MIN_POINTS, SEED_POINTS_PER_CENTROID * k))
    best = None
    for redo in range(max(1, int(nredo))):
        run_seed = int(rng.integers(2**31))
        if n_seed < n_train:
            xs = xt[np.sort(np.random.default_rng(run_seed).choice(n_train, size=n_seed, replace=False))]
        else:
            xs = xt
        init = None if many else greedy_kmeans_pp(xs, k, run_seed)
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            nredo=1,
            seed=run_seed,
            # small pools are the norm here; faiss would warn below 39 points per centroid
            min_points_per_centroid=1,
            max_points_per_centroid=max(1, -(-n_train // k)),  # already subsampled
            gpu=_use_gpu(),
            verbose=False,
        )
        obj = km.train(xt, init_centroids=init) if niter > 0 else np.inf
        if best is None or obj < best[0]:
            best = (obj, km)
    km = best[1]
    assignment = np.empty(n, dtype=np.int64)
    inertia = 0.0
    for start in range(0, n, COMPUTE_ROWS):
        stop = start + COMPUTE_ROWS
        chunk = xt[start:stop] if train_rows is None else gather_f32(x[start:stop])
        sq_dist, a = km.index.search(chunk, 1)
        assignment[start : start + len(chunk)] = a[:, 0]
        inertia += float(sq_dist.sum(dtype=np.float64))
    return km.centroids, assignment, inertia


def knn(
    x: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    metric: str = "l2",
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries`` (default: ``x`` itself) among ``x``.

    Returns (distances, indices), both (Q, k), nearest first. ``metric="l2"`` gives
    Euclidean distances (not squared); ``metric="ip"`` gives inner products, largest
    first. With ``queries=None`` each point is usually its own first neighbour. ``k``
    larger than ``len(x)`` is clipped to it, so no row holds faiss's -1 padding.
    Queries are searched in chunks to bound the memory of one search.
    """
    x = gather_f32(x)
    if k < 1:
        raise RaysvcBug(f"knn needs k >= 1, got {k}")
    k = min(int(k), len(x))
    n_queries = len(x) if queries is None else len(queries)
    dist = np.empty((n_queries, k), dtype=np.float32)
    idx = np.empty((n_queries, k), dtype=np.int64)
    index = _flat_index(x.shape[1], metric)
    index.add(x)
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        q = x[start:stop] if queries is None else gather_f32(queries[start:stop])
        dist[start:stop], idx[start:stop] = index.search(q, k)
    if metric == "l2":
        # faiss reports squared distances; rounding can make them slightly negative
        np.sqrt(np.maximum(dist, 0.0), out=dist)
    return dist, idx


def knn_blocks(
    x: np.ndarray, k: int, seed: int = 0, exact_max: int = EXACT_KNN_MAX, nprobe: int = 2, chunk_size: int = 8192
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """L2 k nearest neighbours of every row of ``x`` among ``x``, in blocks of
    (rows, distances (B, k), indices (B, k)), so a caller can reduce each block and
    never hold all N x k results.

    Up to ``exact_max`` points the search is exact (:func:`knn`, rows in order). Above,
    it is approximate, inverted-file style with exact BLAS search inside each cell:
    seeded K-means into ~sqrt(nprobe x N) cells (:func:`kmeans` large-pool settings; this
    balances the cost of assigning points to cells, N x cells x D, against the cost of
    searching, N x nprobe x N / cells x D); the points of
    a cell are searched exactly among the points of the ``nprobe`` cells whose centroids
    are nearest to its own. A neighbour outside those cells is missed; a cell with fewer
    than k candidates pads with index -1 and distance inf.
    """
    n = len(x)
    k = min(int(k), n)
    if n <= exact_max:
        x = gather_f32(x)
        index = _flat_index(x.shape[1], "l2")
        index.add(x)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            dist, idx = index.search(x[start:stop], k)
            yield np.arange(start, stop), np.sqrt(np.maximum(dist, 0.0)), idx
        return
    nlist = max(1, int(round(math.sqrt(nprobe * n))))
    centroids, cell, _ = kmeans(x, nlist, seed=seed, nredo=1)
    nprobe = min(nprobe, nlist)
    _, near = knn(centroids, nprobe)
    order = np.argsort(cell, kind="stable")
    starts = np.searchsorted(cell[order], np.arange(nlist + 1))
    for c in range(nlist):
        rows = order[starts[c] : starts[c + 1]]
        if len(rows) == 0:
            continue
        cand = np.sort(np.concatenate([order[starts[m] : starts[m + 1]] for m in near[c]]))
        index = _flat_index(x.shape[1], "l2")
        index.add(gather_f32(x, cand))
        kk = min(k, len(cand))
        dist = np.full((len(rows), k), np.inf, dtype=np.float32)
        idx = np.full((len(rows), k), -1, dtype=np.int64)
        q = gather_f32(x, rows)
        for start in range(0, len(rows), chunk_size):
            d, i = index.search(q[start : start + chunk_size], kk)
            dist[start : start + len(d), :kk] = np.sqrt(np.maximum(d, 0.0))
            idx[start : start + len(d), :kk] = cand[i]
        yield rows, dist, idx
