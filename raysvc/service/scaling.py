"""Where a grid's trials and a run's training go: typed, importable without Ray (grid files
and job flags validate them before anything starts)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from raysvc.errors import ConfigError
from raysvc.options import Options, option

Train = Literal["local", "ray-train"]


@dataclasses.dataclass(frozen=True)
class Resources(Options):
    """Ray resources of one trial."""

    cpu: float = option(1, "CPUs per trial (also its torch threads)")
    gpu: float = option(0, "GPUs per trial (fractions share a GPU)")
    memory: float | None = option(None, "bytes of memory per trial")

    def check(self):
        for name in ("cpu", "gpu"):
            if getattr(self, name) < 0:
                raise ConfigError(f"option {name}={getattr(self, name)!r}: must be >= 0")

    def tune_resources(self) -> dict[str, float]:
        """What ``tune.with_resources`` takes: the non-zero entries (none: a zero-CPU trial)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v} or {"cpu": 0}


@dataclasses.dataclass(frozen=True)
class RayTrainOptions(Options):
    """Ray Train's scaling of each round's training (``train: ray-train``)."""

    num_workers: int = option(1, "training workers")
    use_gpu: bool = option(False, "a GPU per worker (implied by a GPU entry in resources_per_worker)")
    resources_per_worker: dict[str, float] | None = option(
        None, "Ray resources per worker, e.g. {CPU: 1, GPU: 0.25} (fractions share a GPU)")
    max_failures: int = option(1, "restarts of a failed worker group (the training function is pure)")

    def check(self):
        if self.num_workers < 1:
            raise ConfigError(f"option num_workers={self.num_workers!r}: must be >= 1")
        gpus = (self.resources_per_worker or {}).get("GPU")
        if gpus is not None and gpus <= 0 and self.use_gpu:
            raise ConfigError("option resources_per_worker: GPU must be positive when use_gpu is set")

    @property
    def gpu(self) -> bool:
        return self.use_gpu or (self.resources_per_worker or {}).get("GPU", 0) > 0
