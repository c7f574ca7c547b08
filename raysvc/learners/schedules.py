"""Student training schedules: which pool rows every optimisation step reads, and its learning rate.

A schedule is the whole round's plan for the *global* batch (every worker draws the same
plan from the same seed); a worker of a data-parallel group trains on its shard of each
global batch (:func:`shard`), so N workers take the same steps over the same batches as
one. Three variants (``KDOptions.variant``):

- ``official``: erjui/PCoreSet @075a76a ``train_active_others.py:169-210`` (the ten-dataset
  protocol), :func:`official_schedule`;
- ``imagenet``: the same repository's ``train_active_imgnet.py:145-154, 174-256, 539-601``,
  :func:`imagenet_schedule`;
- ``pool-epochs``: raysvc's schedule before the official one, :func:`pool_epochs_schedule`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np

from raysvc.learners.devices import Workers

# one step's global batch: the pool positions of its labeled rows and of its unlabeled rows
Batch = tuple[np.ndarray, np.ndarray]
# the official warm-up share (train_active_others.py:207, clap_others.py)
WARMUP = 0.1


def linear_warmup_decay(total_steps: int) -> Callable[[int], float]:
    """``transformers.get_linear_schedule_with_warmup(num_warmup_steps=0.1 * total)`` as a
    LambdaLR factor: step / warmup below the (fractional) warm-up, then a linear decay to 0.
    Step 0's factor is 0: the official first update has learning rate 0."""
    warmup = WARMUP * total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1.0, warmup)
        return max(0.0, (total_steps - step) / max(1.0, total_steps - warmup))

    return factor


