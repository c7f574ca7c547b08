"""ProbCover (Yehuda et al. 2022): greedy maximum coverage of delta-balls; ProbCover* (Kim et al.
2024, Tab. 11): the ball centres chosen within K-means clusters."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import option
from raysvc.strategies._faiss import EXACT_KNN_MAX, knn_blocks
from raysvc.strategies._guided import FeatureOptions, FeatureRequires, pool_features
from raysvc.strategies.base import ClusterStrategy, Pool, Selection
from raysvc.strategies.registry import STRATEGIES


def ball_graph(
    x: np.ndarray, delta: float, max_neighbors: int, seed: int = 0, exact_max: int = EXACT_KNN_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """Edges (source, target) for every target within L2 distance ``delta`` of source.

    Balls are capped at the ``max_neighbors`` nearest points, which bounds the graph
    at N x max_neighbors edges instead of N x N; a point always lies in its own ball.
    Neighbours are exact up to ``exact_max`` points and approximate above
    (:func:`~raysvc.strategies._faiss.knn_blocks`, seeded with ``seed``); they are
    reduced to edges block by block, so the N x max_neighbors search results are never
    held at once.
    """
    sources, targets, missing = [], [], []
    for rows, dist, idx in knn_blocks(x, max_neighbors, seed=seed, exact_max=exact_max):
        inside = dist < delta
        sources.append(np.repeat(rows, inside.sum(axis=1)))
        targets.append(idx[inside])
        missing.append(rows[~(inside & (idx == rows[:, None])).any(axis=1)])
    missing_self = np.concatenate(missing)
    return np.concatenate(sources + [missing_self]), np.concatenate(targets + [missing_self])


@STRATEGIES.register
class ProbCover(ClusterStrategy):
    """Repeatedly query the unlabeled image whose delta-ball holds the most uncovered images.

    Images in the ball of a labeled image start covered. Ties go at random; once
    everything is covered the rest of the budget is drawn at random.

    ``centres="kmeans"`` is the CB paper's ProbCover* (Tab. 11, App. D: "ProbCover (K-means) ...
    employ[s] K-means clustering in the given feature space, selecting samples within each
    cluster based on ... coverage"): K-means with K = n_labeled + budget (TypiClust's K, the
    same authors' code; K = budget with nothing labeled, the setting of Tab. 11), then the
    clusters holding the fewest labeled images, largest first, each give the unlabeled member
    whose ball holds the most uncovered images (ties at random), round robin until the budget
    is spent; coverage is updated after every pick as in the greedy. The default
    ``delta`` (L2 distance, 0.6 ~ cosine 0.82) suits unit-norm features; guided
    features are unit-norm too. Above ``EXACT_KNN_MAX`` (50 000) images the neighbour
    search is approximate (inverted file over ~sqrt(2N) K-means cells, each cell searched exactly among its
    own and its nearest cell).
    """

    @dataclasses.dataclass(frozen=True)
    class Options(FeatureOptions):
        delta: float = option(0.6, "ball radius, L2 distance of unit vectors")
        max_neighbors: int = option(256, "balls hold at most this many nearest images")
        centres: Literal["greedy", "kmeans"] = option(
            "greedy", "greedy: the ball covering most of the pool (ProbCover); kmeans: the best-covering "
                      "member of each K-means cluster in turn (ProbCover*, Tab. 11)")

        def check(self):
            super().check()
            if not 0 < self.delta <= 2:
                raise ConfigError(f"option delta={self.delta!r}: must be in (0, 2] (L2 distance of unit vectors)")
            if self.max_neighbors < 1:
                raise ConfigError(f"option max_neighbors={self.max_neighbors!r}: must be >= 1")

    name = "probcover"
    requires = FeatureRequires("image")

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        n = len(pool.labeled)
        seed = int(rng.integers(2**31)) if n > EXACT_KNN_MAX else 0  # small pools: rng stream unchanged
        x = pool_features(pool, self.options.features)
        sources, targets = ball_graph(x, self.options.delta, self.options.max_neighbors, seed=seed)
        ball_order = np.argsort(sources, kind="stable")
        ball_start = np.searchsorted(sources[ball_order], np.arange(n + 1))
        balls_of_order = np.argsort(targets, kind="stable")
        balls_of_start = np.searchsorted(targets[balls_of_order], np.arange(n + 1))

        def ball(i):
            return targets[ball_order[ball_start[i] : ball_start[i + 1]]]

        def balls_holding(points):
            return np.concatenate([sources[balls_of_order[balls_of_start[p] : balls_of_start[p + 1]]] for p in points])

        covered = np.zeros(n, dtype=bool)
        covered[targets[pool.labeled[sources]]] = True
        degree = np.bincount(sources[~covered[targets]], minlength=n)
        candidate = ~pool.labeled
        picks: list[int] = []

        def take(members: np.ndarray) -> None:
            """Query the member of ``members`` whose ball holds the most uncovered images (ties at random)."""
            pick = int(rng.choice(members[degree[members] == degree[members].max()]))
            newly = ball(pick)
            newly = newly[~covered[newly]]
            if len(newly):  # a ProbCover* pick may cover nothing new
                covered[newly] = True
                degree[:] -= np.bincount(balls_holding(newly), minlength=n)
            candidate[pick] = False
            picks.append(pick)

        if self.options.centres == "kmeans":
            centroids, assignment, _ = self.kmeans(x, int(pool.labeled.sum()) + budget, seed=int(rng.integers(2**31)))
            k = len(centroids)
            sizes = np.bincount(assignment, minlength=k)
            visit = np.lexsort((rng.permutation(k), -sizes, np.bincount(assignment[pool.labeled], minlength=k)))
            while len(picks) < budget:
                for c in visit:
                    members = np.flatnonzero(candidate & (assignment == c))
                    if len(members):
                        take(members)
                    if len(picks) == budget:
                        break
            return Selection(query=np.array(picks))
        while len(picks) < budget:
            if degree[candidate].max() == 0:
                rest = rng.choice(np.flatnonzero(candidate), size=budget - len(picks), replace=False)
                picks.extend(int(i) for i in rest)
                break
            take(np.flatnonzero(candidate))
        return Selection(query=np.array(picks))
