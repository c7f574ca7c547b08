"""Cluster-balanced selection with selective querying (Kim et al. 2024, eq. 11-12).

The round's ``budget`` candidates come from cluster-balanced selection. A candidate
the model is already sure of gets its predicted class as a free pseudo-label instead
of an oracle query, so the labeled set grows by ``budget`` while the oracle answers
fewer: sure means its confidence reaches the class threshold tau_c, the confidence of
that class's labeled images (the mean of p(c|x) over labeled images of class c).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import option
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

    At most ``max_pseudo`` (default: no cap) of the ``budget`` candidates are
    pseudo-labeled. Round 1 queries everything: no labeled image sets a threshold yet.
    ``k_rule="official"`` uses K = 4C + n_labeled, as in the authors' code.
    """

    @dataclasses.dataclass(frozen=True)
    class Options(ClusterBalanced.Options):
        max_pseudo: int | None = option(None, "at most this many pseudo-labels per round (None: no cap)")

        def check(self):
            if self.max_pseudo is not None and self.max_pseudo < 0:
                raise ConfigError(f"option max_pseudo={self.max_pseudo!r}: must be >= 0")

    name = "cbsq"
    requires = FeatureRequires("guided", extra={"probs"})
    official_class_factor = 4

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        order = self.candidate_order(pool, budget, rng)[:budget]
        if pool.round == 1:
            return Selection(query=order)
        tau = class_thresholds(pool.probs, pool.labels, pool.labeled, pool.n_classes)
        probs = pool.probs[order]
        predicted = probs.argmax(axis=1)
        # a class with no labeled image has no threshold and is never pseudo-labeled
        confident = probs.max(axis=1) >= np.nan_to_num(tau, nan=np.inf)[predicted]
        cap = budget if self.options.max_pseudo is None else self.options.max_pseudo
        pseudo = confident & (np.cumsum(confident) <= cap)
        return Selection(query=order[~pseudo], pseudo=order[pseudo], pseudo_labels=predicted[pseudo])
