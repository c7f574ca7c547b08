"""Cluster-balanced selection (Kim et al. 2024, Sec. 4.1, eq. 8-10).

K-means runs on the class-guided features of the whole pool, labeled images included.
The budget goes to the clusters with the smallest share of labeled members, one pick
at a time, and each cluster gives its unlabeled members nearest the centroid.

Variants (``variant``):

* ``official`` (default), as ml-postech/active-prompt-learning @105a662
  ``trainers/active_learning/cb.py`` and ``trainers/alvlm.py``: K = C while nothing is
  labeled (alvlm.py:511-519 runs the ``idx == 0`` branch exactly then), else
  K = C + n_labeled (cb.py:108-109); features ``[I, p T] / ||[I, p T]||`` (cb.py:62-63, 107).
* ``paper``: K = round x budget; features ``[I ; sum_c p(c|x) T_c]`` unnormalised (eq. 7).

Both variants share the allocation rule (:func:`allocate_to_clusters`) and the pick rule
(:func:`cluster_balanced_picks`); "first round" means nothing labeled, never round 1.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import ClassVar

import numpy as np

from raysvc.chunks import COMPUTE_ROWS
from raysvc.errors import ConfigError
from raysvc.options import option
from raysvc.strategies._guided import FeatureKind, FeatureOptions, FeatureRequires, pool_features
from raysvc.strategies.base import ClusterStrategy, Pool, Selection, Variant
from raysvc.strategies.registry import STRATEGIES


def allocate_to_clusters(assignment: np.ndarray, labeled: np.ndarray, budget: int, n_clusters: int) -> np.ndarray:
    """(n_clusters,) picks per cluster id, the greedy of APL ``cb.py:k_means_uncert`` (126-144).

    ``budget`` times: the non-empty cluster of smallest labeled/size ratio gets one pick
    and counts it as labeled; ties go to the larger cluster, then to the smaller cluster
    id (``max(min_keys, key=size)`` keeps the first of equals). A full cluster has ratio 1,
    the maximum, so no cluster is given more picks than it has unlabeled members while
    ``budget`` does not exceed the unlabeled pool. Label-free clusters (ratio 0) are served
    first, largest first: the paper's "largest unlabeled clusters".
    """
    size = np.bincount(assignment, minlength=n_clusters)
    n_labeled = np.bincount(assignment[labeled], minlength=n_clusters)
    # (ratio, -size, id): heapq's minimum is the official argmin with both tie-breaks
    heap = [(int(n_labeled[c]) / int(size[c]), -int(size[c]), int(c)) for c in np.flatnonzero(size)]
    heapq.heapify(heap)
    alloc = np.zeros(n_clusters, dtype=np.int64)
    for _ in range(budget):
        _, neg_size, c = heapq.heappop(heap)
        alloc[c] += 1
        n_labeled[c] += 1
        heapq.heappush(heap, (int(n_labeled[c]) / -neg_size, neg_size, c))
    return alloc


def centroid_cosine_distances(x: np.ndarray, centroids: np.ndarray, rows: np.ndarray, cluster: np.ndarray):
    """float64 cosine distance ``1 - x.m / (|x| |m|)`` of ``x[rows]`` to the centroid of ``cluster``
    (APL cb.py:120, ``cdist(..., 'cosine')``), row chunk by row chunk; a zero row is at distance 1."""
    out = np.empty(len(rows), dtype=np.float64)
    cen = np.asarray(centroids, dtype=np.float64)
    cen_norm = np.linalg.norm(cen, axis=1)
    for start in range(0, len(rows), COMPUTE_ROWS):
        stop = min(start + COMPUTE_ROWS, len(rows))
        xr = np.asarray(x[rows[start:stop]], dtype=np.float64)
        c = cluster[start:stop]
        dot = np.einsum("ij,ij->i", xr, cen[c])
        norms = np.linalg.norm(xr, axis=1) * cen_norm[c]
        out[start:stop] = 1.0 - np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return out


def cluster_balanced_picks(
    x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray, labeled: np.ndarray, budget: int
) -> np.ndarray:
    """``budget`` unlabeled indices: :func:`allocate_to_clusters`, then from each cluster
    given b picks its b unlabeled members nearest the centroid by cosine distance.

    Ties go to the lower pool index (a stable order; the official ``np.argsort`` is not
    stable). Returned in ascending cluster id, each cluster's nearest first: the official
    output order (cb.py:147-163). The official code takes one member per cluster (CB
    asserts, CBSQ under-delivers); taking b > 1 is raysvc's extension, reached only when
    the budget exceeds the label-free clusters (cb.py's assert never fires with K >= C + L
    and B = C).
    """
    alloc = allocate_to_clusters(assignment, labeled, budget, len(centroids))
    candidates = np.flatnonzero(~labeled & (alloc[assignment] > 0))
    cluster = assignment[candidates]
    dist = centroid_cosine_distances(x, centroids, candidates, cluster)
    order = np.lexsort((candidates, dist, cluster))
    by_cluster = cluster[order]
    rank = np.arange(len(order)) - np.searchsorted(by_cluster, by_cluster, side="left")
    return candidates[order[rank < alloc[by_cluster]]]


@STRATEGIES.register
class ClusterBalanced(ClusterStrategy):
    """Query the centroid-nearest images of the clusters with the least labeled share, largest first.

    See the module docstring for the variants.

    ``features``: "guided" (class-guided, as both papers), or the ablations' "image", "text",
    "label" (CB*, with ``oracle=true``) of Tab. 2 (:mod:`raysvc.strategies._guided`).
    """

    @dataclasses.dataclass(frozen=True)
    class Options(FeatureOptions):
        features: FeatureKind = option(
            "guided", "cluster on class-guided (eq. 7, both papers), image (eq. 5), text (eq. 6 alone) or label "
                      "(CB*: the true label's text features; needs oracle=true) features")
        variant: Variant = option(
            "official", "official: K = C + n_labeled (C with nothing labeled), unit-norm guided features; "
            "paper: K = round x budget, eq. 7 unnormalised")
        clusters_per_budget: int | None = option(
            None, "a fixed K = this x budget in every round (Tab. 6: 1 or 8); none: the variant's K")

        def check(self):
            super().check()
            if self.clusters_per_budget is not None and self.clusters_per_budget < 1:
                raise ConfigError(f"option clusters_per_budget={self.clusters_per_budget!r}: must be >= 1")

    name = "cb"
    requires = FeatureRequires("guided")
    # official K = factor x C + n_labeled once anything is labeled; cbsq's factor is 4
    official_class_factor: ClassVar[int] = 1

    def n_clusters(self, pool: Pool, budget: int) -> int:
        """K for this round (K-means clips it to the pool size): ``clusters_per_budget`` x B when
        set (the fixed K of the paper's Tab. 6, K = B and K = 8B), else the variant's rule."""
        if self.options.clusters_per_budget is not None:
            return self.options.clusters_per_budget * budget
        if self.options.variant == "paper":
            return pool.round * budget
        n_labeled = int(pool.labeled.sum())
        if n_labeled == 0:  # alvlm.py:511-526: K = C for cb and cbsq alike
            return pool.n_classes
        return self.official_class_factor * pool.n_classes + n_labeled

    def picks(self, pool: Pool, budget: int, rng: np.random.Generator) -> np.ndarray:
        """The ``budget`` cluster-balanced picks, in ascending cluster id."""
        x = pool_features(pool, self.options.features, variant=self.options.variant)
        centroids, assignment, _ = self.kmeans(x, self.n_clusters(pool, budget), seed=int(rng.integers(2**31)))
        return cluster_balanced_picks(x, centroids, np.asarray(assignment, dtype=np.int64), pool.labeled, budget)

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(query=self.picks(pool, budget, rng))
