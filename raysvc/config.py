"""The typed run configuration, validated once at the edge (CLI, job, Tune trial)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from raysvc.errors import ConfigError


# Options added after results were first stored stay out of the run id while they hold
# their default, so rerunning an older configuration keeps its id and replaces its files.
_ID_OPTIONAL = {"initial_per_class": 0}
_NO_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One active-learning run: a dataset, a strategy, a learner, a backbone, a seed.

    budget: oracle queries per round; None means one per class.
    image_size: input side for the backbone; None picks its default.
    per_class: keep at most this many images per class (small pools), None keeps all.
    initial_per_class: label this many random pool images of every class before round 1
        (ActiveKD's k-shot start); the learner trains on them in a recorded round 0.
    split_seed: seeds the pool/test split and subsampling, shared by all seeds of a grid
        so runs are compared on the same test set.
    """

    dataset: str = "animal-mnist"
    strategy: str = "cbsq"
    learner: str = "coop"
    backbone: str = "conse-lite0"
    rounds: int = 8
    budget: int | None = None
    seed: int = 0
    image_size: int | None = None
    test_fraction: float = 0.2
    per_class: int | None = None
    initial_per_class: int = 0
    split_seed: int = 0
    split_file: str | None = None
    strategy_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    learner_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("dataset", "strategy", "learner", "backbone"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string")
        for name in ("rounds", "seed", "split_seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not isinstance(self.initial_per_class, int) or isinstance(self.initial_per_class, bool) \
                or self.initial_per_class < 0:
            raise ConfigError(f"initial_per_class must be an integer >= 0, got {self.initial_per_class!r}")
        for name in ("budget", "image_size", "per_class"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("strategy_params", "learner_params"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping")

    def validate_names(self) -> None:
        """Check every name against its registry (cheap: loads no weights or images)."""
        from raysvc.backends import validate_backbone
        from raysvc.datasets import REGISTRY
        from raysvc.errors import UnknownNameError
        from raysvc.learners import validate_learner
        from raysvc.strategies import make_strategy

        if self.dataset not in REGISTRY and not Path(self.dataset).expanduser().is_dir():
            if "/" in self.dataset:
                raise ConfigError(f"dataset folder {self.dataset!r} does not exist")
            raise UnknownNameError("dataset", self.dataset, REGISTRY)
        make_strategy(self.strategy, **self.strategy_params)
        validate_learner(self.learner)
        validate_backbone(self.backbone)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown run option(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_id(self) -> str:
        """Deterministic: a rerun of the same cell gets the same id and replaces its results."""
        values = {k: v for k, v in self.to_dict().items() if _ID_OPTIONAL.get(k, _NO_DEFAULT) != v}
        blob = json.dumps(values, sort_keys=True, default=str)
        readable = f"{Path(self.dataset).name}-{self.strategy}-{self.learner}-s{self.seed}"
        return f"{readable}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
