"""Cluster-balanced selection (Kim et al. 2024, eq. 8-10).

K-means runs on the class-guided features of the whole pool, labeled images
included, so clusters already holding labels shrink in unlabeled count and fall
back in the order. The unlabeled image nearest each centroid is queried, largest
clusters (by unlabeled members) first.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import numpy as np

from raysvc.options import Options, option
from raysvc.strategies._faiss import kmeans
from raysvc.strategies._guided import FeatureKind, FeatureRequires, pool_features
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import register
_CHUNK = 65_536


def cluster_order(
    x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray, eligible: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices of the ``eligible`` (N,) mask in cluster-balanced order.

    Clusters are ranked by their number of eligible members, descending, ties at
    random. The order takes the member nearest its centroid from every cluster in
    that rank, then the second nearest from every cluster that has one, and so on
    (round robin), so any prefix is as balanced across clusters as it can be.
    """
    members = np.flatnonzero(eligible)
    cluster = assignment[members]
    dist = np.empty(len(members), dtype=np.result_type(x.dtype, centroids.dtype))
    for start in range(0, len(members), _CHUNK):  # chunks: no (members, D) temporaries
        rows = members[start : start + _CHUNK]
        dist[start : start + len(rows)] = ((x[rows] - centroids[cluster[start : start + len(rows)]]) ** 2).sum(axis=1)
    counts = np.bincount(cluster, minlength=len(centroids))
    shuffled = rng.permutation(len(centroids))
    ranked = shuffled[np.argsort(-counts[shuffled], kind="stable")]
    cluster_rank = np.empty(len(centroids), dtype=np.int64)
    cluster_rank[ranked] = np.arange(len(centroids))
    by_cluster = np.lexsort((dist, cluster))
    first_of_cluster = np.searchsorted(cluster[by_cluster], cluster[by_cluster], side="left")
    depth = np.empty(len(members), dtype=np.int64)
    depth[by_cluster] = np.arange(len(members)) - first_of_cluster
    return members[np.lexsort((cluster_rank[cluster], depth))]


@register
class ClusterBalanced(Strategy):
    """Query the unlabeled image nearest each centroid, largest clusters first.

    ``k_rule="paper"``: K = round x budget. ``k_rule="official"``: K = C + n_labeled,
    as in the authors' code. ``features``: "guided" (paper) or "image".
    """

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        features: FeatureKind = option("guided", "cluster on class-guided (paper) or plain image features")
        k_rule: Literal["paper", "official"] = option("paper", "K = round x budget (paper) or C + n_labeled (official)")

    name = "cb"
    requires = FeatureRequires("guided")
    # the official code uses K = factor x C + n_labeled; cbsq overrides the factor
    official_class_factor: ClassVar[int] = 1

    def n_clusters(self, pool: Pool, budget: int) -> int:
        """K for this round (K-means clips it to the pool size)."""
        if self.options.k_rule == "paper":
            return pool.round * budget
        return self.official_class_factor * pool.n_classes + int(pool.labeled.sum())

    def candidate_order(self, pool: Pool, budget: int, rng: np.random.Generator) -> np.ndarray:
        """Every unlabeled index, in the order cluster-balanced selection would query them."""
        x = pool_features(pool, self.options.features)
        centroids, assignment, _ = kmeans(x, self.n_clusters(pool, budget), seed=int(rng.integers(2**31)))
        return cluster_order(x, centroids, assignment, ~pool.labeled, rng)

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(query=self.candidate_order(pool, budget, rng)[:budget])
