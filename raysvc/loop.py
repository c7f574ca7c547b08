"""The active-learning loop: select, ask the oracle, train, evaluate, record.

The same loop runs in a test, a CLI run, a Tune trial and a job: what differs is
where features come from (``encode``), where training runs (``runner``) and what
happens after each round (``on_round``: print, report to Tune, checkpoint).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from raysvc.backbones import BackboneRef
from raysvc.spec import RunSpec
from raysvc.datasets import ImageDataset, load_dataset, per_class_subset, pool_test_split
from raysvc.errors import PoolExhaustedError, RaysvcBug
from raysvc.features import EncodedDataset, FeatureStore, centred
from raysvc.learners import Experiment, Learner, LocalRunner, TrainRunner, make_learner
from raysvc.prompts import with_prompts
from raysvc.records import SCHEMA_VERSION
from raysvc.strategies import Pool, Selection, make_strategy

# 28-pixel images gain nothing from 224-pixel inputs (measured: same zero-shot accuracy
# on Animal-MNIST at 112) and cost seven times the encoding
SMALL_IMAGE_SIDE = 112

Encode = Callable[[ImageDataset, BackboneRef], EncodedDataset]
LoadDataset = Callable[..., ImageDataset]


def default_image_size(config: RunSpec, dataset: ImageDataset) -> int | None:
    if config.image_size is not None:
        return config.image_size
    small = dataset.native_size is not None and dataset.native_size < 64
    return SMALL_IMAGE_SIDE if small and config.backbone.startswith("conse-") else None


def store_encoder(store: FeatureStore) -> Encode:
    def encode(dataset: ImageDataset, backbone: BackboneRef) -> EncodedDataset:
        return store.encode(dataset, backbone.load(), backbone)

    return encode


def load_data(config: RunSpec, load: LoadDataset = load_dataset) -> ImageDataset:
    """The run's images (subsampled with ``per_class``) with the run's prompts."""
    dataset = load(config.dataset, config.split_file, config.dataset_params)
    if config.per_class is not None:
        dataset = per_class_subset(dataset, config.per_class, config.split_seed)
    return with_prompts(dataset, config.prompt_template, config.class_descriptions)


def check_budget(config: RunSpec, n_pool: int, n_classes: int) -> int:
    """The per-round budget; refused when the start and the rounds would need more images than the pool has."""
    budget = config.budget or n_classes
    needed = budget * config.rounds + config.initial_per_class * n_classes
    if needed > n_pool:
        start = f" after a {config.initial_per_class}-shot start" if config.initial_per_class else ""
        raise PoolExhaustedError(
            f"{config.rounds} rounds of budget {budget}{start} need {needed} images; the pool has {n_pool}"
        )
    return budget


def initial_labeled(pool_labels: np.ndarray, classnames: Sequence[str], per_class: int, seed: int) -> np.ndarray:
    """Sorted pool positions of ``per_class`` random images of every class (a k-shot start)."""
    rng = np.random.default_rng([seed, per_class])
    picks = []
    for c, name in enumerate(classnames):
        members = np.flatnonzero(pool_labels == c)
        if len(members) < per_class:
            raise PoolExhaustedError(
                f"class {name!r} has {len(members)} pool images, fewer than initial_per_class={per_class}"
            )
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def load_experiment(config: RunSpec, encode: Encode, load: LoadDataset = load_dataset) -> Experiment:
    """The dataset, its split and its embeddings; the budget is checked before any encoding.

    ``load`` reads a dataset by name or path; a long-lived worker passes a cached one.
    """
    dataset = load_data(config, load)
    pool, test = pool_test_split(dataset, config.test_fraction, config.split_seed)
    check_budget(config, len(pool), dataset.n_classes)
    backbone = BackboneRef.of(config.backbone, default_image_size(config, dataset), config.backbone_params)
    encoded = encode(dataset, backbone)
    if config.feature_centering == "pool":
        encoded = centred(encoded, pool)
    return Experiment(dataset, encoded, backbone, pool, test)


@dataclasses.dataclass
class LoopState:
    """Everything needed to resume after a completed round.

    labeled / pseudo: pool masks; labels: known label per pool position (-1 unknown).
    """

    completed: int
    labeled: np.ndarray
    labels: np.ndarray
    pseudo: np.ndarray
    n_queried: int
    rows: list[dict]
    learner_state: dict[str, np.ndarray]

    @classmethod
    def fresh(cls, n_pool: int, first_round: int = 1) -> LoopState:
        """Nothing labeled; ``first_round`` is 0 when a k-shot start precedes round 1."""
        return cls(first_round - 1, np.zeros(n_pool, bool), np.full(n_pool, -1, np.int64), np.zeros(n_pool, bool),
                   0, [], {})


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def pool_rows(features: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``features[pool]``, as a view when the pool is one contiguous block of rows (no copy of a
    large pool), else a copy in the stored dtype."""
    if len(pool) and pool[-1] - pool[0] + 1 == len(pool) and np.all(np.diff(pool) == 1):
        return features[pool[0] : pool[-1] + 1]
    return features[pool]


