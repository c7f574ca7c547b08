"""The learner contract: fit on the labeled pool each round, predict pool and test.

A learner turns one round's labeled set into a payload and a pure training function;
a :class:`TrainRunner` executes that function, in this process (:class:`LocalRunner`)
or on Ray Train workers, so the loop is the same in a test, a Tune trial and a job.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from raysvc.errors import RaysvcBug
from raysvc.options import NoOptions, Options

if TYPE_CHECKING:
    from raysvc.experiment import Experiment

TrainFn = Callable[[dict[str, Any]], dict[str, Any]]


class TrainRunner(Protocol):
    """Where a learner's training function runs (:class:`LocalRunner`, or Ray Train's
    :class:`~raysvc.service.train.RayTrainRunner`)."""

    def run(self, fn: TrainFn, payload: dict[str, Any], data_parallel: bool = False) -> dict[str, Any]:
        """Run ``fn(payload)`` somewhere and return its result. ``data_parallel``: ``fn`` shares
        its work over a worker group (each worker a shard of every batch); otherwise it runs on
        one worker, however many the runner has."""

    def placement(self, learner: type[Learner]) -> dict[str, Any]:
        """Where this runner trains ``learner``'s rounds, for the run's manifest."""

    def close(self) -> None:
        """Release what the runner holds (actors, workers); the run is over."""


class LocalRunner:
    """Train in the calling process."""

    def run(self, fn: TrainFn, payload: dict[str, Any], data_parallel: bool = False) -> dict[str, Any]:
        return fn(payload)

    def placement(self, learner: type[Learner]) -> dict[str, Any]:
        return {"runner": "local", "workers": 1}

    def close(self) -> None:
        pass


class Learner(abc.ABC):
    """Trained anew every round on the labeled pool positions and their labels.

    Subclasses set ``name`` (registry key) and a nested ``Options`` dataclass.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = NoOptions
    # whether its training function shares a round over a Ray Train worker group
    data_parallel: ClassVar[bool] = False
    # what of its training runs on one worker or device whatever the runner has, and why
    # (the manifest says so when more workers were asked for)
    one_worker: ClassVar[str] = ""

    def __init__(self, experiment: Experiment, options: Options | None = None):
        self.experiment = experiment
        self.options = self.Options() if options is None else options

    @abc.abstractmethod
    def fit(self, positions: np.ndarray, labels: np.ndarray, seed: int, runner: TrainRunner) -> dict[str, Any]:
        """Train on the pool images at ``positions`` (indices into the pool) with ``labels``
        (oracle or pseudo); returns what the fit measured (seconds per step, losses), which
        benchmarks read."""

    @abc.abstractmethod
    def predict_proba(self, split: str) -> np.ndarray:
        """Class probabilities on "pool" or "test"; before any fit, the zero-shot prior."""

    @abc.abstractmethod
    def get_state(self) -> dict[str, np.ndarray]:
        """What :meth:`set_state` needs to predict as now (checkpoints of completed rounds)."""

    @abc.abstractmethod
    def set_state(self, state: dict[str, np.ndarray]) -> None: ...

    def pool_probs(self):
        """The pool's class probabilities for a selection: :meth:`predict_proba` of "pool", or a
        row-indexable stand-in computed where read (:class:`~raysvc.lazyrows.LazyRows`) when the
        whole array would outweigh the pool."""
        return self.predict_proba("pool")

    def class_text_features(self) -> np.ndarray:
        """(C, D) the class text embeddings the current model scores images with, ``logits =
        scale * f . T^T``: the t_{r-1} of the class-guided features (Kim et al. 2024, eq. 6).
        Here the zero-shot prompts' embeddings, which learners without text embeddings (the
        students) keep, and which a prompt learner uses until its first fit."""
        return self.experiment.encoded.text_features

    @classmethod
    def transfers_to_new_classes(cls, options: Options) -> bool:
        """Whether what it learns applies to class names it was not trained on (base-to-novel)."""
        return False

    def novel_class_probs(self, rows: np.ndarray, classnames: tuple[str, ...], text_features: np.ndarray) -> np.ndarray:
        """Class probabilities of the images at dataset indices ``rows`` among classes it was not
        trained on (``classnames``, zero-shot ``text_features``); only where
        :meth:`transfers_to_new_classes`."""
        raise RaysvcBug(f"learner {self.name!r} cannot score classes it was not trained on")

    def pool_embeddings(self) -> np.ndarray | None:
        """The learner's own penultimate features of the pool, if it has any."""
        return None

    def teacher_accuracy(self) -> float:
        """Test accuracy of the teacher being distilled; NaN for learners without one."""
        return float("nan")

    @property
    def student(self) -> str:
        """The network trained each round, for learners that train one ("" otherwise)."""
        return ""

    @property
    def teacher(self) -> str:
        """The backbone distilled, for learners that distil one ("" otherwise)."""
        return ""

    def rows(self, split: str) -> np.ndarray:
        return self.experiment.pool if split == "pool" else self.experiment.test
