"""The active-learning loop (stage four of five): select, apply, train, record, each round.

The same loop runs in a test, a CLI run, a Tune trial and a job: what differs is where
training runs (``runner``) and what happens after each round (``on_round``: print,
report to Tune, checkpoint). Each round is three named steps around the learner's fit:
:func:`select` (the strategy picks from a pool holding only the fields it reads),
:func:`apply` (the oracle's labels and the pseudo-labels go into the state, and what was
selected into the run's selections, :func:`selection_rows`) and :func:`record` (the
round's row).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from raysvc.errors import RaysvcBug
from raysvc.experiment import Experiment
from raysvc.learners import Learner, LocalRunner, TrainRunner
from raysvc.records import SCHEMA_VERSION
from raysvc.spec import RunPlan
from raysvc.strategies import Pool, Selection, Strategy


@dataclasses.dataclass
class LoopState:
    """Everything needed to resume after a completed round.

    labeled / pseudo: pool masks; labels: known label per pool position (-1 unknown);
    rows: the records so far; selections: what each round selected (:func:`selection_rows`).
    """

    completed: int
    labeled: np.ndarray
    labels: np.ndarray
    pseudo: np.ndarray
    n_queried: int
    rows: list[dict]
    learner_state: dict[str, np.ndarray]
    selections: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def fresh(cls, n_pool: int, first_round: int = 1) -> LoopState:
        """Nothing labeled; ``first_round`` is 0 when a k-shot start precedes round 1."""
        return cls(first_round - 1, np.zeros(n_pool, bool), np.full(n_pool, -1, np.int64), np.zeros(n_pool, bool),
                   0, [], {})

    @classmethod
    def start(cls, plan: RunPlan, experiment: Experiment) -> LoopState:
        """The state before the run's :func:`first_round`."""
        return cls.fresh(len(experiment.pool), first_round(plan))


