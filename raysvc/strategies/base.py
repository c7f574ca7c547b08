"""The query-strategy contract shared by every strategy.

A strategy is a pure, seeded function of arrays: it reads a :class:`Pool` (features,
probabilities, labeled mask, known labels) and returns a :class:`Selection`: the
indices to send to the oracle and, for selective querying, indices that receive a
free pseudo-label. Strategies do no I/O and keep no state between rounds; whatever
they need across rounds (the round number, the labels known so far) is in the pool.

Each strategy declares the pool fields it reads in ``requires`` so callers (the loop,
the Ray layer) compute only those before selecting, and its typed options as a nested
``Options`` dataclass (:mod:`raysvc.options`), validated before any work is done.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Literal

import numpy as np

from raysvc.errors import ConfigError, PoolExhaustedError, RaysvcBug
from raysvc.options import NoOptions, Options, option

POOL_FIELDS = frozenset({"features", "probs", "text_features", "embeddings", "true_labels"})

# A strategy whose paper's text and authors' code disagree takes ``variant``: "official"
# (the code that produced the published numbers, the default) or "paper" (the text).
Variant = Literal["official", "paper"]


@dataclasses.dataclass(frozen=True)
class Pool:
    """Everything a strategy may read about the pool in one round.

    features: (N, D) L2-normalised image embeddings from the VLM backbone (float32 or
        float16, as stored), or None.
    probs: (N, C) class probabilities of the current model (zero-shot before any
        training), or None.
    labeled: (N,) bool, True for images that already carry a label (oracle or pseudo).
    labels: (N,) int, the known label of labeled images, -1 elsewhere.
    text_features: (C, D) class text embeddings of the current model, the ones ``probs`` come
        from (zero-shot, L2-normalised, before any training), or None.
    embeddings: (N, E) penultimate features of the current model (student learners), or None.
        Set, it marks the ActiveKD setting: ``probs`` are then the student's heads combined.
    round: 1-based index of the round being selected for.
    n_classes: C; taken from ``probs`` (or ``text_features``) when not given.
    true_labels: (N,) int, every pool image's true label, or None: set only for a strategy
        whose options say ``oracle=true`` (the label-guided CB*, an upper bound).

    Only the fields a strategy ``requires`` need be set.
    """

    features: np.ndarray | None
    probs: np.ndarray | None
    labeled: np.ndarray
    labels: np.ndarray
    text_features: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    round: int = 1
    n_classes: int | None = None
    true_labels: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.labeled)
        if self.labeled.dtype != bool:
            raise RaysvcBug("pool.labeled must be a boolean mask")
        for name in ("features", "probs", "labels", "embeddings", "true_labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise RaysvcBug(f"pool.{name} has {len(value)} rows, expected {n}")
        if self.n_classes is None:
            known = self.probs if self.probs is not None else self.text_features
            if known is None:
                raise RaysvcBug("pool.n_classes is needed when neither probs nor text_features is given")
            object.__setattr__(self, "n_classes", int(known.shape[1] if known is self.probs else len(known)))
        if self.probs is not None and self.probs.shape[1] != self.n_classes:
            raise RaysvcBug(f"pool.probs has {self.probs.shape[1]} columns for {self.n_classes} classes")
        if self.text_features is not None and len(self.text_features) != self.n_classes:
            raise RaysvcBug("pool.text_features must have one row per class")
        if self.round < 1:
            raise RaysvcBug("pool.round is 1-based")

    @property
    def unlabeled_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.labeled)

    @property
    def labeled_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labeled)

    def labeled_counts(self) -> np.ndarray:
        """(C,) labeled images per class by their stored label (a pseudo-label counts as its
        class; a labeled image without a stored label, -1, counts nowhere)."""
        return np.bincount(self.labels[self.labeled & (self.labels >= 0)], minlength=self.n_classes)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of one selection: oracle queries and free pseudo-labels.

    ``query_scores`` / ``pseudo_scores``: the strategy's score behind each pick where it has
    one (entropy's entropy, a pseudo-label's confidence ``max_k p(k|x)``), stored with the
    run's selections; None where it has none.
    """

    query: np.ndarray
    pseudo: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.int64))
    pseudo_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.int64))
    query_scores: np.ndarray | None = None
    pseudo_scores: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "query", np.asarray(self.query, dtype=np.int64))
        object.__setattr__(self, "pseudo", np.asarray(self.pseudo, dtype=np.int64))
        object.__setattr__(self, "pseudo_labels", np.asarray(self.pseudo_labels, dtype=np.int64))
        if len(self.pseudo) != len(self.pseudo_labels):
            raise ValueError("one pseudo-label per pseudo-labeled index")
        for name, picks in (("query_scores", self.query), ("pseudo_scores", self.pseudo)):
            scores = getattr(self, name)
            if scores is not None:
                object.__setattr__(self, name, np.asarray(scores, dtype=np.float64))
                if len(getattr(self, name)) != len(picks):
                    raise ValueError(f"one {name[:-1].replace('_', ' ')} per pick")
        chosen = np.concatenate([self.query, self.pseudo])
        if len(np.unique(chosen)) != len(chosen):
            raise ValueError("a selection names an index twice")