def make_pool(fields: frozenset[str], experiment: Experiment, learner: Learner, pool_features, state: LoopState,
              round_: int) -> Pool:
    """The pool for one selection with only ``fields`` computed (a strategy's requires and optional)."""
    wanted = {
        "features": lambda: pool_features,
        "probs": learner.pool_probs,
        "text_features": lambda: experiment.encoded.text_features,
        "embeddings": learner.pool_embeddings,
    }
    values = {name: make() if name in fields else None for name, make in wanted.items()}
    return Pool(labeled=state.labeled, labels=state.labels, round=round_, n_classes=experiment.dataset.n_classes,
                **values)


def run_loop(
    config: RunSpec,
    experiment: Experiment,
    runner: TrainRunner | None = None,
    state: LoopState | None = None,
    on_round: Callable[[dict, LoopState], None] | None = None,
) -> list[dict]:
    """Run the rounds not yet in ``state``; returns one record per round.

    Each selection gets a pool with only the fields the strategy ``requires`` (and those
    it reads when present: ``optional``) computed.
    """
    runner = runner or LocalRunner()
    strategy = make_strategy(config.strategy, **config.strategy_params)
    learner: Learner = make_learner(config.learner, experiment, config.learner_params)
    n_pool = len(experiment.pool)
    budget = check_budget(config, n_pool, experiment.dataset.n_classes)
    first_round = 0 if config.initial_per_class else 1
    state = state or LoopState.fresh(n_pool, first_round)
    if state.learner_state:
        learner.set_state(state.learner_state)
    pool_features = pool_rows(experiment.encoded.image_features, experiment.pool)
    fields = frozenset(strategy.requires) | strategy.optional
    true_labels = experiment.pool_labels
    zeroshot_acc = _accuracy(experiment.encoded.zeroshot_probs(experiment.test), experiment.test_labels)
    run_fields = {
        "run_id": config.run_id, "dataset": experiment.dataset.name, "strategy": config.strategy,
        "learner": config.learner, "backbone": config.backbone,
        "student": learner.student, "teacher": learner.teacher,
        "seed": config.seed, "budget": budget, "pool_size": n_pool,
        "n_classes": experiment.dataset.n_classes, "schema_version": SCHEMA_VERSION,
    }
    for round_ in range(state.completed + 1, config.rounds + 1):
        start = time.perf_counter()
        if round_ == 0:
            selection = Selection(query=initial_labeled(
                true_labels, experiment.dataset.classnames, config.initial_per_class, config.seed))
        else:
            pool = make_pool(fields, experiment, learner, pool_features, state, round_)
            selection = strategy.select(pool, budget, seed=config.seed * 1000 + round_)
        select_seconds = time.perf_counter() - start
        if len(selection.query) + len(selection.pseudo) == 0:
            raise RaysvcBug(f"strategy {config.strategy!r} selected nothing in round {round_}")
        state.labeled[selection.query] = True
        state.labels[selection.query] = true_labels[selection.query]
        state.labeled[selection.pseudo] = True
        state.pseudo[selection.pseudo] = True
        state.labels[selection.pseudo] = selection.pseudo_labels
        state.n_queried += len(selection.query)

        start = time.perf_counter()
        positions = np.flatnonzero(state.labeled)
        learner.fit(positions, state.labels[positions], seed=config.seed * 1000 + round_, runner=runner)
        train_seconds = time.perf_counter() - start

        n_pseudo = int(state.pseudo.sum())
        row = dict(run_fields)
        row.update(
            round=round_, n_labeled=int(state.labeled.sum()), n_queried=state.n_queried, n_pseudo=n_pseudo,
            pseudo_acc=float((state.labels[state.pseudo] == true_labels[state.pseudo]).mean()) if n_pseudo else float("nan"),
            test_acc=_accuracy(learner.predict_proba("test"), experiment.test_labels),
            zeroshot_acc=zeroshot_acc, teacher_acc=learner.teacher_accuracy(),
            select_seconds=select_seconds, train_seconds=train_seconds,
            encode_seconds=experiment.encoded.encode_seconds if round_ == first_round else 0.0,
        )
        state.rows.append(row)
        state.completed = round_
        state.learner_state = learner.get_state()
        if on_round is not None:
            on_round(row, state)
    return state.rows
