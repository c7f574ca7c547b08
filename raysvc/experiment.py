"""The experiment of one run: its images, split, budget and embeddings (stage three of five).

:func:`assemble` takes the :class:`~raysvc.spec.RunPlan` and loads what the loop works
on: the dataset (subsampled with ``per_class``, prompted with the run's prompts), the
pool/test split, the per-round budget (checked against the pool before anything is
encoded) and the embeddings (from ``encode``: the feature cache, or the encoder service
of a grid). Nothing here trains or selects.

The pool protocol of the papers' studies is decided here too: the k-shot start (ActiveKD),
a seeded subsample of the unlabeled pool (``pool_subsample``: ActiveKD's 100 000 ImageNet
images) and base-to-novel generalisation (``base_to_novel``: the CB paper's Tab. 3, Fig. 13),
where the run sees the base classes only and the novel ones are kept for evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from raysvc.backbones import BackboneRef
from raysvc.datasets import ImageDataset, load_dataset, per_class_subset, pool_test_split
from raysvc.encoded import EncodedDataset, centred
from raysvc.errors import ConfigError, PoolExhaustedError
from raysvc.prompts import with_prompts
from raysvc.registry import Part

if TYPE_CHECKING:
    from raysvc.spec import RunPlan

Encode = Callable[[ImageDataset, BackboneRef], EncodedDataset]
LoadDataset = Callable[[Part], ImageDataset]


@dataclasses.dataclass(frozen=True)
class NovelClasses:
    """The classes a base-to-novel run never trains on, kept to evaluate on: their names, their
    zero-shot class embeddings, and the test images showing them (dataset indices) with their
    labels among these classes."""

    classnames: tuple[str, ...]
    text_features: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a learner and the loop may read: the dataset, its embeddings, the split, the budget.

    pool, test: dataset indices. ``backbone`` names the VLM so a worker process can load
    the same one. ``budget``: oracle queries per round. ``initial``: the pool positions of a
    k-shot start (round 0), None without one. ``novel``: the held-out classes of a
    base-to-novel run (``dataset`` and ``encoded`` then show the base classes only).
    """

    dataset: ImageDataset
    encoded: EncodedDataset
    backbone: BackboneRef
    pool: np.ndarray
    test: np.ndarray
    budget: int
    initial: np.ndarray | None = None
    novel: NovelClasses | None = None

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


def base_novel_classes(n_classes: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, novel) class ids, sorted: ``halves``, the first ceil(C/2) class ids base, as CoOp's
    ``subsample_classes`` (APL @105a662 ``datasets/oxford_pets.py:141-186``: sorted labels, base
    = ``labels[:ceil(n/2)]``), which the CB paper follows for Tab. 3; ``seeded``, ceil(C/2)
    classes drawn with ``seed`` (the run's ``split_seed``)."""
    if n_classes < 4:
        raise ConfigError(f"base_to_novel needs at least 4 classes (2 base, 2 novel); the dataset has {n_classes}")
    m = math.ceil(n_classes / 2)
    order = np.arange(n_classes) if split == "halves" else np.random.default_rng(seed).permutation(n_classes)
    return np.sort(order[:m]), np.sort(order[m:])


def class_view(
    dataset: ImageDataset, encoded: EncodedDataset | None, classes: np.ndarray
) -> tuple[ImageDataset, EncodedDataset | None]:
    """``dataset`` and ``encoded`` (None: not encoded yet) seen through ``classes`` only: class
    names, descriptions and class embeddings of those classes, labels renumbered
    0..len(classes)-1 and -1 for the other classes' images, which stay addressable by the same
    indices (no copy of the images' embeddings)."""
    relabel = np.full(dataset.n_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    digest = hashlib.sha256(np.asarray(classes, dtype=np.int64).tobytes()).hexdigest()[:8]
    view = dataclasses.replace(
        dataset, classnames=tuple(dataset.classnames[c] for c in classes), labels=relabel[dataset.labels],
        fingerprint=f"{dataset.fingerprint}-classes-{digest}",
        descriptions=None if dataset.descriptions is None else tuple(dataset.descriptions[c] for c in classes))
    if encoded is None:
        return view, None
    return view, dataclasses.replace(encoded, text_features=encoded.text_features[classes],
                                     text_raw=encoded.text_raw[classes], labels=view.labels,
                                     text_key=f"{encoded.text_key}-classes-{digest}")


def pool_protocol(plan: RunPlan, dataset: ImageDataset, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(the pool, the pool positions of the k-shot start or None) after ``pool_subsample``: the
    start is drawn from the whole pool, then ``pool_subsample`` of the other images are kept,
    drawn with the run's seed, as ActiveKD reduces ImageNet's unlabeled set after its 1-shot
    start (erjui/PCoreSet @075a76a ``train_active_imgnet.py:498-512``, ``torch.manual_seed(seed)``)."""
    spec = plan.spec
    start = None
    if spec.initial_per_class:
        start = initial_labeled(dataset.labels[pool], dataset.classnames, spec.initial_per_class, spec.seed)
    n_start = 0 if start is None else len(start)
    if spec.pool_subsample is None or spec.pool_subsample >= len(pool) - n_start:
        return pool, start
    rest = np.setdiff1d(np.arange(len(pool)), [] if start is None else start)
    drawn = np.random.default_rng([spec.seed, spec.pool_subsample]).choice(rest, size=spec.pool_subsample,
                                                                          replace=False)
    keep = np.sort(np.concatenate([drawn, [] if start is None else start]).astype(np.int64))
    return pool[keep], None if start is None else np.searchsorted(keep, start)


def assemble(plan: RunPlan, encode: Encode, load: LoadDataset = load_dataset) -> Experiment:
    """The dataset, its split, the pool protocol, the budget (checked before any encoding) and
    the embeddings."""
    spec = plan.spec
    dataset = run_dataset(plan, load)
    pool, test = pool_test_split(dataset, spec.test_fraction, spec.split_seed)
    seen = dataset
    if spec.base_to_novel != "off":
        base, novel = base_novel_classes(dataset.n_classes, spec.base_to_novel, spec.split_seed)
        novel_test = test[np.isin(dataset.labels[test], novel)]
        pool, test = (rows[np.isin(dataset.labels[rows], base)] for rows in (pool, test))
        seen, _ = class_view(dataset, None, base)
    pool, initial = pool_protocol(plan, seen, pool)
    budget = round_budget(plan, len(pool), seen.n_classes)
    encoded = encode(dataset, plan.backbone)
    if spec.feature_centering == "pool":
        encoded = centred(encoded, pool)
    if spec.base_to_novel == "off":
        return Experiment(dataset, encoded, plan.backbone, pool, test, budget, initial)
    novel_view, novel_encoded = class_view(dataset, encoded, novel)
    held_out = NovelClasses(novel_view.classnames, novel_encoded.text_features, novel_test,
                            novel_view.labels[novel_test])
    seen, encoded = class_view(dataset, encoded, base)
    return Experiment(seen, encoded, plan.backbone, pool, test, budget, initial, held_out)
