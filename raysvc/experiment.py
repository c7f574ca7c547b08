"""The experiment of one run: its images, split, budget and embeddings (stage three of five).

:func:`assemble` takes the :class:`~raysvc.spec.RunPlan` and loads what the loop works
on: the dataset (subsampled with ``per_class``, prompted with the run's prompts), the
pool/test split, the per-round budget (checked against the pool before anything is
encoded) and the embeddings (from ``encode``: the feature cache, or the encoder service
of a grid). Nothing here trains or selects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from raysvc.backbones import BackboneRef
from raysvc.datasets import ImageDataset, load_dataset, per_class_subset, pool_test_split
from raysvc.encoded import EncodedDataset, centred
from raysvc.errors import PoolExhaustedError
from raysvc.prompts import with_prompts
from raysvc.registry import Part

if TYPE_CHECKING:
    from raysvc.spec import RunPlan

Encode = Callable[[ImageDataset, BackboneRef], EncodedDataset]
LoadDataset = Callable[[Part], ImageDataset]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a learner and the loop may read: the dataset, its embeddings, the split, the budget.

    pool, test: dataset indices. ``backbone`` names the VLM so a worker process can load
    the same one. ``budget``: oracle queries per round.
    """

    dataset: ImageDataset
    encoded: EncodedDataset
    backbone: BackboneRef
    pool: np.ndarray
    test: np.ndarray
    budget: int

    @property
    def pool_labels(self) -> np.ndarray:
        return self.dataset.labels[self.pool]

    @property
    def test_labels(self) -> np.ndarray:
        return self.dataset.labels[self.test]


def run_dataset(plan: RunPlan, load: LoadDataset = load_dataset) -> ImageDataset:
    """The run's images (subsampled with ``per_class``) with the run's prompts.

    ``load`` reads the plan's dataset part; a long-lived worker passes a cached one.
    """
    spec = plan.spec
    dataset = load(plan.dataset)
    if spec.per_class is not None:
        dataset = per_class_subset(dataset, spec.per_class, spec.split_seed)
    return with_prompts(dataset, spec.prompt_template, plan.descriptions, spec.class_descriptions)


def round_budget(plan: RunPlan, n_pool: int, n_classes: int) -> int:
    """The per-round budget (one per class unless given); refused when the start and the
    rounds would need more images than the pool has."""
    spec = plan.spec
    budget = spec.budget or n_classes
    needed = budget * spec.rounds + spec.initial_per_class * n_classes
    if needed > n_pool:
        start = f" after a {spec.initial_per_class}-shot start" if spec.initial_per_class else ""
        raise PoolExhaustedError(
            f"{spec.rounds} rounds of budget {budget}{start} need {needed} images; the pool has {n_pool}"
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


def assemble(plan: RunPlan, encode: Encode, load: LoadDataset = load_dataset) -> Experiment:
    """The dataset, its split, the budget (checked before any encoding) and the embeddings."""
    spec = plan.spec
    dataset = run_dataset(plan, load)
    pool, test = pool_test_split(dataset, spec.test_fraction, spec.split_seed)
    budget = round_budget(plan, len(pool), dataset.n_classes)
    encoded = encode(dataset, plan.backbone)
    if spec.feature_centering == "pool":
        encoded = centred(encoded, pool)
    return Experiment(dataset, encoded, plan.backbone, pool, test, budget)
