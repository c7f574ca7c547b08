"""CoOp prompt learning on cached image embeddings (Zhou et al., IJCV 2022).

Sixteen context vectors, N(0, 0.02) and re-initialised every round, are learned in
front of each class name; image embeddings come from the feature store, so only the
frozen text encoder runs per step. ``prompt`` selects one context shared by all
classes ("unified"), one per class ("classwise"), or both, whose logits use the
mean of the two cosines (Kim et al. 2024, eq. 14).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from raysvc.errors import ConfigError
from raysvc.learners import register
from raysvc.learners.base import Learner, TrainRunner
from raysvc.options import Options, option

PromptKind = Literal["unified", "classwise", "both"]


@dataclasses.dataclass(frozen=True)
class CoOpConfig(Options):
    """CoOp's options; the defaults are the CoOp paper's (16 context vectors, SGD at lr 0.002)."""

    n_ctx: int = option(16, "learnable context vectors before each class name")
    prompt: PromptKind = option("unified", "one shared context, one per class, or both (eq. 14)")
    epochs: int = option(200, "training epochs per round")
    lr: float = option(0.002, "SGD learning rate (cosine schedule)")
    batch_size: int = option(32, "minibatch size")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    init_std: float = option(0.02, "std of the random context initialisation")

    def check(self):
        for field in ("n_ctx", "epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be >= 1")
        for field in ("lr", "init_std"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"option {field}={getattr(self, field)!r}: must be positive")


def _context_shapes(config: CoOpConfig, n_classes: int, token_dim: int) -> dict[str, tuple[int, ...]]:
    shapes = {"unified": (config.n_ctx, token_dim), "classwise": (n_classes, config.n_ctx, token_dim)}
    return shapes if config.prompt == "both" else {config.prompt: shapes[config.prompt]}


def prompt_logits(image_features: torch.Tensor, class_embeddings: list[torch.Tensor], scale: float) -> torch.Tensor:
    """Scaled cosine logits, averaging the cosines over the prompt kinds (eq. 14)."""
    cosines = torch.stack([image_features @ t.T for t in class_embeddings]).mean(0)
    return scale * cosines


def train_coop(payload: dict[str, Any]) -> dict[str, Any]:
    """Learn the context vectors; pure function of the payload (runs on any worker)."""
    config = CoOpConfig(**payload["config"])
    backend = payload["backbone"].load()
    encoder = backend.prompt_encoder(payload["classnames"], config.n_ctx)
    generator = torch.Generator().manual_seed(payload["seed"])
    contexts = {
        kind: torch.nn.Parameter(torch.randn(shape, generator=generator) * config.init_std)
        for kind, shape in _context_shapes(config, len(payload["classnames"]), encoder.token_dim).items()
    }
    features = torch.as_tensor(payload["features"], dtype=torch.float32)
    labels = torch.as_tensor(payload["labels"], dtype=torch.long)
    optimizer = torch.optim.SGD(contexts.values(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), config.batch_size):
            batch = order[start : start + config.batch_size]
            logits = prompt_logits(features[batch], [encoder(c) for c in contexts.values()], backend.logit_scale)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return {kind: c.detach().numpy() for kind, c in contexts.items()}


@register
class CoOpLearner(Learner):
    """CoOp prompt learning on cached image embeddings."""

    name = "coop"
    Options = CoOpConfig

    def __init__(self, experiment, options: CoOpConfig | None = None):
        super().__init__(experiment, options)
        self.class_embeddings: list[np.ndarray] | None = None  # None: zero-shot prompts

    def fit(self, positions: np.ndarray, labels: np.ndarray, seed: int, runner: TrainRunner) -> None:
        exp = self.experiment
        contexts = runner.run(train_coop, {
            "backbone": exp.backbone,
            "classnames": list(exp.dataset.classnames),
            "features": np.asarray(exp.encoded.image_features[exp.pool[positions]], dtype=np.float32),
            "labels": np.asarray(labels),
            "config": self.options.to_dict(),
            "seed": seed,
        })
        encoder = exp.backbone.load().prompt_encoder(exp.dataset.classnames, self.options.n_ctx)
        with torch.no_grad():
            self.class_embeddings = [encoder(torch.as_tensor(c)).numpy() for c in contexts.values()]

    def get_state(self) -> dict[str, np.ndarray]:
        return {} if self.class_embeddings is None else {f"class_embeddings_{i}": t for i, t in enumerate(self.class_embeddings)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.class_embeddings = [state[k] for k in sorted(state)] or None

    def predict_proba(self, split: str, chunk: int = 65_536) -> np.ndarray:
        encoded = self.experiment.encoded
        rows = self.rows(split)
        if self.class_embeddings is None:
            return encoded.zeroshot_probs(rows)
        classes = [torch.as_tensor(t) for t in self.class_embeddings]
        out = np.empty((len(rows), len(classes[0])), dtype=np.float32)
        with torch.no_grad():  # float32 row chunks: the store may hold float16
            for start in range(0, len(rows), chunk):
                x = torch.as_tensor(np.asarray(encoded.image_features[rows[start : start + chunk]], dtype=np.float32))
                out[start : start + len(x)] = prompt_logits(x, classes, encoded.logit_scale).softmax(-1).numpy()
        return out
