"""DropQuery (Gupta et al. 2023): images whose prediction is fragile under feature dropout, spread by K-means."""

from __future__ import annotations

import dataclasses

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import option
from raysvc.strategies._faiss import as_f32
from raysvc.strategies._guided import FeatureOptions, FeatureRequires, pool_features
from raysvc.strategies.base import ClusterStrategy, Pool, Selection
from raysvc.strategies.cb import cluster_balanced_picks
from raysvc.strategies.registry import STRATEGIES

_CHUNK = 4096


def dropout_flips(
    features: np.ndarray,
    text_features: np.ndarray,
    n_dropouts: int,
    rate: float,
    rng: np.random.Generator,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) how many of ``n_dropouts`` feature dropouts change the prediction ``argmax f . t_c``
    (of ``features[rows]`` when ``rows`` is given, read chunk by chunk).

    Rescaling the kept features by 1 / (1 - rate) would not change an argmax, so it is skipped.
    """
    text_features = as_f32(text_features)
    n = len(features) if rows is None else len(rows)
    flips = np.zeros(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        sel = slice(start, start + _CHUNK) if rows is None else rows[start : start + _CHUNK]
        chunk = as_f32(features[sel])
        predicted = (chunk @ text_features.T).argmax(axis=1)
        for _ in range(n_dropouts):
            kept = chunk * (rng.random(chunk.shape, dtype=np.float32) >= rate)
            flips[start : start + _CHUNK] += (kept @ text_features.T).argmax(axis=1) != predicted
    return flips


@STRATEGIES.register
class DropQuery(ClusterStrategy):
    """Candidates: unlabeled images whose prediction by the class text embeddings (the current
    model's: the learned prompts once trained, zero-shot before) changes under at least
    half of ``n_dropouts`` dropouts of rate ``rate``. K-means (K = budget) on the
    candidates' ``features`` (image, text, guided or label: :mod:`~raysvc.strategies._guided`);
    query the candidate nearest each centroid (cosine; on unit-norm features the same as
    Euclidean), larger clusters
    first should K-means leave one empty (:func:`~raysvc.strategies.cb.cluster_balanced_picks`
    with nothing labeled). Too few candidates: all of them, then random unlabeled images.
    """

    @dataclasses.dataclass(frozen=True)
    class Options(FeatureOptions):
        n_dropouts: int = option(3, "feature dropouts per image")
        rate: float = option(0.75, "dropout rate")

        def check(self):
            super().check()
            if self.n_dropouts < 1:
                raise ConfigError(f"option n_dropouts={self.n_dropouts!r}: must be >= 1")
            if not 0 < self.rate < 1:
                raise ConfigError(f"option rate={self.rate!r}: must be in (0, 1)")

    name = "dropquery"
    requires = FeatureRequires("image", extra={"features", "text_features"})  # the dropouts read the image features

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        opts = self.options
        unlabeled = pool.unlabeled_indices
        flips = dropout_flips(pool.features, pool.text_features, opts.n_dropouts, opts.rate, rng, rows=unlabeled)
        candidates = unlabeled[2 * flips >= opts.n_dropouts]
        if len(candidates) <= budget:
            rest = np.setdiff1d(unlabeled, candidates)
            fill = rng.choice(rest, size=budget - len(candidates), replace=False)
            return Selection(query=np.concatenate([candidates, fill]))
        x = pool_features(pool, opts.features, rows=candidates)
        centroids, assignment, _ = self.kmeans(x, budget, seed=int(rng.integers(2**31)))
        nearest = cluster_balanced_picks(x, centroids, np.asarray(assignment, dtype=np.int64),
                                         np.zeros(len(candidates), dtype=bool), budget)
        return Selection(query=candidates[nearest])
