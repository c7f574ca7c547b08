"""Reference implementations that tests and benchmarks hold the fast strategies against.

Each recomputes what the fast path keeps incrementally (every distance at every step, in
float64, on materialised embeddings), with the same contract and the same random draws,
so the two must pick the same indices: ``tests/test_scale_equivalence.py`` and
``tests/test_strategies_kcenter_badge.py`` check that, ``python -m bench.selection``
times the two side by side.
"""

from __future__ import annotations

import numpy as np

from raysvc.strategies._badge import gradient_factor, sample_d2, unlabeled_candidates
from raysvc.strategies._faiss import as_f32, unit_rows
from raysvc.strategies._kcenter import kcenter_candidates


def kcenter_greedy_reference(
    points: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator, normalize: bool = False
) -> np.ndarray:
    """Same contract as :func:`raysvc.strategies._kcenter.kcenter_greedy`, recomputing all
    distances in float64 at each step."""
    candidates = kcenter_candidates(points, labeled, budget)
    x = np.array(points, dtype=np.float64)
    if normalize:
        unit_rows(x)
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


def cosine_farthest_first_reference(embeddings: np.ndarray, labeled: np.ndarray, budget: int) -> np.ndarray:
    """:func:`raysvc.strategies._badge.cosine_farthest_first` on materialised embeddings,
    recomputing all distances in float64."""
    candidates = unlabeled_candidates(labeled, budget)
    g = np.array(embeddings, dtype=np.float64)[candidates]
    norms = np.linalg.norm(g, axis=1)
    g /= np.maximum(norms, 1e-300)[:, None]
    nonzero = np.flatnonzero(norms > 0)
    picks = [int(nonzero[0]) if len(nonzero) else 0]
    while len(picks) < budget:
        d = (1.0 - g @ g[picks].T).min(axis=1)
        d[picks] = -np.inf
        picks.append(int(d.argmax()))
    return candidates[np.array(picks, dtype=np.int64)]


def badge_embeddings_reference(probs: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Materialised (N, C * D) embeddings (p - onehot(argmax p)) outer h, row-major per class."""
    a = gradient_factor(np.asarray(probs, dtype=np.float64))
    return (a[:, :, None] * np.asarray(h, dtype=np.float64)[:, None, :]).reshape(len(a), -1)


def badge_select_reference(
    embeddings: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """:func:`raysvc.strategies._badge.badge_select` on materialised embeddings, recomputing
    all distances each step."""
    candidates = unlabeled_candidates(labeled, budget)
    g = np.asarray(embeddings, dtype=np.float64)[candidates]
    chosen = np.zeros(len(candidates), dtype=bool)
    chosen[int(np.linalg.norm(g, axis=1).argmax())] = True
    order = list(np.flatnonzero(chosen))
    while len(order) < budget:
        centres = g[chosen]
        sq_dist = (g**2).sum(1)[:, None] + (centres**2).sum(1)[None, :] - 2 * g @ centres.T
        sq_dist = sq_dist.clip(min=0).min(1)
        j = sample_d2(sq_dist, chosen, rng)
        chosen[j] = True
        order.append(j)
    return candidates[np.array(order, dtype=np.int64)]


def kmeans_reference(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """scikit-learn K-means with the same return values as :func:`raysvc.strategies._faiss.kmeans`."""
    from sklearn.cluster import KMeans

    x = as_f32(x)
    km = KMeans(n_clusters=min(int(k), len(x)), random_state=seed, n_init=1).fit(x)
    return km.cluster_centers_, km.labels_.astype(np.int64), float(km.inertia_)
