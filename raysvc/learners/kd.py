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
loss of the official code (:func:`dho_loss`). Each batch holds ``labeled_fraction``
labeled images (without repeats inside a batch) and unlabeled pool images for the rest;
one epoch is ceil(pool / batch_size) steps for every framework, so ``no-distill`` takes
as many optimisation steps, on its labeled share of each batch only. Inference mixes the
heads' probabilities: p = alpha * softmax(z_ce) + (1 - alpha) * softmax(z_kd / beta)
(:func:`combine_heads`); ``no-distill`` predicts with its CE head alone. ``alpha`` weighs
the CE head, as in DHO; ActiveKD's alpha weighs the KD head (alpha_ActiveKD = 1 - alpha),
and at the default 0.5 (beta 1) the two agree.

Where raysvc departs from erjui/PCoreSet @075a76a ``train_active_others.py`` (the
schedule, not the loss): the official student sees separate labeled and unlabeled
batches of 64 each, ``ceil(200 |L| / 64)`` steps per round, AdamW (weight decay 0.01)
with linear warmup and decay; raysvc's schedule is ``epochs``, ``batch_size``,
``labeled_fraction``, ``lr``, ``weight_decay`` below (cosine decay).

Before the first fit every framework predicts the zero-shot prior, so the first
selection is informed by it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from raysvc.errors import ConfigError
from raysvc.learners import LEARNERS
from raysvc.learners.base import Learner, TrainRunner
from raysvc.learners.students import Student, decode_images, make_student, normalisation, to_input
from raysvc.options import Options, option


@dataclasses.dataclass(frozen=True)
class KDOptions(Options):
    """Student training options of the ActiveKD learners (``learner_params``)."""

    student: Student = option("efficientnet-lite0", "the student network (see raysvc.learners.students)")
    student_weights: str | None = option(None, "None: the student's default weights; 'random'; a state-dict file")
    image_size: int = option(64, "the student's input side (small images are upsampled)")
    epochs: int = option(5, "epochs per round; an epoch is ceil(pool / batch_size) steps")
    lr: float = option(1e-3, "AdamW learning rate (cosine schedule)")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    batch_size: int = option(64, "minibatch size")
    labeled_fraction: float = option(0.5, "share of each batch drawn from the labeled images")
    temperature: float = option(2.0, "distillation temperature T")
    alpha: float = option(0.5, "weight of the CE head when the heads are mixed at inference (DHO's alpha; "
                                 "ActiveKD's alpha sits on the KD head: alpha_ActiveKD = 1 - alpha)")
    beta: float = option(1.0, "temperature of the KD head at inference")
    ce_weight: float = option(0.5, "weight of the CE loss (official 0.5)")
    kd_weight: float = option(0.5, "weight of the KD loss, the labeled and unlabeled parts' KL summed (official 0.5)")
    flip: bool = option(True, "random horizontal flips")
    clap_lr: float = option(0.01, "kd-fewshot: SGD learning rate of the CLAP teacher (official 0.01)")
    clap_repeat: int = option(300, "kd-fewshot: CLAP samples per labeled image per round, in batches of "
                                   "batch_size (official 300: floor(300 n / 64) steps)")
    inference_batch_size: int = option(256, "batch size of student inference")

    def check(self):
        for field in ("image_size", "epochs", "batch_size", "clap_repeat", "inference_batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be >= 1")
        if self.image_size < 32:
            raise ConfigError(f"option image_size={self.image_size!r}: must be >= 32")
        for field in ("lr", "temperature", "beta", "clap_lr"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be positive")
        for field in ("weight_decay", "ce_weight", "kd_weight"):
            if not getattr(self, field) >= 0:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"option alpha={self.alpha!r}: must be in [0, 1]")
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise ConfigError(f"option labeled_fraction={self.labeled_fraction!r}: must be in (0, 1]")


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


