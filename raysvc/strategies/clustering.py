"""The one K-means that every cluster-based selector calls: cb, cbsq, typiclust, dropquery.

Selectors call ``clustering.kmeans(...)`` through this module at call time, never a name
imported from it, so a test or a side-by-side check against the authors' code can hold
the clustering fixed (``monkeypatch.setattr(clustering, "kmeans", fixed)``) and compare
everything that follows it: the authors' clustering (scikit-learn ``KMeans(random_state=42)``,
whose ``n_init`` default depends on the installed version) cannot be reproduced anyway.

Contract: ``kmeans(x, k, seed) -> (centroids (K, D), assignment (N,), inertia)``; ``k``
above the number of points is clipped to it and a cluster may come back empty.

The inverted-file cells of the approximate neighbour search (``_faiss.knn_blocks``, which
ProbCover uses on large pools) are an index, not a selection's clustering: they keep
their own K-means, so a fixed clustering injected for a selector never reaches them.
"""

from __future__ import annotations

from raysvc.strategies import _faiss

kmeans = _faiss.kmeans
