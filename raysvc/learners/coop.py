"""CoOp prompt learning on cached image embeddings (Zhou et al., IJCV 2022).

Context vectors, re-initialised every round, are learned in front of each class name;
image embeddings come from the feature store, so only the frozen text encoder runs per
step. ``prompt`` selects one context shared by all classes ("unified"), one per class
("classwise"), or both, whose logits use the mean of the two cosines (Kim et al. 2024,
eq. 14).

The context starts as 16 random vectors, N(0, 0.02) (the papers' setting), or as the
embeddings of ``ctx_init``'s words (CoOp's ``ctx_init``: with "a photo of a" the
untrained prompt is that zero-shot prompt). Two options keep the prior the VLM had:
``kg_weight`` pulls each learned class embedding towards the zero-shot one during
training (KgCoOp, Yao et al., CVPR 2023, eq. 7: lambda x mean_c ||w_c - w_c^clip||^2),
and ``prior_weight`` mixes the zero-shot cosines into the logits, in training and
prediction alike.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from raysvc.chunks import COMPUTE_ROWS
from raysvc.errors import ConfigError, RaysvcBug
from raysvc.lazyrows import LazyRows
from raysvc.learners import LEARNERS
from raysvc.learners.base import Learner, TrainRunner
from raysvc.learners.devices import DEVICE_HELP, Device, training_device
from raysvc.options import Options, option

PromptKind = Literal["unified", "classwise", "both"]
LAZY_POOL = 100_000


@dataclasses.dataclass(frozen=True)
class CoOpOptions(Options):
    """CoOp's options. ``variant`` fills in every option left unset (None):

    * ``keep-prior`` (default): the context starts as "a photo of a", KgCoOp's pull (8) and
      half the logits from the zero-shot cosines keep what the prompt knew; SGD at lr 0.01
      for 50 epochs of batches of 128. Measured on the emoji set with one to eight labels
      per class (``bench.coop_prior``): the only setting at or above zero-shot at every k.
    * ``official``: as ml-postech/active-prompt-learning @105a662 trains it
      (``scripts/alvlm/main.sh``, ``configs/trainers/ALVLM/*.yaml``): 16 random class-specific
      context vectors (CSC), SGD at lr 0.002 for 200 epochs of batches of 32, cosine schedule
      after one warm-up epoch at lr 1e-5.
    """

    variant: Literal["keep-prior", "official"] = option("keep-prior", "fills in the options left unset (see above)")
    n_ctx: int = option(16, "learnable context vectors before each class name (random context)")
    prompt: PromptKind | None = option(None, "one shared context, one per class, or both (eq. 14)")
    epochs: int | None = option(None, "training epochs per round")
    lr: float | None = option(None, "SGD learning rate (cosine schedule)")
    batch_size: int | None = option(None, "minibatch size")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    init_std: float = option(0.02, "std of the random context initialisation")
    ctx_init: str | None = option(None, "start the context as these words (e.g. 'a photo of a'), n_ctx being "
                                        "their token count; 'random': N(0, init_std) draws")
    kg_weight: float | None = option(None, "KgCoOp: weight of mean_c ||w_c - zero-shot w_c||^2 in the loss")
    prior_weight: float | None = option(None, "share of the zero-shot cosines in the logits (0: CoOp's)")
    warmup_epochs: int | None = option(None, "epochs at lr 1e-5 before the cosine schedule")
    device: Device = option("auto", DEVICE_HELP)

    def __post_init__(self):
        self.fill_unset(VARIANTS.get(self.variant, {}))
        super().__post_init__()

    def check(self):
        for field in ("n_ctx", "epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be >= 1")
        for field in ("lr", "init_std"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be positive")
        if self.kg_weight < 0:
            raise ConfigError(f"option kg_weight={self.kg_weight!r}: must be >= 0")
        if not 0 <= self.prior_weight < 1:
            raise ConfigError(f"option prior_weight={self.prior_weight!r}: must be in [0, 1)")
        if not self.ctx_init.strip():
            raise ConfigError("option ctx_init='': give words, or 'random' for a random context")
        if self.warmup_epochs < 0:
            raise ConfigError(f"option warmup_epochs={self.warmup_epochs!r}: must be >= 0")

    @property
    def random_context(self) -> bool:
        return self.ctx_init == "random"


VARIANTS = {
    "keep-prior": {"prompt": "unified", "ctx_init": "a photo of a", "epochs": 50, "lr": 0.01, "batch_size": 128,
                   "kg_weight": 8.0, "prior_weight": 0.5, "warmup_epochs": 0},
    "official": {"prompt": "classwise", "ctx_init": "random", "epochs": 200, "lr": 0.002, "batch_size": 32,
                 "kg_weight": 0.0, "prior_weight": 0.0, "warmup_epochs": 1},
}
WARMUP_LR = 1e-5


def _kinds(options: CoOpOptions) -> tuple[str, ...]:
    return ("unified", "classwise") if options.prompt == "both" else (options.prompt,)


def initial_contexts(options: CoOpOptions, encoder, n_classes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The context of every prompt kind before training: ``ctx_init``'s word embeddings
    (shared, or copied to every class), else N(0, init_std) draws."""
    if not options.random_context:
        words = encoder.word_embeddings(options.ctx_init).float()
        return {k: words.clone() if k == "unified" else words.expand(n_classes, -1, -1).clone() for k in _kinds(options)}
    shapes = {"unified": (options.n_ctx, encoder.token_dim), "classwise": (n_classes, options.n_ctx, encoder.token_dim)}
    return {k: torch.randn(shapes[k], generator=generator) * options.init_std for k in _kinds(options)}


def context_length(options: CoOpOptions, backbone) -> int:
    """The number of context slots: ``ctx_init``'s token count, else ``n_ctx``."""
    if options.random_context:
        return options.n_ctx
    return len(backbone.prompt_encoder(["x"], 1).word_embeddings(options.ctx_init))


def warmup_cosine(options: CoOpOptions, steps_per_epoch: int):
    """The learning-rate factor of each step: ``WARMUP_LR`` for ``warmup_epochs``, then a cosine
    over all ``epochs`` (dassl's ConstantWarmupScheduler over CosineAnnealingLR, stepped per batch)."""
    total = options.epochs * steps_per_epoch
    warm = options.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return WARMUP_LR / options.lr
        return 0.5 * (1.0 + math.cos(math.pi * step / total))

    return factor


def prompt_logits(image_features: torch.Tensor, class_embeddings: list[torch.Tensor], scale: float,
                  prior: torch.Tensor | None = None, prior_weight: float = 0.0) -> torch.Tensor:
    """Scaled cosine logits, averaging the cosines over the prompt kinds (eq. 14), with a
    ``prior_weight`` share of the cosines to the zero-shot class embeddings ``prior``."""
    cosines = torch.stack([image_features @ t.T for t in class_embeddings]).mean(0)
    if prior is not None and prior_weight:
        cosines = (1.0 - prior_weight) * cosines + prior_weight * (image_features @ prior.T)
    return scale * cosines


def train_coop(payload: dict[str, Any]) -> dict[str, Any]:
    """Learn the context vectors on the device ``options.device`` names; pure function of the
    payload (runs on any worker). Returns ``contexts`` (each prompt kind's, a numpy array),
    ``steps``, ``device`` and ``train_seconds`` (the optimisation alone).

    payload: options (CoOpOptions), backbone (BackboneRef), classnames, features (the
    labeled images' embeddings), labels, text_features (the zero-shot class embeddings), seed.
    """
    options: CoOpOptions = payload["options"]
    device = training_device(options.device)
    # the process's shared backbone moves to the device: later prompts of this process encode there too
    backbone = payload["backbone"].load().to(device)
    encoder = backbone.prompt_encoder(payload["classnames"], context_length(options, backbone))
    # the draws come from a CPU generator, so a seed gives the same context on every device
    generator = torch.Generator().manual_seed(payload["seed"])
    contexts = {kind: torch.nn.Parameter(ctx.to(device))
                for kind, ctx in initial_contexts(options, encoder, len(payload["classnames"]), generator).items()}
    # copies: the arrays may arrive as read-only views of Ray's object store
    features = torch.tensor(np.asarray(payload["features"], dtype=np.float32), device=device)
    labels = torch.as_tensor(np.asarray(payload["labels"]), dtype=torch.long, device=device)
    prior = torch.tensor(np.asarray(payload["text_features"], dtype=np.float32), device=device)
    optimizer = torch.optim.SGD(contexts.values(), lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / options.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(options, steps_per_epoch))
    start_time = time.perf_counter()
    for _ in range(options.epochs):
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(labels), options.batch_size):
            batch = order[start : start + options.batch_size]
            classes = [encoder(c) for c in contexts.values()]
            logits = prompt_logits(features[batch], classes, backbone.logit_scale, prior, options.prior_weight)
            loss = F.cross_entropy(logits, labels[batch])
            if options.kg_weight:
                loss = loss + options.kg_weight * kgcoop_penalty(classes, prior)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    result = {kind: c.detach().cpu().numpy() for kind, c in contexts.items()}  # waits for the device
    return {"contexts": result, "steps": options.epochs * steps_per_epoch, "device": str(device),
            "train_seconds": time.perf_counter() - start_time}


def kgcoop_penalty(classes: list[torch.Tensor], prior: torch.Tensor) -> torch.Tensor:
    """KgCoOp (Yao et al., CVPR 2023) eq. 7 without its lambda: mean over classes of
    ||w_c - w_c^clip||^2, the learned class embedding's squared distance to the zero-shot
    one; averaged over the prompt kinds (unified, class-wise) in use."""
    return torch.stack([(t - prior).pow(2).sum(-1).mean() for t in classes]).mean()


@LEARNERS.register
class CoOpLearner(Learner):
    """CoOp prompt learning on cached image embeddings."""

    name = "coop"
    Options = CoOpOptions
    one_worker = "CoOp's context vectors train on one worker: its labeled set is small"

    def __init__(self, experiment, options: CoOpOptions | None = None):
        super().__init__(experiment, options)
        self.class_embeddings: list[np.ndarray] | None = None  # None: zero-shot prompts
        self.contexts: dict[str, np.ndarray] | None = None  # of this process's last fit (base-to-novel)

    def fit(self, positions: np.ndarray, labels: np.ndarray, seed: int, runner: TrainRunner) -> dict[str, Any]:
        exp = self.experiment
        result = runner.run(train_coop, {
            "backbone": exp.backbone,
            "classnames": list(exp.dataset.classnames),
            "features": np.asarray(exp.encoded.image_features[exp.pool[positions]], dtype=np.float32),
            "labels": np.asarray(labels),
            "text_features": np.asarray(exp.encoded.text_features, dtype=np.float32),
            "options": self.options,
            "seed": seed,
        }, data_parallel=self.data_parallel)
        self.class_embeddings = self._class_embeddings(exp.dataset.classnames, result["contexts"].values())
        self.contexts = dict(result["contexts"])
        return {"device": result["device"], "steps": result["steps"], "train_seconds": result["train_seconds"]}

    def _class_embeddings(self, classnames, contexts) -> list[np.ndarray]:
        """Each learned context before ``classnames``, through the prompt encoder on the device
        the options name (where training left this process's shared backbone)."""
        device = training_device(self.options.device)
        backbone = self.experiment.backbone.load().to(device)
        encoder = backbone.prompt_encoder(list(classnames), context_length(self.options, backbone))
        with torch.no_grad():
            return [encoder(torch.as_tensor(c, device=device)).cpu().numpy() for c in contexts]

    def get_state(self) -> dict[str, np.ndarray]:
        return {} if self.class_embeddings is None else {f"class_embeddings_{i}": t for i, t in enumerate(self.class_embeddings)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.class_embeddings = [state[k] for k in sorted(state)] or None

    def predict_proba(self, split: str) -> np.ndarray:
        return self._probs(self.rows(split))

    @classmethod
    def transfers_to_new_classes(cls, options: CoOpOptions) -> bool:
        """A unified context goes in front of any class name (CoOp's base-to-novel); class-wise
        contexts exist only for the classes trained on."""
        return options.prompt == "unified"

    def novel_class_probs(self, rows: np.ndarray, classnames: tuple[str, ...], text_features: np.ndarray) -> np.ndarray:
        """The learned unified context in front of ``classnames`` (CoOp's evaluation on new classes;
        the CB paper's Tab. 3), mixed with their zero-shot cosines by ``prior_weight`` as in training;
        zero-shot before any fit."""
        encoded = self.experiment.encoded
        x = torch.as_tensor(np.asarray(encoded.image_features[rows], dtype=np.float32))
        prior = torch.tensor(np.asarray(text_features, dtype=np.float32))
        if self.class_embeddings is None:
            classes = [prior]
        elif self.contexts is None:
            raise RaysvcBug("novel classes need the context of this process's last fit, not a restored state")
        else:
            classes = [torch.as_tensor(t) for t in self._class_embeddings(classnames, [self.contexts["unified"]])]
        with torch.no_grad():
            logits = prompt_logits(x, classes, encoded.logit_scale, prior, self.options.prior_weight)
        return logits.softmax(-1).numpy()

    def class_text_features(self) -> np.ndarray:
        """Once fitted, the T with ``prompt_logits = scale * f . T^T``: the mean of the prompt kinds'
        learned class embeddings (eq. 14 averages their cosines), mixed with the zero-shot ones by
        ``prior_weight``. With one prompt kind and no prior (``variant=official``) these are the
        learned prompts' unit-norm class embeddings, as APL @105a662 ``CustomCLIP.forward`` returns
        them with ``get_text_feature=True`` (``trainers/alvlm.py:309, 320, 340-342``) to CB and
        CB+SQ once a prompt has been trained (``cb.py:74-75``, ``cbsq.py:74-75``: ``idx != 0``).
        Before the first fit, the zero-shot prompts' (``cb.py:77``: ``model_inference``)."""
        if self.class_embeddings is None:
            return super().class_text_features()
        learned = np.mean(np.stack(self.class_embeddings), axis=0, dtype=np.float32)
        weight = self.options.prior_weight
        if not weight:
            return learned
        prior = np.asarray(self.experiment.encoded.text_features, dtype=np.float32)
        return ((1.0 - weight) * learned + weight * prior).astype(np.float32)

    def pool_probs(self):
        """Above :data:`LAZY_POOL` images, probabilities computed where a strategy reads them
        (1.28M x 1000 float32 would be 5.1 GB); below, the array."""
        pool = self.experiment.pool
        if len(pool) <= LAZY_POOL:
            return self._probs(pool)
        return LazyRows(len(pool), self.experiment.dataset.n_classes, lambda r: self._probs(pool[r]))

    def _probs(self, rows: np.ndarray, chunk: int = COMPUTE_ROWS) -> np.ndarray:
        encoded = self.experiment.encoded
        if self.class_embeddings is None:
            return encoded.zeroshot_probs(rows)
        device = training_device(self.options.device)
        classes = [torch.as_tensor(t, device=device) for t in self.class_embeddings]
        # a copy: may be read-only
        prior = torch.tensor(np.asarray(encoded.text_features, dtype=np.float32), device=device)
        out = np.empty((len(rows), len(classes[0])), dtype=np.float32)
        with torch.no_grad():  # float32 row chunks: the store may hold float16
            for start in range(0, len(rows), chunk):
                x = torch.as_tensor(np.asarray(encoded.image_features[rows[start : start + chunk]], dtype=np.float32),
                                    device=device)
                logits = prompt_logits(x, classes, encoded.logit_scale, prior, self.options.prior_weight)
                out[start : start + len(x)] = logits.softmax(-1).cpu().numpy()
        return out