def cosine(total_steps: int) -> Callable[[int], float]:
    """``CosineAnnealingLR(T_max=total_steps)`` stepped per batch, as a LambdaLR factor."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """``steps`` global batches from ``batches()``; ``lr_factor(step)`` scales the learning rate
    of step ``step``; ``stacked``: the labeled and unlabeled rows go through the student as
    one batch (one BatchNorm batch) rather than as two forward passes."""

    steps: int
    lr_factor: Callable[[int], float]
    stacked: bool
    batches: Callable[[], Iterator[Batch]]


def padded(rows: np.ndarray, batch_size: int) -> np.ndarray:
    """``rows`` followed by ``rows[i % n]`` up to a whole number of batches: erjui/PCoreSet
    ``datasets/utils.py:375-391`` (``build_data_loader(drop_last=True, duplicate_if_needed=True)``)."""
    target = -(-len(rows) // batch_size) * batch_size
    return rows[np.arange(target) % len(rows)]


def official_steps(n_labeled: int, repeat: int = 200, batch_size: int = 64) -> int:
    """The official round length: ``repeat`` draws per row of the *padded* labeled set, in
    batches: ``repeat * ceil(n / batch_size)`` steps (train_active_others.py:182-208: the
    repeated loader samples ``len(labeled_dataset) * 200`` rows, and ``labeled_dataset`` is
    the loader's dataset, already padded to a multiple of 64)."""
    return repeat * len(padded(np.arange(n_labeled), batch_size)) // batch_size


def official_schedule(labeled: np.ndarray, unlabeled: np.ndarray, *, repeat: int, batch_size: int, distil: bool,
                      rng: np.random.Generator) -> Schedule:
    """train_active_others.py:169-303, with datasets/utils.py:358-411.

    Labeled: ``batch_size`` rows per step drawn uniformly *with replacement* from the padded
    labeled set (``RandomSampler(replacement=True)``; the padding's repeats make the first
    rows likelier). Unlabeled: ``batch_size`` rows per step from reshuffled passes over the
    padded unlabeled set (``shuffle=True, drop_last=True``, re-iterated when exhausted); none
    without a teacher. :func:`official_steps` steps, the learning rate warmed up linearly
    over the first 10 % and decayed linearly to 0; the two batches go through the student
    in two forward passes (lines 281-282).
    """
    lab = padded(labeled, batch_size)
    unl = padded(unlabeled, batch_size)
    steps = official_steps(len(labeled), repeat, batch_size)

    def batches() -> Iterator[Batch]:
        passes = _passes(unl, rng)
        for _ in range(steps):
            drawn = lab[rng.integers(len(lab), size=batch_size)]
            yield drawn, (np.fromiter((next(passes) for _ in range(batch_size)), np.int64, batch_size)
                          if distil else unl[:0])

    return Schedule(steps, linear_warmup_decay(steps), stacked=False, batches=batches)


def imagenet_schedule(labeled: np.ndarray, unlabeled: np.ndarray, *, epochs: int, batch_size: int, distil: bool,
                      rng: np.random.Generator) -> Schedule:
    """train_active_imgnet.py:145-256, 539-601 (``batch_size`` is the global batch: the official
    script divides it among its processes, line 933).

    ``epochs`` passes over the unlabeled rows in a fresh random order, ``ceil(|U| /
    batch_size)`` steps each (the last one short); the labeled rows of a step come from the
    labeled set repeated to |U| rows (``RepeatedDataset``: row i is labeled[i % |L|]) in its
    own fresh order, so both loaders end together. Cosine decay over all steps
    (``CosineAnnealingLR``), one stacked forward pass (line 229). Without a teacher the
    epochs still run over the unlabeled set's length, on the labeled rows alone.
    """
    per_epoch = -(-len(unlabeled) // batch_size)
    steps = epochs * per_epoch

    def batches() -> Iterator[Batch]:
        for _ in range(epochs):
            order_u = rng.permutation(unlabeled)
            order_l = labeled[rng.permutation(len(unlabeled)) % len(labeled)]
            for s in range(per_epoch):
                rows = slice(s * batch_size, (s + 1) * batch_size)
                yield order_l[rows], (order_u[rows] if distil else unlabeled[:0])

    return Schedule(steps, cosine(steps), stacked=True, batches=batches)


def pool_epochs_schedule(labeled: np.ndarray, unlabeled: np.ndarray, *, n_pool: int, epochs: int, batch_size: int,
                         labeled_fraction: float, distil: bool, rng: np.random.Generator) -> Schedule:
    """raysvc's schedule before the official one: ``epochs x ceil(pool / batch_size)`` steps of
    one mixed batch, ``round(batch_size x labeled_fraction)`` labeled rows (no repeat inside a
    batch while the labeled set allows) and unlabeled rows for the rest (none without a
    teacher), both from reshuffled passes; cosine decay, one stacked forward pass."""
    n_lab = max(1, min(len(labeled), round(batch_size * labeled_fraction)))
    n_unl = batch_size - n_lab if distil else 0
    steps = epochs * math.ceil(n_pool / batch_size)

    def batches() -> Iterator[Batch]:
        lab, unl = _passes(labeled, rng), _passes(unlabeled, rng)
        for _ in range(steps):
            yield (np.fromiter((next(lab) for _ in range(n_lab)), np.int64, n_lab),
                   np.fromiter((next(unl) for _ in range(n_unl)), np.int64, n_unl))

    return Schedule(steps, cosine(steps), stacked=True, batches=batches)


def _passes(rows: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    """Endless reshuffled passes over ``rows`` (a shuffling loader re-iterated when exhausted)."""
    while True:
        yield from rng.permutation(rows)


def shard(rows: np.ndarray, workers: Workers) -> np.ndarray:
    """This worker's contiguous share of one global batch's ``rows``. A batch that does not
    divide evenly is first padded with its own first rows, as ``DistributedSampler`` pads,
    so every worker takes as many rows (and none an empty batch)."""
    if not workers.distributed or len(rows) == 0:
        return rows
    per = -(-len(rows) // workers.size)
    rows = rows[np.arange(per * workers.size) % len(rows)]
    return rows[workers.rank * per : (workers.rank + 1) * per]
