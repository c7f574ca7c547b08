"""Grid files: typed settings and the cells (runs) they expand to, validated before Ray starts.

A grid file::

    name: demo                     # Tune experiment name (and the feature actor's suffix)
    out: s3://raysvc/demo          # results destination (``--out`` overrides)
    train: local                   # local | ray-train: where each round's training runs
    ray_train: {num_workers: 1, use_gpu: false, resources_per_worker: {CPU: 1}}
    cells_per_trial: 2             # pack this many runs into one Tune trial
    resources: {cpu: 1, gpu: 0}    # per trial
    features: {num_gpus: 0, num_cpus: 0, threads: null, cache_dir: null, detached: false, actor: null,
               store: null,                     # shared feature store: s3://bucket/features
               encoder: auto,                   # auto | local | ray-data
               ray_data_min_images: 50000,      # auto: Ray Data from this many images on
               ray_data_actors: 1, ray_data_threads: 1, ray_data_gpus: null}
    max_failures: 2                # Tune retries of a trial whose worker died
    checkpoint_seconds: 30         # checkpoint loop state at most this often (0: every round)
    max_concurrent_trials: null
    storage_path: null             # Tune's experiment storage (default: $RAYSVC_STATE_DIR/tune or ./.raysvc/tune)
    fixed:                         # RunSpec options shared by every cell
      rounds: 3
      learner_params: {epochs: 10}
    grid:                          # axes: a list is searched, a scalar is fixed
      dataset: [animal-mnist]
      strategy: [random, entropy]
      seed: [0, 1]
      learner_params.epochs: [5, 10]   # dotted keys reach into *_params

Cells are the cartesian product of the axes (in file order, so consecutive cells share
a dataset) over ``fixed``; each is a :class:`~raysvc.spec.RunSpec` whose names and
options are all validated here, so a typo fails in seconds, not inside a trial.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, Literal

from raysvc.spec import PARAM_FIELDS, RunSpec
from raysvc.errors import ConfigError
from raysvc.feature_options import DEFAULT_RAY_DATA_MIN_IMAGES, Encoder, RayDataOptions
from raysvc.options import Options, option


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


@dataclasses.dataclass(frozen=True)
class FeatureSettings(Options):
    """The shared encoder actor, the feature store behind it, and how it encodes."""

    actor: str | None = option(None, "actor name (default raysvc-features-<grid name>)")
    cache_dir: str | None = option(None, "its local feature cache (default $RAYSVC_CACHE or ~/.cache/raysvc/features)")
    num_cpus: float = option(0, "CPUs reserved for it")
    num_gpus: float = option(0, "GPUs for it (1 on a GPU cluster: it encodes on CUDA)")
    detached: bool = option(False, "outlive the driver, shared with later grids")
    threads: int | None = option(None, "torch threads while encoding")
    store: str | None = option(None, "shared feature store behind the cache: s3://bucket/prefix or a folder")
    encoder: Encoder = option("auto", "auto (Ray Data for large datasets on a cluster), local or ray-data")
    ray_data_min_images: int = option(DEFAULT_RAY_DATA_MIN_IMAGES, "auto: Ray Data from this many images on")
    ray_data_actors: int = option(1, "Ray Data encoder actors")
    ray_data_threads: int = option(1, "torch threads per Ray Data CPU encoder actor")
    ray_data_gpus: float | None = option(None, "GPUs per Ray Data encoder actor (None: 1 on GPU clusters)")

    def check(self):
        if self.ray_data_min_images < 0:
            raise ConfigError(f"option ray_data_min_images={self.ray_data_min_images!r}: must be >= 0")
        self.ray_data()  # its own range checks
        if self.store is not None:
            from raysvc.errors import StorageError
            from raysvc.storage.features import open_feature_store

            try:
                open_feature_store(self.store)  # parses the destination; nothing is contacted
            except StorageError as exc:
                raise ConfigError(str(exc)) from None

    def ray_data(self) -> dict[str, Any]:
        """The Ray Data options, as the FeatureService takes them."""
        options = RayDataOptions(actors=self.ray_data_actors, threads=self.ray_data_threads,
                                 num_gpus=self.ray_data_gpus)
        return options.to_dict()


@dataclasses.dataclass(frozen=True)
class GridSpec(Options):
    """A validated grid: its settings and the RunSpec dicts of its cells."""

    name: str = option("grid", "Tune experiment name")
    cells: tuple[dict[str, Any], ...] = option((), "the runs, as RunSpec dicts")
    out: str | None = option(None, "results destination")
    train: Literal["local", "ray-train"] = option("local", "where each round trains")
    ray_train: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"help": "Ray Train scaling"})
    cells_per_trial: int = option(1, "runs packed into one Tune trial")
    resources: Resources = dataclasses.field(default_factory=Resources, metadata={"help": "per trial"})
    features: FeatureSettings = dataclasses.field(default_factory=FeatureSettings, metadata={"help": "encoder actor"})
    max_failures: int = option(2, "Tune retries of a trial whose worker died (-1: forever)")
    checkpoint_seconds: float = option(30.0, "checkpoint a trial's loop state at most this often (0: every round)")
    max_concurrent_trials: int | None = option(None, "at most this many trials at once")
    storage_path: str | None = option(None, "Tune experiment storage")
    description: str = option("", "free text")

    def check(self):
        if self.cells_per_trial < 1:
            raise ConfigError(f"option cells_per_trial={self.cells_per_trial!r}: must be >= 1")
        if self.checkpoint_seconds < 0:
            raise ConfigError(f"option checkpoint_seconds={self.checkpoint_seconds!r}: must be >= 0")
        if self.max_failures < -1:
            raise ConfigError(f"option max_failures={self.max_failures!r}: must be >= -1")
        if not self.cells:
            raise ConfigError("the grid has no cells")
        if self.train == "ray-train":
            from raysvc.service.train import RayTrainRunner

            RayTrainRunner.from_options(self.ray_train)

    @property
    def run_ids(self) -> list[str]:
        return [RunSpec.from_dict(c).run_id for c in self.cells]

    @property
    def groups(self) -> list[list[dict[str, Any]]]:
        n = self.cells_per_trial
        return [list(self.cells[i : i + n]) for i in range(0, len(self.cells), n)]

    @property
    def actor_name(self) -> str:
        return self.features.actor or f"raysvc-features-{self.name}"

    @property
    def experiment_path(self) -> str:
        root = self.storage_path or default_storage_path()
        return f"{root.rstrip('/')}/{self.name}" if "://" in root else os.path.join(root, self.name)


def default_storage_path() -> str:
    """Tune state goes to the project's own folder, never to the home directory:
    ``$RAYSVC_STATE_DIR/tune`` (the local cluster script sets it to the checkout's
    ``.raysvc``), else ``.raysvc/tune`` under the working directory."""
    return os.path.join(os.environ.get("RAYSVC_STATE_DIR") or os.path.abspath(".raysvc"), "tune")


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    head, dot, rest = key.partition(".")
    if not dot:
        if head in PARAM_FIELDS and isinstance(value, dict):
            target[head] = {**target.get(head, {}), **value}
        else:
            target[head] = value
        return
    if head not in PARAM_FIELDS:
        raise ConfigError(f"grid key {key!r}: only {', '.join(PARAM_FIELDS)} take dotted sub-keys")
    target[head] = {**target.get(head, {}), rest: value}


def expand_cells(fixed: dict[str, Any] | None, axes: dict[str, Any] | None) -> tuple[dict[str, Any], ...]:
    """The cartesian product of ``axes`` (lists; scalars are fixed) over ``fixed``, each cell validated."""
    for what, block in (("fixed", fixed), ("grid", axes)):
        if block is not None and not isinstance(block, dict):
            raise ConfigError(f"grid file: {what} must be a mapping of run options")
    base: dict[str, Any] = {}
    for key, value in (fixed or {}).items():
        _set_dotted(base, key, copy.deepcopy(value))
    names, choices = [], []
    for key, value in (axes or {}).items():
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"grid axis {key!r} is an empty list")
            names.append(key)
            choices.append(value)
        else:
            _set_dotted(base, key, copy.deepcopy(value))
    cells = []
    for combo in itertools.product(*choices):
        cell = copy.deepcopy(base)
        for key, value in zip(names, combo):
            _set_dotted(cell, key, copy.deepcopy(value))
        spec = RunSpec.from_dict(cell)
        spec.validate()
        cells.append(spec.to_dict())
    ids = [RunSpec.from_dict(c).run_id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid repeats a cell (two cells have the same run_id)")
    return tuple(cells)


_SETTINGS = {f.name for f in dataclasses.fields(GridSpec)} - {"cells"}


def load_grid(source: str | os.PathLike | dict[str, Any], **overrides: Any) -> GridSpec:
    """A validated :class:`GridSpec` from a YAML file or a dict; ``overrides`` (not None) replace top-level keys."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        default_name = "grid"
    else:
        import yaml

        path = Path(source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"grid file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        default_name = path.stem
    if not isinstance(raw, dict):
        raise ConfigError("a grid file must be a mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(raw) - _SETTINGS - {"fixed", "grid"})
    if unknown:
        raise ConfigError(f"unknown grid option(s): {', '.join(unknown)}; options: "
                          f"{', '.join(sorted(_SETTINGS | {'fixed', 'grid'}))}")
    settings = {k: v for k, v in raw.items() if k in _SETTINGS}
    settings.setdefault("name", default_name)
    for key, kind in (("resources", Resources), ("features", FeatureSettings)):
        if key in settings:
            block = settings[key] if isinstance(settings[key], dict) else {"": settings[key]}
            settings[key] = kind.parse({str(k).lower() if key == "resources" else k: v for k, v in block.items()},
                                       f"grid {key}")
    return GridSpec.parse({**settings, "cells": expand_cells(raw.get("fixed"), raw.get("grid"))}, "grid")