@dataclasses.dataclass(frozen=True)
class ColdStartOptions(Options):
    """Options of the prompt-learning baselines (entropy, coreset, badge, pcb), which the
    official loop replaces by a uniform draw while nothing is labeled (APL @105a662
    ``trainers/alvlm.py:531-532``, round ``i == 0``; the PCB paper's Fig. 3 "cold start")."""

    cold_start: Literal["random", "prior"] = option(
        "random", "with nothing labeled: random (uniform picks, as the official loop) or prior "
                  "(score the zero-shot prior)")


def uniform_picks(pool: Pool, budget: int, rng: np.random.Generator) -> np.ndarray:
    """``budget`` distinct unlabeled indices drawn uniformly with ``rng``."""
    return rng.choice(pool.unlabeled_indices, size=budget, replace=False)


def cold_start_picks(options: ColdStartOptions, pool: Pool, budget: int, rng: np.random.Generator):
    """The uniform cold-start picks when ``cold_start="random"`` and nothing is labeled, else None."""
    if options.cold_start == "random" and not pool.labeled.any():
        return uniform_picks(pool, budget, rng)
    return None


class Strategy(abc.ABC):
    """Base of every query strategy.

    Subclasses set ``name`` (registry key), ``requires`` (the :data:`POOL_FIELDS` they
    need), ``optional`` (those they read when present) and, when they take options, a
    nested ``Options`` dataclass; they implement
    :meth:`_select`. :meth:`select` checks the pool and budget once for all of them.
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    # fields read when the learner provides them (students' own features), else ignored
    optional: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type[Options]] = NoOptions

    def __init__(self, options: Options | None = None):
        self.options = self.Options() if options is None else options
        if type(self.options) is not self.Options:
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(self.options).__name__}")

    @property
    def oracle(self) -> bool:
        """Whether the options let this strategy read every pool image's true label."""
        return bool(getattr(self.options, "oracle", False))

    def select(self, pool: Pool, budget: int, seed: int) -> Selection:
        """Choose ``budget`` unlabeled images to query (pseudo-labels come on top)."""
        if not isinstance(budget, (int, np.integer)) or budget < 1:
            raise ConfigError(f"budget must be a positive integer, got {budget!r}")
        n_unlabeled = int((~pool.labeled).sum())
        if budget > n_unlabeled:
            raise PoolExhaustedError(
                f"budget {budget} exceeds the {n_unlabeled} unlabeled images left in the pool"
            )
        for field in self.requires:
            if getattr(pool, field) is None:
                raise RaysvcBug(f"strategy {self.name!r} needs pool.{field}")
        selection = self._select(pool, int(budget), np.random.default_rng(seed))
        if len(selection.query) > budget:
            raise RaysvcBug(f"{self.name} queried {len(selection.query)} > budget {budget}")
        touched = np.concatenate([selection.query, selection.pseudo])
        if pool.labeled[touched].any():
            raise RaysvcBug(f"{self.name} selected an already labeled image")
        return selection

    @abc.abstractmethod
    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        """Return the selection; ``budget`` is valid and the pool has what ``requires`` names."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())
        return f"{type(self).__name__}({params})"


class ClusterStrategy(Strategy):
    """A strategy that clusters the pool (cb, cbsq, typiclust, dropquery, probcover's ProbCover*).

    Its K-means is the method :meth:`kmeans`: a side-by-side check against the authors'
    code overrides it (on an instance or a subclass), since their scikit-learn
    ``KMeans(random_state=42)`` (whose ``n_init`` default depends on the installed
    version) cannot be reproduced, while everything that follows the clustering can.
    The inverted-file cells of the approximate neighbour search (``_faiss.knn_blocks``,
    which ProbCover uses on large pools) are an index, not a selection's clustering: they
    keep their own K-means.
    """

    def kmeans(self, x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(centroids (K, D), assignment (N,), inertia)`` of faiss K-means; ``k`` above the
        number of points is clipped to it and a cluster may come back empty."""
        from raysvc.strategies._faiss import kmeans

        return kmeans(x, k, seed=seed)
