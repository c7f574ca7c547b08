"""ActiveKD student learners: a compact student distilled from the VLM every round.

Three frameworks, registered as learners:

- ``no-distill``: the student learns from the labeled images only (cross-entropy).
- ``kd-zeroshot``: the teacher is the VLM's zero-shot classifier on the cached image
  embeddings, computed once.
- ``kd-fewshot``: the teacher is re-fitted every round on the labeled set, with no
  validation split: a CLAP linear probe (Silva-Rodriguez et al., CVPR 2024) as ActiveKD's
  code fits it (:func:`fit_clap`).

Training is dual-head optimisation (DHO, Kang et al. 2025): a shared feature extractor,
a CE head trained with cross-entropy on the labeled images and a KD head trained with
``T^2 KL(softmax(t / T) || softmax(z_kd / T))`` towards the teacher's logits t, with the
loss of the official code (:func:`dho_loss`); ``no-distill`` takes the same steps on the
labeled rows alone. Which rows each step reads and its learning rate are the
``variant``'s schedule (:mod:`raysvc.learners.schedules`): ``official`` (the default,
erjui/PCoreSet ``train_active_others.py``), ``imagenet`` (``train_active_imgnet.py``, with a
per-round ``epochs`` list) or ``pool-epochs`` (raysvc's earlier schedule). Inference mixes
the heads' probabilities: p = alpha * softmax(z_ce) + (1 - alpha) * softmax(z_kd / beta)
(:func:`combine_heads`); ``no-distill`` predicts with its CE head alone. ``alpha`` weighs
the CE head, as in DHO; the ten-dataset code's alpha weighs the KD head (alpha_ActiveKD =
1 - alpha), and at its 0.5 (beta 1) the two agree.

Where the student trains (:func:`train_student`): on the device ``device`` names
(:mod:`raysvc.learners.devices`), data-parallel over a Ray Train worker group (DDP, each
worker a shard of every global batch), reading the pool's images from the dataset in
DataLoader workers batch by batch (:class:`~raysvc.learners.students.StudentImages`), the
teacher's logits travelling with their rows; pool and test inference likewise, sharded
over the workers. Nothing decodes the whole pool into one array.

Before the first fit every framework predicts the zero-shot prior, so the first
selection is informed by it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysvc.chunks import COMPUTE_ROWS
from raysvc.errors import ConfigError
from raysvc.learners import LEARNERS
from raysvc.learners.base import Learner, TrainRunner
from raysvc.learners.devices import DEVICE_HELP, Device, Workers, autocast, training_device, worker_group
from raysvc.learners.schedules import (
    Schedule,
    imagenet_schedule,
    linear_warmup_decay,
    official_schedule,
    pool_epochs_schedule,
    shard,
)
from raysvc.learners.students import (
    CONVOLUTIONAL,
    DualHeadStudent,
    Student,
    StudentImages,
    make_student,
    normalisation,
    to_input,
)
from raysvc.options import Options, option

Variant = Literal["official", "imagenet", "pool-epochs"]
# what each variant fills in for the options left unset (None); see KDOptions
VARIANTS: dict[str, dict[str, Any]] = {
    "official": {"repeat": 200, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "crop": True, "beta": 1.0},
    "imagenet": {"epochs": (20, 20, 20, 20, 20, 20, 20, 50), "batch_size": 256, "lr": 1e-3, "weight_decay": 0.01,
                 "crop": True, "beta": 0.5},
    "pool-epochs": {"epochs": 5, "batch_size": 64, "labeled_fraction": 0.5, "lr": 1e-3, "weight_decay": 1e-4,
                    "crop": False, "beta": 1.0},
}
# the options only some variants read; setting one for another variant is refused
_ONLY = {"repeat": ("official",), "epochs": ("imagenet", "pool-epochs"), "labeled_fraction": ("pool-epochs",)}
# alpha (on the CE head) when unset: train_active_others.py:378-393 mixes 0.5 / 0.5;
# train_active_imgnet.py:160-165, 325-330 takes 0.4, and 0.2 with the CLAP teacher
_ALPHA = {"official": 0.5, "pool-epochs": 0.5, "imagenet": 0.4}
_ALPHA_IMAGENET_FEWSHOT = 0.2


@dataclasses.dataclass(frozen=True)
class KDOptions(Options):
    """Student training options of the ActiveKD learners (``learner_params``). ``variant``
    fills in every schedule option left unset (None):

    * ``official`` (default): erjui/PCoreSet @075a76a ``train_active_others.py:169-303``:
      separate labeled (drawn with replacement) and unlabeled batches of 64, ``200 x
      ceil(|L| / 64)`` steps, AdamW (lr 1e-3, weight decay 0.01), linear warm-up over 10 %
      then linear decay; random resized crops (scale 0.5-1) and flips.
    * ``imagenet``: ``train_active_imgnet.py``: epochs over the unlabeled images (20 per round,
      50 in the eighth), labeled and unlabeled global batches of 256 in one forward pass,
      AdamW (lr 1e-3, weight decay 0.01), cosine decay; alpha 0.4 (0.2 for kd-fewshot), beta 0.5.
    * ``pool-epochs``: raysvc's earlier schedule: 5 epochs of ceil(pool / 64) mixed batches of
      64, half labeled, AdamW (lr 1e-3, weight decay 1e-4), cosine decay, flips only.
    """

    variant: Variant = option("official", "fills in the schedule options left unset (see above)")
    student: Student = option("efficientnet-lite0", "the student network (see raysvc.learners.students)")
    student_weights: str | None = option(None, "None: the student's default weights; 'random'; a timm tag; "
                                               "a state-dict file (the DINO ResNet-50's for resnet50)")
    image_size: int = option(64, "the student's input side (the official code's 224 on GPUs)")
    epochs: int | tuple[int, ...] | None = option(
        None, "imagenet, pool-epochs: epochs per round, or a list (the i-th fit of a run takes the i-th entry, "
              "later ones the last)")
    repeat: int | None = option(None, "official: draws per padded labeled image per round (200)")
    lr: float | None = option(None, "AdamW learning rate")
    weight_decay: float | None = option(None, "AdamW weight decay")
    batch_size: int | None = option(None, "official, imagenet: labeled and unlabeled rows per step, each; "
                                          "pool-epochs: rows of the mixed batch (global over all workers)")
    labeled_fraction: float | None = option(None, "pool-epochs: share of each batch drawn from the labeled images")
    crop: bool | None = option(None, "random resized crops (scale 0.5-1) before the flips")
    flip: bool = option(True, "random horizontal flips")
    temperature: float = option(2.0, "distillation temperature T")
    alpha: float | None = option(None, "weight of the CE head when the heads are mixed at inference (DHO's alpha; "
                                       "ActiveKD's alpha sits on the KD head: alpha_ActiveKD = 1 - alpha); "
                                       "None: the variant's")
    beta: float | None = option(None, "temperature of the KD head at inference")
    ce_weight: float = option(0.5, "weight of the CE loss (official 0.5)")
    kd_weight: float = option(0.5, "weight of the KD loss, the labeled and unlabeled parts' KL summed (official 0.5)")
    clap_lr: float = option(0.01, "kd-fewshot: SGD learning rate of the CLAP teacher (official 0.01)")
    clap_repeat: int = option(300, "kd-fewshot: CLAP samples per labeled image per round, in batches of "
                                   "batch_size (official 300: floor(300 n / 64) steps)")
    inference_batch_size: int = option(256, "batch size of student inference")
    device: Device = option("auto", DEVICE_HELP)
    decode_workers: int | None = option(None, "DataLoader processes decoding images per training worker "
                                              "(None: 0 on the CPU, 4 on a GPU)")

    def __post_init__(self):
        for name, variants in _ONLY.items():
            if getattr(self, name) is not None and self.variant not in variants:
                hint = "; the official round is repeat x ceil(|L| / batch_size) steps" if name == "epochs" else ""
                raise ConfigError(f"option {name}: variant={self.variant!r} does not read it "
                                  f"(only {' and '.join(variants)}){hint}")
        self.fill_unset(VARIANTS.get(self.variant, {}))
        super().__post_init__()

    def check(self):
        for field in ("image_size", "batch_size", "clap_repeat", "inference_batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be >= 1")
        if self.image_size < 32:
            raise ConfigError(f"option image_size={self.image_size!r}: must be >= 32")
        if self.repeat is not None and self.repeat < 1:
            raise ConfigError(f"option repeat={self.repeat!r}: must be >= 1")
        epochs = (self.epochs,) if isinstance(self.epochs, int) else self.epochs
        if epochs is not None and (not epochs or min(epochs) < 1):
            raise ConfigError(f"option epochs={self.epochs!r}: must be >= 1 (or a non-empty list of such)")
        for field in ("lr", "temperature", "beta", "clap_lr"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be positive")
        for field in ("weight_decay", "ce_weight", "kd_weight"):
            if not getattr(self, field) >= 0:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be >= 0")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"option alpha={self.alpha!r}: must be in [0, 1]")
        if self.labeled_fraction is not None and not 0.0 < self.labeled_fraction <= 1.0:
            raise ConfigError(f"option labeled_fraction={self.labeled_fraction!r}: must be in (0, 1]")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ConfigError(f"option decode_workers={self.decode_workers!r}: must be >= 0")

    def epochs_of_fit(self, fit: int) -> int:
        """The epochs of a run's ``fit``-th training (0 first): the list's entry, its last past the
        end; 0 for the official variant, whose round length is ``repeat``'s."""
        if self.epochs is None:
            return 0
        if isinstance(self.epochs, int):
            return self.epochs
        return self.epochs[min(fit, len(self.epochs) - 1)]

    def mixing_alpha(self, teacher_kind: str) -> float:
        """alpha as given, else the variant's (the imagenet code takes 0.2 with the CLAP teacher)."""
        if self.alpha is not None:
            return self.alpha
        if self.variant == "imagenet" and teacher_kind == "fewshot":
            return _ALPHA_IMAGENET_FEWSHOT
        return _ALPHA[self.variant]


