"""Cluster-balanced selection with selective querying (Kim et al. 2024, eq. 11-12).

Candidates come in cluster-balanced order. A candidate the model is already sure
of gets its predicted class as a free pseudo-label instead of an oracle query:
sure means its confidence reaches the class threshold tau_c, the confidence of
that class's labeled images (the mean of p(c|x) over labeled images of class c).
"""

from __future__ import annotations

import numpy as np

from raysvc.errors import ConfigError
from raysvc.strategies._guided import FeatureRequires
from raysvc.strategies.base import Pool, Selection
from raysvc.strategies.cb import ClusterBalanced
from raysvc.strategies.registry import register


def class_thresholds(probs: np.ndarray, labels: np.ndarray, labeled: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) tau_c = mean of p(c|x) over labeled images whose label is c; NaN for a class with none."""
    known = np.flatnonzero(labeled & (labels >= 0))
    cls = labels[known]
    sums = np.bincount(cls, weights=probs[known, cls], minlength=n_classes)
    counts = np.bincount(cls, minlength=n_classes)
    tau = np.full(n_classes, np.nan)
    np.divide(sums, counts, out=tau, where=counts > 0)
    return tau


@register
class ClusterBalancedSelectiveQuery(ClusterBalanced):
    """Cluster-balanced candidates; confident ones are pseudo-labeled, the others queried.

    ``budget`` counts oracle queries only; at most ``max_pseudo`` (default: the
    budget) pseudo-labels come on top, so a confident model cannot label the whole
    pool in one round. Round 1 queries everything: no labeled image sets a threshold
    yet. ``k_rule="official"`` uses K = 4C + n_labeled, as in the authors' code.
    """

    name = "cbsq"
    requires = FeatureRequires("guided", extra={"probs"})
    official_class_factor = 4

    def __init__(self, features: str = "guided", k_rule: str = "paper", max_pseudo: int | None = None):
        super().__init__(features=features, k_rule=k_rule)
        if max_pseudo is not None and (not isinstance(max_pseudo, (int, np.integer)) or max_pseudo < 0):
            raise ConfigError(f"max_pseudo must be a non-negative integer or None, got {max_pseudo!r}")
        self.max_pseudo = max_pseudo

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        order = self.candidate_order(pool, budget, rng)
        if pool.round == 1:
            return Selection(query=order[:budget])
        tau = class_thresholds(pool.probs, pool.labels, pool.labeled, pool.n_classes)
        probs = pool.probs[order]
        predicted = probs.argmax(axis=1)
        # a class with no labeled image has no threshold and is never pseudo-labeled
        confident = probs.max(axis=1) >= np.nan_to_num(tau, nan=np.inf)[predicted]
        cap = budget if self.max_pseudo is None else self.max_pseudo
        pseudo = confident & (np.cumsum(confident) <= cap)
        queries = np.flatnonzero(~pseudo)
        # walk the candidates until the budget-th query; the pool may run out first
        end = queries[budget - 1] + 1 if len(queries) >= budget else len(order)
        pseudo[end:] = False
        return Selection(
            query=order[queries[:budget]],
            pseudo=order[pseudo],
            pseudo_labels=predicted[pseudo],
        )
