"""How features are encoded and kept: one typed value for every entry point.

:class:`FeatureSettings` is what ``raysvc run``'s feature flags, a grid file's
``features:`` block, the encoder service and the feature cache all take; it imports
without torch or Ray, so grid files validate it before anything starts. See
:meth:`raysvc.featurecache.FeatureCache.choose_encoder` for how ``encoder`` and
``ray_data_min_images`` pick the path, and :mod:`raysvc.service.raydata` for what the
Ray Data options do.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from raysvc.errors import ConfigError, StorageError
from raysvc.options import Options, option

Encoder = Literal["auto", "local", "ray-data"]
# below this many images the in-process loop wins: Ray Data's start (each actor loads the
# backbone: ~20 s for conse-lite0 on a shared 2-core machine) costs more than spreading
# saves, and on one machine both run at about the same rate (bench/results/encode_<host>.md)
DEFAULT_RAY_DATA_MIN_IMAGES = 50_000


def default_cache_dir() -> Path:
    """``$RAYSVC_CACHE``, else ``~/.cache/raysvc/features`` (read when asked: a Ray worker
    sees the environment its runtime sets)."""
    return Path(os.environ.get("RAYSVC_CACHE") or Path.home() / ".cache" / "raysvc" / "features")


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


@dataclasses.dataclass(frozen=True)
class ServiceOptions(Options):
    """Where a grid's (or a cluster job's) encoder service actor runs."""

    name: str | None = option(None, "actor name (default raysvc-features-<grid name>)")
    num_cpus: float = option(0, "CPUs reserved for it")
    num_gpus: float = option(0, "GPUs for it (1 on a GPU cluster: it encodes on CUDA)")
    threads: int | None = option(None, "torch threads while encoding (default: num_cpus when >= 1, else up to 4)")
    detached: bool = option(False, "outlive the driver, shared with later grids")

    def check(self):
        for name in ("num_cpus", "num_gpus"):
            if getattr(self, name) < 0:
                raise ConfigError(f"option {name}={getattr(self, name)!r}: must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"option threads={self.threads!r}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class FeatureSettings(Options):
    """The local feature cache, the shared feature store behind it, and how a fresh encode runs."""

    cache_dir: str | None = option(None, "local feature cache (default $RAYSVC_CACHE or ~/.cache/raysvc/features)")
    store: str | None = option(None, "shared feature store behind the cache: s3://bucket/prefix or a folder")
    encoder: Encoder = option("auto", "auto (Ray Data for large datasets on a cluster), local or ray-data")
    ray_data_min_images: int = option(DEFAULT_RAY_DATA_MIN_IMAGES, "auto: Ray Data from this many images on")
    ray_data: RayDataOptions = dataclasses.field(default_factory=RayDataOptions,
                                                 metadata={"help": "the Ray Data encoder's actors and tasks"})
    dtype: Literal["float32", "float16"] = option("float32", "stored dtype (float16 halves large pools)")
    batch_size: int = option(128, "images encoded at once")
    service: ServiceOptions = dataclasses.field(default_factory=ServiceOptions,
                                                metadata={"help": "the encoder service actor (grids, cluster jobs)"})

    def check(self):
        if self.ray_data_min_images < 0:
            raise ConfigError(f"option ray_data_min_images={self.ray_data_min_images!r}: must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"option batch_size={self.batch_size!r}: must be >= 1")
        if self.store is not None:
            from raysvc.storage.features import open_feature_store

            try:
                open_feature_store(self.store)  # parses the destination; nothing is contacted
            except StorageError as exc:
                raise ConfigError(str(exc)) from None

    @classmethod
    def parse(cls, values, owner: str) -> FeatureSettings:
        """Also takes the nested blocks as mappings (a YAML ``features:`` block, CLI flags)."""
        values = dict(values or {})
        for key, kind in (("ray_data", RayDataOptions), ("service", ServiceOptions)):
            if isinstance(values.get(key), dict):
                values[key] = kind.parse(values[key], f"{owner} {key.replace('_', ' ')}")
        return super().parse(values, owner)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