# --- losses ---------------------------------------------------------------------------


def combine_heads(z_ce: torch.Tensor, z_kd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """DHO inference: alpha * softmax(z_ce) + (1 - alpha) * softmax(z_kd / beta) (DHO
    ``train_others.py:207-228``; ActiveKD ``train_active_others.py:378-393`` with its alpha = 1 - alpha).

    The heads are mixed as probabilities, as in the DHO and ActiveKD code: mixing logits
    instead lets the KD head's large logits (a sharp teacher imitated) outvote a CE head
    that is right, 9 to 14 points lower on Animal-MNIST (``python -m analysis.kd_heads``).
    """
    return alpha * z_ce.softmax(-1) + (1.0 - alpha) * (z_kd / beta).softmax(-1)


def dho_loss(
    z_ce: torch.Tensor,
    z_kd: torch.Tensor,
    labels: torch.Tensor,
    labeled_mask: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    ce_weight: float = 0.5,
    kd_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, kd) of the dual-head loss on one batch, as erjui/PCoreSet @075a76a
    ``train_active_others.py:286-303`` (= erjui/DHO @846de75 ``train_others.py:149-166``).

    ce: mean cross-entropy of the CE head over the labeled rows (0 when none); labels of
    unlabeled rows are ignored. kd = klL + klU with klX = T^2 x the mean over the labeled
    (unlabeled) rows of KL(softmax(t / T) || softmax(z_kd / T)), each part averaged over
    its own rows (``reduction='batchmean'`` on its own batch), 0 for a part with no rows or
    without a teacher (``teacher_logits`` None). total = ce_weight * ce + kd_weight * kd;
    the official weights are 0.5 and 0.5. ``teacher_logits`` may be any per-row shift of
    the logits (log-probabilities too): the softmax drops it.
    """
    labeled_mask = labeled_mask.bool()
    if labeled_mask.any():
        ce = F.cross_entropy(z_ce[labeled_mask], labels[labeled_mask])
    else:
        ce = z_ce.sum() * 0.0
    kd = z_kd.sum() * 0.0
    if teacher_logits is not None:
        t = temperature
        target = F.log_softmax(teacher_logits / t, dim=-1)
        student = F.log_softmax(z_kd / t, dim=-1)
        per_row = F.kl_div(student, target, reduction="none", log_target=True).sum(-1)
        for part in (labeled_mask, ~labeled_mask):
            if part.any():
                kd = kd + per_row[part].mean() * t * t
    return ce_weight * ce + kd_weight * kd, ce, kd


# --- the few-shot teacher (CLAP) --------------------------------------------------------


def clap_penalty_weights(zeroshot_probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """lambda_c: mean zero-shot probability of class c on the labeled images of class c, 0 for
    a class with none (erjui/PCoreSet @075a76a ``clap_others.py:234-248``: the sum over them
    divided by ``n_c + 1e-10``): nothing ties such a class's prototype to its prior."""
    weights = np.zeros(n_classes, dtype=np.float64)
    for c in range(n_classes):
        members = labels == c
        if members.any():
            weights[c] = float(zeroshot_probs[members, c].mean())
    return weights


def clap_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T


def clap_steps(n_labeled: int, repeat: int = 300, batch_size: int = 64) -> int:
    """CLAP's optimisation steps for ``n_labeled`` images: ``floor(repeat n / batch_size)``, one
    effective epoch (``max(1, 300 // 300)``) of a ``drop_last`` loader (clap_others.py:193-214)."""
    return (repeat * n_labeled) // batch_size


def clap_loss(
    prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, anchor: torch.Tensor,
    penalty_weights: torch.Tensor, logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, penalty) of CLAP (clap_others.py:301-316): the batch-mean cross-entropy of
    ``logit_scale cos(f, P)`` plus ``mean_c lambda_c ||P_c - anchor_c||^2``."""
    ce = F.cross_entropy(clap_logits(features, prototypes, logit_scale), labels)
    penalty = (penalty_weights * (prototypes - anchor).pow(2).sum(-1)).mean()
    return ce + penalty, ce, penalty


def fit_clap(
    features: np.ndarray,
    labels: np.ndarray,
    text_raw: np.ndarray,
    logit_scale: float,
    lr: float = 0.01,
    repeat: int = 300,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """CLAP class prototypes (C, D) fitted on labeled embeddings on ``device``, as erjui/PCoreSet
    @075a76a ``clap_others.py:72-321`` (``train_clap_teacher``).

    The prototypes P start at, and are held near, ``text_raw``: the per-class mean of the
    *unnormalised* text embeddings (``clip_weights_before_norm``). loss = CE(scale cos(f, P))
    + mean_c lambda_c ||P_c - text_raw_c||^2 (:func:`clap_penalty_weights`, on the zero-shot
    probabilities against the normalised ``text_raw``). SGD (momentum 0.9, no weight decay)
    over ``floor(repeat n / batch_size)`` batches of ``batch_size`` labeled images drawn with
    replacement (``RandomSampler(replacement=True, num_samples=300 n)``, ``drop_last``), the
    learning rate warmed up linearly over the first 10% of the steps, then decayed
    linearly to 0; the last prototypes are kept. The one deviation: the official code
    re-encodes randomly cropped and flipped images every step; this fits the cached
    embeddings of the images as they are.
    """
    device = torch.device(device)
    # copies: the arrays may be read-only views of Ray's object store
    anchor = torch.tensor(np.asarray(text_raw, dtype=np.float32), device=device)
    x = F.normalize(torch.tensor(np.asarray(features, dtype=np.float32), device=device), dim=-1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    with torch.no_grad():
        zs = clap_logits(x, anchor, logit_scale).softmax(-1).cpu().numpy()
    lam = torch.as_tensor(clap_penalty_weights(zs, np.asarray(labels), len(anchor)), dtype=torch.float32,
                          device=device)
    prototypes = torch.nn.Parameter(anchor.clone())
    steps = clap_steps(len(y), repeat, batch_size)
    optimizer = torch.optim.SGD([prototypes], lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(steps))
    batches = torch.as_tensor(np.random.default_rng(seed).integers(len(y), size=(steps, batch_size)), device=device)
    for rows in batches:
        loss, _, _ = clap_loss(prototypes, x[rows], y[rows], anchor, lam, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return prototypes.detach().cpu().numpy()


# --- the training function (pure; runs on any worker) -----------------------------------


@dataclasses.dataclass(frozen=True)
class StudentSource:
    """What identifies the images a student reads: the dataset (whose ``load`` decodes one
    image from its file or packaged array) and the dataset indices of the pool and test
    rows. Small where the dataset is (paths, or the packaged arrays it already holds):
    this, not pixels, is what a training payload carries."""

    dataset: Any  # raysvc.datasets.ImageDataset
    pool: np.ndarray
    test: np.ndarray


class RoundRows(Dataset):
    """One round's training rows: item ``(pool position, augmentation seed, labeled)`` ->
    (pixels, label (0 where unlabeled), the teacher's logits of that row (zeros without a
    teacher), labeled): the teacher's logits travel with their rows."""

    def __init__(self, images: StudentImages, source: StudentSource, label_of: np.ndarray,
                 teacher: np.ndarray | None, n_classes: int):
        self.images, self.source, self.label_of, self.teacher = images, source, label_of, teacher
        self.n_classes = n_classes

    def __getitem__(self, item: tuple[int, int, int]):
        position, seed, labeled = item
        # a copy: the logits may be a read-only view of Ray's object store
        logits = (np.zeros(self.n_classes, np.float32) if self.teacher is None
                  else np.array(self.teacher[position], dtype=np.float32))
        pixels = self.images[(int(self.source.pool[position]), seed)]
        return pixels, max(0, int(self.label_of[position])), logits, bool(labeled)


