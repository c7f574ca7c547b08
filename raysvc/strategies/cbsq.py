"""Cluster-balanced selection with selective querying (Kim et al. 2024, Sec. 4.2, eq. 11-12).

The round's ``budget`` picks come from cluster-balanced selection (:mod:`raysvc.strategies.cb`).
A pick the model is already sure of gets its predicted class as a free pseudo-label
instead of an oracle query, so the labeled set grows by ``budget`` while the oracle answers
fewer. Sure means ``max_k p(k|x) >= tau[argmax p(.|x)]`` (APL cbsq.py:168), with the
class threshold tau_c set by the labeled images of class c (by their stored label, so an
earlier pseudo-label counts as its class):

* ``official`` (default), APL @105a662 ``cbsq.py:104-108``: tau_c = mean over them of the
  model's max probability ``max_k p(k|x)``; K = 4C + n_labeled (cbsq.py:115-116).
* ``paper``: tau_c = mean over them of ``p(c|x)`` (eq. 11); K = round x budget.

A class with no labeled image has tau = +inf (official: 99) and is never pseudo-labeled.
With nothing labeled there is no threshold: the official loop runs plain CB with K = C
then (alvlm.py:520-526; CBSQ's own ``idx == 0`` branch is dead code), and so does this
strategy, in either variant. After a k-shot start selective querying runs from round 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import option
from raysvc.strategies._guided import FeatureRequires
from raysvc.strategies.base import Pool, Selection, Variant
from raysvc.strategies.cb import ClusterBalanced
from raysvc.strategies.registry import STRATEGIES


def class_thresholds(
    probs: np.ndarray, labels: np.ndarray, labeled: np.ndarray, n_classes: int, variant: str = "official"
) -> np.ndarray:
    """(C,) float64 tau_c over the labeled images whose stored label is c: the mean of
    ``max_k p(k|x)`` (``official``, APL cbsq.py:104-108) or of ``p(c|x)`` (``paper``, eq. 11);
    +inf for a class with none."""
    known = np.flatnonzero(labeled & (labels >= 0))
    cls = labels[known]
    rows = np.asarray(probs[known], dtype=np.float64)
    score = rows.max(axis=1) if variant == "official" else rows[np.arange(len(known)), cls]
    sums = np.bincount(cls, weights=score, minlength=n_classes)
    counts = np.bincount(cls, minlength=n_classes)
    tau = np.full(n_classes, np.inf)
    np.divide(sums, counts, out=tau, where=counts > 0)
    return tau


# the option of every strategy that queries selectively (cbsq, sq:<strategy>)
MAX_PSEUDO_HELP = "at most this many pseudo-labels per round (None: no cap)"


def check_max_pseudo(max_pseudo: int | None) -> None:
    if max_pseudo is not None and max_pseudo < 0:
        raise ConfigError(f"option max_pseudo={max_pseudo!r}: must be >= 0")


def selective_querying(picks: np.ndarray, pool: Pool, variant: str = "official", max_pseudo: int | None = None,
                       scores: np.ndarray | None = None) -> Selection:
    """The :class:`Selection` of ``picks`` (in pick order) after selective querying (eq. 12, APL
    cbsq.py:165-175): a pick with ``max_k p(k|x) >= tau[argmax p(.|x)]`` (:func:`class_thresholds`
    of ``variant``) gets its predicted class as a pseudo-label, at most ``max_pseudo`` of them, the
    first confident ones in pick order; the others are queried. Nothing labeled: all queried.
    A pseudo-label's score is that confidence ``max_k p(k|x)``; a query keeps its pick's entry of
    ``scores`` (the base strategy's, where it has them)."""
    if not pool.labeled.any():
        return Selection(query=picks, query_scores=scores)
    tau = class_thresholds(pool.probs, pool.labels, pool.labeled, pool.n_classes, variant)
    probs = np.asarray(pool.probs[picks], dtype=np.float64)
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    confident = confidence >= tau[predicted]
    cap = len(picks) if max_pseudo is None else max_pseudo
    pseudo = confident & (np.cumsum(confident) <= cap)
    return Selection(query=picks[~pseudo], pseudo=picks[pseudo], pseudo_labels=predicted[pseudo],
                     query_scores=None if scores is None else np.asarray(scores)[~pseudo],
                     pseudo_scores=confidence[pseudo])


@STRATEGIES.register
class ClusterBalancedSelectiveQuery(ClusterBalanced):
    """Cluster-balanced picks; confident ones are pseudo-labeled, the others queried.

    At most ``max_pseudo`` (default: no cap, as the official code; a raysvc extension) of
    the ``budget`` picks are pseudo-labeled, the first confident ones in pick order.
    """

    @dataclasses.dataclass(frozen=True)
    class Options(ClusterBalanced.Options):
        variant: Variant = option(
            "official", "official: tau_c = mean max-probability, K = 4C + n_labeled (C with nothing labeled), "
            "unit-norm guided features; paper: tau_c = mean p(c|x) (eq. 11), K = round x budget, eq. 7 unnormalised")
        max_pseudo: int | None = option(None, MAX_PSEUDO_HELP)

        def check(self):
            super().check()
            check_max_pseudo(self.max_pseudo)

    name = "cbsq"
    requires = FeatureRequires("guided", extra={"probs"})
    official_class_factor = 4

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return selective_querying(self.picks(pool, budget, rng), pool, self.options.variant, self.options.max_pseudo)