def linear_warmup_decay(total_steps: int):
    """``transformers.get_linear_schedule_with_warmup`` with 10% warmup, as a LambdaLR factor."""
    warmup = 0.1 * total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1.0, warmup)
        return max(0.0, (total_steps - step) / max(1.0, total_steps - warmup))

    return factor


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
) -> np.ndarray:
    """CLAP class prototypes (C, D) fitted on labeled embeddings, as erjui/PCoreSet @075a76a
    ``clap_others.py:72-321`` (``train_clap_teacher``).

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
    # copies: the arrays may be read-only views of Ray's object store
    anchor = torch.tensor(np.asarray(text_raw, dtype=np.float32))
    x = F.normalize(torch.tensor(np.asarray(features, dtype=np.float32)), dim=-1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with torch.no_grad():
        zs = clap_logits(x, anchor, logit_scale).softmax(-1).numpy()
    lam = torch.as_tensor(clap_penalty_weights(zs, np.asarray(labels), len(anchor)), dtype=torch.float32)
    prototypes = torch.nn.Parameter(anchor.clone())
    steps = clap_steps(len(y), repeat, batch_size)
    optimizer = torch.optim.SGD([prototypes], lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(steps))
    batches = np.random.default_rng(seed).integers(len(y), size=(steps, batch_size))
    for rows in batches:
        rows = torch.as_tensor(rows)
        loss, _, _ = clap_loss(prototypes, x[rows], y[rows], anchor, lam, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return prototypes.detach().numpy()


# --- the training function (pure; runs on any worker) -----------------------------------


def _cycle(positions: np.ndarray, rng: np.random.Generator):
    while True:
        yield from rng.permutation(positions)


def train_student(payload: dict[str, Any]) -> dict[str, Any]:
    """Train a dual-head student; returns its state dict as numpy arrays.

    payload: options (KDOptions), n_classes, images ((N, 3, S, S) uint8 of the
    whole pool), labeled (pool positions), labels, teacher_logits ((N, C) or None), seed.
    """
    options: KDOptions = payload["options"]
    images = torch.as_tensor(payload["images"])
    labeled = np.asarray(payload["labeled"], dtype=np.int64)
    label_of = np.full(len(images), -1, dtype=np.int64)
    label_of[labeled] = np.asarray(payload["labels"], dtype=np.int64)
    teacher = payload.get("teacher_logits")
    if teacher is not None:
        teacher = torch.as_tensor(np.asarray(teacher), dtype=torch.float32)
    seed = int(payload["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    student = make_student(options.student, int(payload["n_classes"]), options.student_weights)
    mean, std = normalisation(options.student)

    n_lab = max(1, min(len(labeled), round(options.batch_size * options.labeled_fraction)))
    n_unl = 0 if teacher is None else options.batch_size - n_lab
    unlabeled = np.setdiff1d(np.arange(len(images)), labeled)
    if len(unlabeled) == 0:
        unlabeled = np.arange(len(images))
    steps = options.epochs * math.ceil(len(images) / options.batch_size)
    optimizer = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    lab_iter, unl_iter = _cycle(labeled, rng), _cycle(unlabeled, rng)
    student.train()
    losses = np.zeros((steps, 3), dtype=np.float32)
    for step in range(steps):
        rows = np.fromiter((next(lab_iter) for _ in range(n_lab)), np.int64, n_lab)
        if n_unl:
            rows = np.concatenate([rows, np.fromiter((next(unl_iter) for _ in range(n_unl)), np.int64, n_unl)])
        pixels = images[rows]
        if options.flip:
            flip = torch.as_tensor(rng.random(len(rows)) < 0.5)
            pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        z_ce, z_kd, _ = student(to_input(pixels, mean, std))
        mask = torch.zeros(len(rows), dtype=torch.bool)
        mask[:n_lab] = True
        labels = torch.as_tensor(np.maximum(label_of[rows], 0))
        if teacher is None:  # no-distill: plain cross-entropy
            loss, ce, kd = dho_loss(z_ce, z_kd, labels, mask, None, options.temperature, 1.0, 0.0)
        else:
            loss, ce, kd = dho_loss(z_ce, z_kd, labels, mask, teacher[rows], options.temperature, options.ce_weight,
                                    options.kd_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses[step] = (loss.item(), ce.item(), kd.item())
    state = {k: v.detach().cpu().numpy().copy() for k, v in student.state_dict().items()}
    return {"state_dict": state, "losses": losses}


@torch.no_grad()
def student_outputs(student: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 256):
    """(z_ce, z_kd, h) numpy arrays over uint8 ``images`` in eval mode."""
    student.eval()
    outs = [student(to_input(images[i : i + batch_size], mean, std)) for i in range(0, len(images), batch_size)]
    return tuple(torch.cat([o[k] for o in outs]).numpy() for k in range(3))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the learner ----------------------------------------------------------------------

_STATE_KEYS = ("pool_probs", "test_probs", "pool_embeddings", "teacher_test_probs")
class KDLearner(Learner):
    """A student distilled from the VLM teacher (``teacher_kind``: none, zeroshot or fewshot)."""

    teacher_kind: ClassVar[str]
    Options = KDOptions

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
        self._images: dict[str, torch.Tensor] = {}
        self._state: dict[str, np.ndarray] = {}

    # pixels, decoded once per learner
    def images(self, split: str) -> torch.Tensor:
        if split not in self._images:
            ds = self.experiment.dataset
            self._images[split] = decode_images([ds.load(i) for i in self.rows(split)], self.options.image_size)
        return self._images[split]

    def teacher_logits(self, positions: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray] | None:
        """This round's teacher logits on pool and test (None: no teacher): the zero-shot
        ``scale * cos(f, t)``, or CLAP's ``scale * cos(f, P)`` (train_active_others.py:534-541)."""
        if self.teacher_kind == "none":
            return None
        encoded = self.experiment.encoded
        if self.teacher_kind == "zeroshot":
            return {split: encoded.zeroshot_logits(self.rows(split)) for split in ("pool", "test")}
        feats = encoded.image_features
        opts = self.options
        protos = torch.as_tensor(fit_clap(
            feats[self.experiment.pool[positions]], labels, encoded.text_raw, encoded.logit_scale,
            lr=opts.clap_lr, repeat=opts.clap_repeat, batch_size=opts.batch_size, seed=seed))
        out = {}
        for split in ("pool", "test"):
            split_feats = torch.as_tensor(np.asarray(feats[self.rows(split)], dtype=np.float32))
            out[split] = clap_logits(split_feats, protos, encoded.logit_scale).numpy()
        return out

    def fit(self, positions: np.ndarray, labels: np.ndarray, seed: int, runner: TrainRunner) -> dict[str, Any]:
        positions, labels = np.asarray(positions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        start = time.perf_counter()
        teacher = self.teacher_logits(positions, labels, seed)
        teacher_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pool_images, test_images = self.images("pool"), self.images("test")
        decode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = runner.run(train_student, {
            "options": self.options,
            "n_classes": self.experiment.dataset.n_classes,
            "images": pool_images.numpy(),
            "labeled": positions,
            "labels": labels,
            "teacher_logits": None if teacher is None else teacher["pool"],
            "seed": int(seed),
        })
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        student = make_student(self.options.student, self.experiment.dataset.n_classes, "random")
        student.load_state_dict({k: torch.as_tensor(v) for k, v in result["state_dict"].items()})
        mean, std = normalisation(self.options.student)
        bs = self.options.inference_batch_size
        z_ce, z_kd, h = student_outputs(student, pool_images, mean, std, bs)
        t_ce, t_kd, _ = student_outputs(student, test_images, mean, std, bs)
        state = {"pool_embeddings": h.astype(np.float32)}
        if teacher is None:
            state["pool_probs"] = _softmax(z_ce).astype(np.float32)
            state["test_probs"] = _softmax(t_ce).astype(np.float32)
        else:
            a, b = self.options.alpha, self.options.beta
            state["pool_probs"] = combine_heads(torch.as_tensor(z_ce), torch.as_tensor(z_kd), a, b).numpy()
            state["test_probs"] = combine_heads(torch.as_tensor(t_ce), torch.as_tensor(t_kd), a, b).numpy()
            state["teacher_test_probs"] = _softmax(teacher["test"]).astype(np.float32)
        self._state = state
        return {
            "teacher_seconds": teacher_seconds, "decode_seconds": decode_seconds, "train_seconds": train_seconds,
            "inference_seconds": time.perf_counter() - start, "losses": result.get("losses"),
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