class TwoBatches(nn.Module):
    """The student's forward pass over one step's labeled and unlabeled rows: one stacked
    batch, or two passes (two BatchNorm batches, as train_active_others.py:281-282). One
    module, so a DDP wrapper sees one forward per step."""

    def __init__(self, student: nn.Module, stacked: bool):
        super().__init__()
        self.student, self.stacked = student, stacked

    def forward(self, x: torch.Tensor, n_labeled: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stacked or n_labeled in (0, len(x)):
            z_ce, z_kd, _ = self.student(x)
            return z_ce, z_kd
        parts = [self.student(x[:n_labeled]), self.student(x[n_labeled:])]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def round_schedule(options: KDOptions, labeled: np.ndarray, n_pool: int, distil: bool, epochs: int,
                   rng: np.random.Generator) -> Schedule:
    """The variant's schedule for one round over the pool positions ``labeled`` (the rest
    unlabeled; all of the pool when nothing is left)."""
    unlabeled = np.setdiff1d(np.arange(n_pool), labeled)
    if len(unlabeled) == 0:
        unlabeled = np.arange(n_pool)
    if options.variant == "official":
        return official_schedule(labeled, unlabeled, repeat=options.repeat, batch_size=options.batch_size,
                                 distil=distil, rng=rng)
    if options.variant == "imagenet":
        return imagenet_schedule(labeled, unlabeled, epochs=epochs, batch_size=options.batch_size, distil=distil,
                                 rng=rng)
    return pool_epochs_schedule(labeled, unlabeled, n_pool=n_pool, epochs=epochs, batch_size=options.batch_size,
                                labeled_fraction=options.labeled_fraction, distil=distil, rng=rng)


def _loader(dataset: Dataset, batches, workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over explicit batches of items, decoding in ``workers`` forked processes
    (0: in this one) and handing batches over in order."""
    context = "fork" if workers and "fork" in multiprocessing.get_all_start_methods() else None
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      multiprocessing_context=context)


def _local_batches(schedule: Schedule, workers: Workers, rng: np.random.Generator):
    """This worker's share of every global batch of ``schedule``, as items ``(pool position,
    augmentation seed, labeled)``, labeled rows first. The seeds are drawn per global batch
    from ``rng`` (the same on every worker), so a row's pixels do not depend on the worker."""
    for labeled, unlabeled in schedule.batches():
        seeds = rng.integers(2**31, size=len(labeled) + len(unlabeled))
        parts = [shard(np.stack([rows, part_seeds, np.full(len(rows), flag)], 1), workers)
                 for rows, part_seeds, flag in ((labeled, seeds[: len(labeled)], 1),
                                                (unlabeled, seeds[len(labeled) :], 0))]
        yield [tuple(map(int, row)) for row in np.concatenate(parts)]


def train_student(payload: dict[str, Any]) -> dict[str, Any]:
    """Train a dual-head student for one round, then run it over pool and test.

    payload: options (KDOptions), n_classes, images (:class:`StudentSource`), labeled (pool
    positions), labels, teacher_logits ((N_pool, C) or None), seed, epochs (this round's,
    for the variants that read them).

    On a Ray Train worker group of N > 1 the student is wrapped for DDP
    (``ray.train.torch.prepare_model``) and each worker trains on its shard of every global
    batch of the schedule (the same for every worker: same seed), so a run on N workers takes
    the same steps over the same global batches as on one; then each worker runs inference
    over its share of pool and test and every worker gathers the whole. Returns numpy arrays:
    ``pool`` (z_ce, z_kd, h) and ``test`` (z_ce, z_kd) outputs, ``losses`` (steps, 3) of this
    worker's shards (total, ce, kd), ``images`` trained per worker, ``steps``, ``device``,
    ``workers`` and the seconds of training and inference.
    """
    options: KDOptions = payload["options"]
    workers = worker_group()
    device = training_device(options.device)
    source: StudentSource = payload["images"]
    n_classes, seed = int(payload["n_classes"]), int(payload["seed"])
    labeled = np.asarray(payload["labeled"], dtype=np.int64)
    teacher = payload.get("teacher_logits")
    label_of = np.full(len(source.pool), -1, dtype=np.int64)
    label_of[labeled] = np.asarray(payload["labels"], dtype=np.int64)
    decode_workers = options.decode_workers if options.decode_workers is not None else (
        4 if device.type == "cuda" else 0)

    torch.manual_seed(seed)  # the same initial heads on every worker
    rng = np.random.default_rng(seed)
    schedule = round_schedule(options, labeled, len(source.pool), teacher is not None, int(payload["epochs"]), rng)
    student = make_student(options.student, n_classes, options.student_weights).to(device)
    channels_last = device.type == "cuda" and options.student in CONVOLUTIONAL
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    model: nn.Module = TwoBatches(student, schedule.stacked)
    if workers.distributed:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model, move_to_device=device, parallel_strategy="ddp")
    mean, std = normalisation(options.student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    images = StudentImages(source.dataset, options.image_size, flip=options.flip, crop=options.crop)
    rows = RoundRows(images, source, label_of, teacher, n_classes)
    batches = _local_batches(schedule, workers, np.random.default_rng([seed, 1]))
    ce_weight, kd_weight = (1.0, 0.0) if teacher is None else (options.ce_weight, options.kd_weight)

    start = time.perf_counter()
    losses = torch.zeros((schedule.steps, 3), device=device)
    seen = 0
    model.train()
    for step, (pixels, labels, logits, mask) in enumerate(_loader(rows, batches, decode_workers, device)):
        x = student_input(pixels, device, mean, std, channels_last)
        with autocast(device):
            z_ce, z_kd = model(x, int(mask.sum()))
        labels, mask = labels.to(device), mask.to(device)
        loss, ce, kd = dho_loss(z_ce.float(), z_kd.float(), labels, mask,
                                None if teacher is None else logits.to(device), options.temperature, ce_weight,
                                kd_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses[step] = torch.stack([loss, ce, kd]).detach()
        seen += len(x)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    infer = dict(mean=mean, std=std, batch_size=options.inference_batch_size, device=device,
                 decode_workers=decode_workers, channels_last=channels_last)
    pool = student_outputs(student, images, _share(source.pool, workers), **infer)
    test = student_outputs(student, images, _share(source.test, workers), **infer)[:2]  # no test embeddings
    seen_by = [seen]
    if workers.distributed:
        pool, test, seen_by = _gather(pool), _gather(test), _gather_counts(seen)
    return {
        "pool": dict(zip(("z_ce", "z_kd", "h"), pool)), "test": dict(zip(("z_ce", "z_kd"), test)),
        "losses": losses.cpu().numpy(), "steps": schedule.steps, "images": seen_by, "device": str(device),
        "workers": workers.size, "train_seconds": train_seconds, "inference_seconds": time.perf_counter() - start,
    }


def _share(indices: np.ndarray, workers: Workers) -> np.ndarray:
    """This worker's contiguous share of the dataset indices to run inference on."""
    return np.array_split(indices, workers.size)[workers.rank]


def _gather(parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Every worker's arrays, concatenated in rank order (the shares of :func:`_share`)."""
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, parts)
    return tuple(np.concatenate([p[k] for p in every]) for k in range(len(parts)))


def _gather_counts(count: int) -> list[int]:
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, count)
    return [int(c) for c in every]


def student_input(pixels: torch.Tensor, device: torch.device, mean: Sequence[float], std: Sequence[float],
                  channels_last: bool) -> torch.Tensor:
    """Decoded pixels as the student's normalised input on ``device``, channels-last where it helps."""
    x = to_input(pixels.to(device, non_blocking=True), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def student_outputs(student: DualHeadStudent, images: StudentImages, indices: np.ndarray, mean: Sequence[float],
                    std: Sequence[float], batch_size: int = 256, device: torch.device = torch.device("cpu"),
                    decode_workers: int = 0, channels_last: bool = False) -> tuple[np.ndarray, ...]:
    """(z_ce, z_kd, h) float32 numpy arrays of the images at dataset ``indices`` (evaluation
    transform, eval mode, the student's input normalisation ``mean``/``std``), decoded batch by
    batch on ``decode_workers`` processes."""
    student.eval()
    items = ([(int(i), -1) for i in indices[s : s + batch_size]] for s in range(0, len(indices), batch_size))
    outs: list[list[torch.Tensor]] = [[], [], []]
    for pixels in _loader(images, items, decode_workers, device):
        x = student_input(pixels, device, mean, std, channels_last)
        with autocast(device):
            z = student(x)
        for k in range(3):
            outs[k].append(z[k].float().cpu())
    dims = (student.ce_head.out_features, student.kd_head.out_features, student.feature_dim)
    return tuple(torch.cat(o).numpy() if o else np.zeros((0, d), np.float32) for o, d in zip(outs, dims))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the learner ----------------------------------------------------------------------

_STATE_KEYS = ("pool_probs", "test_probs", "pool_embeddings", "teacher_test_probs", "fits")


class KDLearner(Learner):
    """A student distilled from the VLM teacher (``teacher_kind``: none, zeroshot or fewshot)."""

    teacher_kind: ClassVar[str]
    Options = KDOptions
    data_parallel = True

    def __init__(self, experiment, options: KDOptions | None = None):
        super().__init__(experiment, options)
        encoded, n_classes = experiment.encoded, experiment.dataset.n_classes
        n_teacher = len(encoded.text_features)
        if n_teacher != n_classes:
            raise ConfigError(
                f"teacher {experiment.backbone.name!r} scores {n_teacher} classes but dataset "
                f"{experiment.dataset.name!r} has {n_classes}"
            )
        self._zeroshot = {s: encoded.zeroshot_probs(self.rows(s)) for s in ("pool", "test")}
        self._state: dict[str, np.ndarray] = {}

    def source(self) -> StudentSource:
        """What the training function reads the pool's and the test's images from."""
        return StudentSource(self.experiment.dataset, self.experiment.pool, self.experiment.test)

    def teacher_logits(self, positions: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray] | None:
        """This round's teacher logits on pool and test (None: no teacher): the zero-shot
        ``scale * cos(f, t)``, or CLAP's ``scale * cos(f, P)`` (train_active_others.py:534-541),
        CLAP fitted and applied on the learner's device."""
        if self.teacher_kind == "none":
            return None
        encoded = self.experiment.encoded
        if self.teacher_kind == "zeroshot":
            return {split: encoded.zeroshot_logits(self.rows(split)) for split in ("pool", "test")}
        device = training_device(self.options.device)
        feats = encoded.image_features
        opts = self.options
        protos = torch.as_tensor(fit_clap(
            feats[self.experiment.pool[positions]], labels, encoded.text_raw, encoded.logit_scale,
            lr=opts.clap_lr, repeat=opts.clap_repeat, batch_size=opts.batch_size, seed=seed, device=device),
            device=device)
        out = {}
        with torch.no_grad():
            for split in ("pool", "test"):
                rows = self.rows(split)
                logits = np.empty((len(rows), len(protos)), dtype=np.float32)
                for s in range(0, len(rows), COMPUTE_ROWS):
                    x = torch.as_tensor(np.asarray(feats[rows[s : s + COMPUTE_ROWS]], dtype=np.float32),
                                        device=device)
                    logits[s : s + len(x)] = clap_logits(x, protos, encoded.logit_scale).cpu().numpy()
                out[split] = logits
        return out

    def fit(self, positions: np.ndarray, labels: np.ndarray, seed: int, runner: TrainRunner) -> dict[str, Any]:
        positions, labels = np.asarray(positions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        fits = int(self._state.get("fits", 0))
        start = time.perf_counter()
        teacher = self.teacher_logits(positions, labels, seed)
        teacher_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = runner.run(train_student, {
            "options": self.options,
            "n_classes": self.experiment.dataset.n_classes,
            "images": self.source(),
            "labeled": positions,
            "labels": labels,
            "teacher_logits": None if teacher is None else teacher["pool"],
            "seed": int(seed),
            "epochs": self.options.epochs_of_fit(fits),
        }, data_parallel=self.data_parallel)
        round_seconds = time.perf_counter() - start
        pool, test = result["pool"], result["test"]
        state = {"pool_embeddings": pool["h"].astype(np.float32, copy=False), "fits": np.array(fits + 1)}
        if teacher is None:
            state["pool_probs"] = _softmax(pool["z_ce"]).astype(np.float32)
            state["test_probs"] = _softmax(test["z_ce"]).astype(np.float32)
        else:
            a, b = self.options.mixing_alpha(self.teacher_kind), self.options.beta
            state["pool_probs"] = combine_heads(torch.as_tensor(pool["z_ce"]), torch.as_tensor(pool["z_kd"]), a,
                                                b).numpy()
            state["test_probs"] = combine_heads(torch.as_tensor(test["z_ce"]), torch.as_tensor(test["z_kd"]), a,
                                                b).numpy()
            state["teacher_test_probs"] = _softmax(teacher["test"]).astype(np.float32)
        self._state = state
        return {
            "teacher_seconds": teacher_seconds, "round_seconds": round_seconds,
            "train_seconds": result["train_seconds"], "inference_seconds": result["inference_seconds"],
            "losses": result["losses"], "steps": result["steps"], "images": result["images"],
            "device": result["device"], "workers": result["workers"],
        }

    def predict_proba(self, split: str) -> np.ndarray:
        key = f"{split}_probs"
        return self._state[key] if key in self._state else self._zeroshot[split]

    def pool_embeddings(self) -> np.ndarray | None:
        return self._state.get("pool_embeddings")

    def teacher_accuracy(self) -> float:
        if self.teacher_kind == "none":
            return float("nan")
        probs = self._state.get("teacher_test_probs", self._zeroshot["test"])
        return float((probs.argmax(1) == self.experiment.test_labels).mean())

    @property
    def student(self) -> str:
        return self.options.student

    @property
    def teacher(self) -> str:
        return "" if self.teacher_kind == "none" else self.experiment.backbone.name

    def get_state(self) -> dict[str, np.ndarray]:
        return dict(self._state)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self._state = {k: np.asarray(state[k]) for k in _STATE_KEYS if k in state}


@LEARNERS.register
class NoDistillLearner(KDLearner):
    """A student trained on the labeled images only (ActiveKD's no-distillation baseline)."""

    name = "no-distill"
    teacher_kind = "none"


@LEARNERS.register
class ZeroShotKDLearner(KDLearner):
    """A student distilled from the VLM's zero-shot predictions (DHO)."""

    name = "kd-zeroshot"
    teacher_kind = "zeroshot"


@LEARNERS.register
class FewShotKDLearner(KDLearner):
    """A student distilled from a CLAP few-shot teacher re-fitted every round (DHO)."""

    name = "kd-fewshot"
    teacher_kind = "fewshot"
    one_worker = "the CLAP teacher fits on one device in the run's process: its labeled set is small"
