"""TypiClust (Hacohen et al. 2022): the most typical image of the largest uncovered clusters."""

from __future__ import annotations

import dataclasses

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import option
from raysvc.strategies._faiss import knn
from raysvc.strategies._guided import FeatureOptions, FeatureRequires, pool_features
from raysvc.strategies.base import ClusterStrategy, Pool, Selection
from raysvc.strategies.registry import STRATEGIES


def most_typical(x: np.ndarray, n_neighbors: int) -> int:
    """Row of ``x`` with the highest typicality, 1 / mean distance to its nearest neighbours.

    As in the authors' code, a small set uses half its size as the neighbourhood.
    """
    if len(x) == 1:
        return 0
    k = min(n_neighbors, len(x) // 2)
    dist, _ = knn(x, k + 1)
    # column 0 is the point itself; the lowest mean distance is the highest typicality
    return int(dist[:, 1:].mean(axis=1).argmin())


@STRATEGIES.register
class TypiClust(ClusterStrategy):
    """K = n_labeled + budget clusters (at most ``max_clusters``); from each cluster
    without labels, largest first, query its most typical unlabeled image.

    Typicality uses the ``n_neighbors`` nearest unlabeled images within the cluster.
    Clusters of at most ``min_cluster_size`` images (outliers, which the authors
    drop) and clusters that hold labels are visited only after the others; the
    visit is round robin, so the budget is always filled.
    """

    @dataclasses.dataclass(frozen=True)
    class Options(FeatureOptions):
        max_clusters: int = option(500, "at most this many K-means clusters")
        n_neighbors: int = option(20, "neighbours that define typicality")
        min_cluster_size: int = option(5, "clusters of at most this many images are visited last")

        def check(self):
            super().check()
            for name in ("max_clusters", "n_neighbors"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"option {name}={getattr(self, name)!r}: must be >= 1")
            if self.min_cluster_size < 0:
                raise ConfigError(f"option min_cluster_size={self.min_cluster_size!r}: must be >= 0")

    name = "typiclust"
    requires = FeatureRequires("image")

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        opts = self.options
        x = pool_features(pool, opts.features)
        k = min(int(pool.labeled.sum()) + budget, opts.max_clusters)
        centroids, assignment, _ = self.kmeans(x, k, seed=int(rng.integers(2**31)))
        k = len(centroids)
        sizes = np.bincount(assignment, minlength=k)
        n_labeled = np.bincount(assignment[pool.labeled], minlength=k)
        tiebreak = rng.permutation(k)
        visit = np.lexsort((tiebreak, -sizes, n_labeled, sizes <= opts.min_cluster_size))
        by_cluster = np.argsort(assignment, kind="stable")
        groups = np.split(by_cluster, np.cumsum(sizes)[:-1])
        available = ~pool.labeled
        picks: list[int] = []
        while len(picks) < budget:
            for c in visit:
                members = groups[c][available[groups[c]]]
                if len(members) == 0:
                    continue
                pick = int(members[most_typical(x[members], opts.n_neighbors)])
                picks.append(pick)
                available[pick] = False
                if len(picks) == budget:
                    break
        return Selection(query=np.array(picks))
