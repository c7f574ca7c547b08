"""K-means and exact k-nearest neighbours on faiss, on the GPU when one is present.

Every cluster-based strategy goes through these two functions so that none of them
builds an n x n distance matrix. Inputs are copied to float32 C-contiguous arrays,
which is what faiss reads.
"""

from __future__ import annotations

import faiss
import numpy as np

from raysvc.errors import ConfigError


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _use_gpu() -> bool:
    return faiss.get_num_gpus() > 0


def _flat_index(d: int, metric: str):
    if metric == "l2":
        index = faiss.IndexFlatL2(d)
    elif metric == "ip":
        index = faiss.IndexFlatIP(d)
    else:
        raise ConfigError(f"knn metric must be 'l2' or 'ip', got {metric!r}")
    return faiss.index_cpu_to_all_gpus(index) if _use_gpu() else index


def kmeans(
    x: np.ndarray, k: int, seed: int, niter: int = 20, nredo: int = 3
) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded K-means; returns (centroids (k, D), assignment (N,), inertia).

    ``k`` larger than the number of points is clipped to it. Centroids start from
    k-means++ and the best of ``nredo`` runs is kept: one plain k-means++ start often
    merges two well-separated blobs, which a selector then covers twice. Inertia is
    the sum of squared L2 distances to the assigned centroid, as in scikit-learn.
    Beyond 256 points per centroid faiss trains on a seeded subsample.
    """
    x = as_f32(x)
    n, d = x.shape
    if k < 1 or n < 1:
        raise ConfigError(f"kmeans needs k >= 1 and at least one point, got k={k}, n={n}")
    k = min(int(k), n)
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        nredo=nredo,
        seed=int(seed) % (2**31),
        # small pools are the norm here; faiss would warn below 39 points per centroid
        min_points_per_centroid=1,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        gpu=_use_gpu(),
        verbose=False,
    )
    km.train(x)
    sq_dist, assignment = km.assign(x)
    return km.centroids, assignment.astype(np.int64), float(sq_dist.sum(dtype=np.float64))


def kmeans_reference(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """scikit-learn K-means with the same return values as :func:`kmeans` (tests, benchmarks)."""
    from sklearn.cluster import KMeans

    x = as_f32(x)
    km = KMeans(n_clusters=min(int(k), len(x)), random_state=seed, n_init=1).fit(x)
    return km.cluster_centers_, km.labels_.astype(np.int64), float(km.inertia_)


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
    x = as_f32(x)
    queries = x if queries is None else as_f32(queries)
    if k < 1:
        raise ConfigError(f"knn needs k >= 1, got {k}")
    k = min(int(k), len(x))
    index = _flat_index(x.shape[1], metric)
    index.add(x)
    dist = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        stop = start + chunk_size
        dist[start:stop], idx[start:stop] = index.search(queries[start:stop], k)
    if metric == "l2":
        # faiss reports squared distances; rounding can make them slightly negative
        np.sqrt(np.maximum(dist, 0.0), out=dist)
    return dist, idx
