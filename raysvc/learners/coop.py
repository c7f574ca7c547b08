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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysvc.errors import ConfigError
from raysvc.learners.base import Experiment, Learner, TrainRunner

PROMPT_KINDS = ("unified", "classwise", "both")


@dataclasses.dataclass(frozen=True)
class CoOpConfig:
    n_ctx: int = 16
    prompt: str = "unified"
    epochs: int = 200
    lr: float = 0.002
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    init_std: float = 0.02

    def __post_init__(self):
        if self.prompt not in PROMPT_KINDS:
            raise ConfigError(f"coop.prompt must be one of {', '.join(PROMPT_KINDS)}, got {self.prompt!r}")
        for field in ("n_ctx", "epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"coop.{field} must be >= 1, got {getattr(self, field)}")
        if self.lr <= 0 or self.init_std <= 0:
            raise ConfigError("coop.lr and coop.init_std must be positive")


def _context_shapes(config: CoOpConfig, n_classes: int, token_dim: int) -> dict[str, tuple[int, ...]]:
    shapes = {"unified": (config.n_ctx, token_dim), "classwise": (n_classes, config.n_ctx, token_dim)}
    return shapes if config.prompt == "both" else {config.prompt: shapes[config.prompt]}


def prompt_logits(image_features: torch.Tensor, class_embeddings: list[torch.Tensor], scale: float) -> torch.Tensor:
    """Scaled cosine logits, averaging the cosines over the prompt kinds (eq. 14)."""
    cosines = torch.stack([image_features @ t.T for t in class_embeddings]).mean(0)
    return scale * cosines


def train_coop(payload: dict[str, Any]) -> dict[str, Any]:
    """Learn the context vectors; pure function of the payload (runs on any worker)."""
    from raysvc.backends import load_backend

    config = CoOpConfig(**payload["config"])
    backend = load_backend(payload["backbone"], payload["image_size"])
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


class CoOpLearner(Learner):
    name = "coop"

    def __init__(self, experiment: Experiment, config: CoOpConfig = CoOpConfig()):
        super().__init__(experiment)
        self.config = config
        self.class_embeddings: list[np.ndarray] | None = None  # None: zero-shot prompts

    def fit(self, labeled: np.ndarray, labels: np.ndarray, seed: int, runner: TrainRunner) -> None:
        exp = self.experiment
        contexts = runner.run(train_coop, {
            "backbone": exp.backbone,
            "image_size": exp.image_size,
            "classnames": list(exp.dataset.classnames),
            "features": exp.encoded.image_features[exp.pool[labeled]],
            "labels": np.asarray(labels),
            "config": dataclasses.asdict(self.config),
            "seed": seed,
        })
        from raysvc.backends import load_backend

        backend = load_backend(exp.backbone, exp.image_size)
        encoder = backend.prompt_encoder(exp.dataset.classnames, self.config.n_ctx)
        with torch.no_grad():
            self.class_embeddings = [encoder(torch.as_tensor(c)).numpy() for c in contexts.values()]

    def get_state(self) -> dict[str, np.ndarray]:
        return {} if self.class_embeddings is None else {f"class_embeddings_{i}": t for i, t in enumerate(self.class_embeddings)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.class_embeddings = [state[k] for k in sorted(state)] or None

    def predict_proba(self, split: str) -> np.ndarray:
        encoded = self.experiment.encoded
        rows = self.rows(split)
        if self.class_embeddings is None:
            return encoded.zeroshot_probs(rows)
        logits = prompt_logits(torch.as_tensor(encoded.image_features[rows]),
                               [torch.as_tensor(t) for t in self.class_embeddings], encoded.logit_scale)
        return logits.softmax(-1).numpy()