def first_round(plan: RunPlan) -> int:
    """0 when the run starts with k labels per class (round 0, the k-shot start), else 1."""
    return 0 if plan.spec.initial_per_class else 1


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def pool_rows(features: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``features[pool]``, as a view when the pool is one contiguous block of rows (no copy of a
    large pool), else a copy in the stored dtype."""
    if len(pool) and pool[-1] - pool[0] + 1 == len(pool) and np.all(np.diff(pool) == 1):
        return features[pool[0] : pool[-1] + 1]
    return features[pool]


def make_pool(fields: frozenset[str], experiment: Experiment, learner: Learner, pool_features, state: LoopState,
              round_: int, oracle: bool = False) -> Pool:
    """The pool for one selection with only ``fields`` computed (a strategy's requires and optional).

    ``probs`` and ``text_features`` both come from the learner's current model: the class
    text embeddings its logits use (:meth:`~raysvc.learners.base.Learner.class_text_features`:
    the learned prompts once a prompt learner has been fitted, the zero-shot ones before and
    for students), so the class-guided features are eq. 6's ``sum_c p(c|x; t_{r-1}) T(t_{r-1, c})``.
    The pool's true labels go only to a strategy whose options say ``oracle=true``.
    """
    if "true_labels" in fields and not oracle:
        raise RaysvcBug("the pool's true labels go only to a strategy whose options say oracle=true")
    wanted = {
        "features": lambda: pool_features,
        "probs": learner.pool_probs,
        "text_features": learner.class_text_features,
        "embeddings": learner.pool_embeddings,
        "true_labels": lambda: experiment.pool_labels,
    }
    values = {name: make() if name in fields else None for name, make in wanted.items()}
    return Pool(labeled=state.labeled, labels=state.labels, round=round_, n_classes=experiment.dataset.n_classes,
                **values)


def select(plan: RunPlan, strategy: Strategy, experiment: Experiment, learner: Learner, pool_features,
           state: LoopState, round_: int) -> Selection:
    """Round 0 (a k-shot start): the experiment's ``initial_per_class`` random images of every
    class; later rounds: the strategy's picks from a pool holding what it reads."""
    spec = plan.spec
    if round_ == 0:
        if experiment.initial is None:
            raise RaysvcBug("round 0 needs the experiment's k-shot start: assemble the experiment from this plan")
        return Selection(query=experiment.initial)
    fields = frozenset(strategy.requires) | strategy.optional
    pool = make_pool(fields, experiment, learner, pool_features, state, round_, oracle=strategy.oracle)
    selection = strategy.select(pool, experiment.budget, seed=spec.seed * 1000 + round_)
    if len(selection.query) + len(selection.pseudo) == 0:
        raise RaysvcBug(f"strategy {spec.strategy!r} selected nothing in round {round_}")
    return selection


def apply(selection: Selection, state: LoopState, true_labels: np.ndarray) -> None:
    """The oracle labels the queries; the pseudo-labels go in as the strategy gave them."""
    state.labeled[selection.query] = True
    state.labels[selection.query] = true_labels[selection.query]
    state.labeled[selection.pseudo] = True
    state.pseudo[selection.pseudo] = True
    state.labels[selection.pseudo] = selection.pseudo_labels
    state.n_queried += len(selection.query)


def selection_rows(round_: int, selection: Selection, experiment: Experiment) -> dict[str, list]:
    """What round ``round_`` selected, as columns of :data:`raysvc.records.SELECTION_SCHEMA`:
    the queries (labelled by the oracle), then the pseudo-labels."""
    positions = np.concatenate([selection.query, selection.pseudo])
    n_query = len(selection.query)
    true_labels = experiment.pool_labels[positions]
    nan = np.full(n_query, np.nan), np.full(len(selection.pseudo), np.nan)
    scores = np.concatenate([selection.query_scores if selection.query_scores is not None else nan[0],
                             selection.pseudo_scores if selection.pseudo_scores is not None else nan[1]])
    return {
        "round": [round_] * len(positions),
        "position": positions.tolist(),
        "item": [experiment.dataset.item(i) for i in experiment.pool[positions]],
        "kind": ["query"] * n_query + ["pseudo"] * len(selection.pseudo),
        "label": np.concatenate([true_labels[:n_query], selection.pseudo_labels]).tolist(),
        "true_label": true_labels.tolist(),
        "score": scores.tolist(),
    }


def run_fields(plan: RunPlan, experiment: Experiment, learner: Learner) -> dict:
    """The columns every row of the run carries (records.RUN_COLUMNS)."""
    spec = plan.spec
    return {
        "run_id": plan.run_id, "dataset": experiment.dataset.name, "strategy": spec.strategy,
        "learner": spec.learner, "backbone": spec.backbone, "student": learner.student, "teacher": learner.teacher,
        "seed": spec.seed, "budget": experiment.budget, "pool_size": len(experiment.pool),
        "n_classes": experiment.dataset.n_classes, "schema_version": SCHEMA_VERSION,
    }


def base_to_novel(test_acc: float, experiment: Experiment, learner: Learner) -> dict[str, float]:
    """``test_acc_base`` (the run's test accuracy, on the base classes), ``test_acc_novel`` (on the
    held-out classes, prompted with the learned context) and their harmonic mean ``test_acc_hm``
    = 2 b n / (b + n), CoOp's and the CB paper's HM (Tab. 3); NaN without base-to-novel."""
    novel = experiment.novel
    if novel is None:
        return dict.fromkeys(("test_acc_base", "test_acc_novel", "test_acc_hm"), float("nan"))
    acc = _accuracy(learner.novel_class_probs(novel.test, novel.classnames, novel.text_features), novel.test_labels)
    hm = 2 * test_acc * acc / (test_acc + acc) if test_acc + acc > 0 else 0.0
    return {"test_acc_base": test_acc, "test_acc_novel": acc, "test_acc_hm": hm}


def record(fields: dict, round_: int, state: LoopState, experiment: Experiment, learner: Learner,
           zeroshot_acc: float, select_seconds: float, train_seconds: float, encode_seconds: float) -> dict:
    """The round's row: the labeled set built so far, the learner's test accuracy, the seconds."""
    true_labels = experiment.pool_labels
    n_pseudo = int(state.pseudo.sum())
    pseudo_acc = float((state.labels[state.pseudo] == true_labels[state.pseudo]).mean()) if n_pseudo else float("nan")
    test_acc = _accuracy(learner.predict_proba("test"), experiment.test_labels)
    return dict(
        fields, round=round_, n_labeled=int(state.labeled.sum()), n_queried=state.n_queried, n_pseudo=n_pseudo,
        pseudo_acc=pseudo_acc, test_acc=test_acc, zeroshot_acc=zeroshot_acc, teacher_acc=learner.teacher_accuracy(),
        select_seconds=select_seconds, train_seconds=train_seconds, encode_seconds=encode_seconds,
        **base_to_novel(test_acc, experiment, learner),
    )


def run_loop(
    plan: RunPlan,
    experiment: Experiment,
    runner: TrainRunner | None = None,
    state: LoopState | None = None,
    on_round: Callable[[dict, LoopState], None] | None = None,
    on_probs: Callable[[int, np.ndarray], None] | None = None,
) -> list[dict]:
    """Run the rounds not yet in ``state`` (a fresh one when None; the caller's is filled in);
    returns one record per round. ``on_probs(round, probs)`` is given the pool's class
    probabilities each selection saw (the model trained in the round before)."""
    runner = runner or LocalRunner()
    spec = plan.spec
    strategy: Strategy = plan.strategy.cls(plan.strategy.options)
    learner: Learner = plan.learner.cls(experiment, plan.learner.options)
    first = first_round(plan)
    state = state or LoopState.start(plan, experiment)
    if state.learner_state:
        learner.set_state(state.learner_state)
    pool_features = pool_rows(experiment.encoded.image_features, experiment.pool)
    zeroshot_acc = _accuracy(experiment.encoded.zeroshot_probs(experiment.test), experiment.test_labels)
    fields = run_fields(plan, experiment, learner)
    for round_ in range(state.completed + 1, spec.rounds + 1):
        if on_probs is not None:
            on_probs(round_, learner.pool_probs())
        start = time.perf_counter()
        selection = select(plan, strategy, experiment, learner, pool_features, state, round_)
        select_seconds = time.perf_counter() - start
        apply(selection, state, experiment.pool_labels)
        state.selections.append(selection_rows(round_, selection, experiment))

        start = time.perf_counter()
        positions = np.flatnonzero(state.labeled)
        learner.fit(positions, state.labels[positions], seed=spec.seed * 1000 + round_, runner=runner)
        train_seconds = time.perf_counter() - start

        encode_seconds = experiment.encoded.encode_seconds if round_ == first else 0.0
        row = record(fields, round_, state, experiment, learner, zeroshot_acc, select_seconds, train_seconds,
                     encode_seconds)
        state.rows.append(row)
        state.completed = round_
        state.learner_state = learner.get_state()
        if on_round is not None:
            on_round(row, state)
    return state.rows
