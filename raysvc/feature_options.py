"""Settings of feature encoding, importable without torch or Ray (grid files validate them).

See :meth:`raysvc.features.FeatureStore.choose_encoder` for how ``encoder`` and
``ray_data_min_images`` pick the path, and :mod:`raysvc.service.raydata` for what the
Ray Data options do.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from raysvc.errors import ConfigError
from raysvc.options import Options, option

Encoder = Literal["auto", "local", "ray-data"]
ENCODERS: tuple[str, ...] = ("auto", "local", "ray-data")
# below this many images the in-process loop wins: Ray Data's start (each actor loads the
# backbone: ~20 s for conse-lite0 on a shared 2-core machine) costs more than spreading
# saves, and on one machine both run at about the same rate (bench/results/encode_<host>.md)
DEFAULT_RAY_DATA_MIN_IMAGES = 50_000


@dataclasses.dataclass(frozen=True)
class RayDataOptions(Options):
    """How the Ray Data encoder spreads one pass over the cluster."""

    actors: int = option(1, "encoder actors, each holding a copy of the backbone")
    threads: int = option(1, "torch threads per CPU encoder actor (it reserves as many CPUs)")
    num_gpus: float | None = option(None, "GPUs per encoder actor (None: 1 when the cluster has GPUs, else 0)")
    decode_cpus: float = option(1, "CPUs per decode/preprocess task")

    def check(self):
        if self.actors < 1:
            raise ConfigError(f"option actors={self.actors!r}: must be >= 1")
        if self.threads < 1:
            raise ConfigError(f"option threads={self.threads!r}: must be >= 1")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ConfigError(f"option num_gpus={self.num_gpus!r}: must be >= 0")
        if self.decode_cpus <= 0:
            raise ConfigError(f"option decode_cpus={self.decode_cpus!r}: must be > 0")
