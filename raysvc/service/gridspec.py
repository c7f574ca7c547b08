"""Grid files: typed settings and the runs they expand to, all resolved before Ray starts.

A grid file::

    name: demo                     # Tune experiment name (and the encoder service's suffix)
    out: s3://raysvc/demo          # results destination (``--out`` overrides)
    train: local                   # local | ray-train: where each round's training runs
    ray_train: {num_workers: 1, use_gpu: false, resources_per_worker: {CPU: 1}}
    cells_per_trial: 2             # pack this many runs into one Tune trial
    resources: {cpu: 1, gpu: 0}    # per trial
    features:                      # raysvc.feature_settings.FeatureSettings
      cache_dir: null
      store: null                  # shared feature store: s3://bucket/features
      encoder: auto                # auto | local | ray-data
      ray_data_min_images: 50000   # auto: Ray Data from this many images on
      ray_data: {actors: 1, threads: 1, num_gpus: null}
      service: {num_cpus: 0, num_gpus: 0, threads: null, detached: false, name: null}
    max_failures: 2                # Tune retries of a trial whose worker died
    retry_backoff_seconds: 30      # a retried trial waits this long first, doubling per failure
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
      data:                        # a case axis (any name that is no run option): a list of
        - {dataset: "{data_root}/dtd", split_file: "{data_root}/dtd/split_zhou_DescribableTextures.json"}
        - {dataset: "{data_root}/eurosat", split_file: "{data_root}/eurosat/split_zhou_EuroSAT.json"}
                                   # mappings, each setting several options of a cell together
    data_root: /data/coop          # replaces "{data_root}" in the cells' strings (--data-root)
    sizes:                         # named sizes: ``load_grid(..., size="smoke")`` (``--size``)
      smoke:                       # applies these on top of the file: settings replaced, fixed
        fixed: {rounds: 2}         # keys merged, grid axes replaced (an axis set to null is removed)
        grid: {data: null, dataset: [emoji, mnist-5k], seed: [0, 1]}
    study: {...}                   # what analysis.studies reads (the paper's table); not a setting

Cells are the cartesian product of the axes (in file order, so consecutive cells share
a dataset) over ``fixed``; each is a :class:`~raysvc.spec.RunSpec` resolved into its
:class:`~raysvc.spec.RunPlan` here, and :meth:`Grid.check_writable` contacts the
destination and the feature store, so a typo or a bad credential fails in seconds, not
inside a trial.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

from raysvc.errors import ConfigError, StorageError
from raysvc.feature_settings import FeatureSettings
from raysvc.options import Options, option
from raysvc.service.scaling import RayTrainOptions, Resources, Train
from raysvc.spec import PARAM_FIELDS, RunPlan, RunSpec


@dataclasses.dataclass(frozen=True)
class GridSettings(Options):
    """A grid's settings: where its runs go, how trials are packed and placed, the features."""

    name: str = option("grid", "Tune experiment name")
    out: str | None = option(None, "results destination")
    train: Train = option("local", "where each round trains")
    ray_train: RayTrainOptions = dataclasses.field(default_factory=RayTrainOptions,
                                                   metadata={"help": "Ray Train scaling (train: ray-train)"})
    cells_per_trial: int = option(1, "runs packed into one Tune trial")
    resources: Resources = dataclasses.field(default_factory=Resources, metadata={"help": "per trial"})
    features: FeatureSettings = dataclasses.field(default_factory=FeatureSettings,
                                                  metadata={"help": "feature cache, store and encoder service"})
    max_failures: int = option(2, "Tune retries of a trial whose worker died (-1: forever)")
    retry_backoff_seconds: float = option(
        30.0, "a trial retried after a failure first waits this long, doubled at each further failure (at most 600 s)")
    checkpoint_seconds: float = option(30.0, "checkpoint a trial's loop state at most this often (0: every round)")
    max_concurrent_trials: int | None = option(None, "at most this many trials at once")
    storage_path: str | None = option(None, "Tune experiment storage")
    store_probs: bool = option(False, "also store each round's pool probabilities (float16) with every run")
    description: str = option("", "free text")
    data_root: str | None = option(None, 'replaces "{data_root}" in the strings of fixed: and grid:')

    def check(self):
        if self.cells_per_trial < 1:
            raise ConfigError(f"option cells_per_trial={self.cells_per_trial!r}: must be >= 1")
        if self.checkpoint_seconds < 0:
            raise ConfigError(f"option checkpoint_seconds={self.checkpoint_seconds!r}: must be >= 0")
        if self.max_failures < -1:
            raise ConfigError(f"option max_failures={self.max_failures!r}: must be >= -1")
        if self.retry_backoff_seconds < 0:
            raise ConfigError(f"option retry_backoff_seconds={self.retry_backoff_seconds!r}: must be >= 0")

    @property
    def service_name(self) -> str:
        return self.features.service.name or f"raysvc-features-{self.name}"

    @property
    def experiment_path(self) -> str:
        root = self.storage_path or default_storage_path()
        return f"{root.rstrip('/')}/{self.name}" if "://" in root else os.path.join(root, self.name)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated grid: its settings and the plans of its cells, in file order."""

    settings: GridSettings
    plans: tuple[RunPlan, ...]

    @property
    def run_ids(self) -> list[str]:
        return [plan.run_id for plan in self.plans]

    def check_writable(self) -> None:
        """A one-line error unless the results destination and the shared feature store (when
        set) can be written: what a driver checks before it starts anything."""
        if self.settings.out is None:
            raise ConfigError("the grid has no results destination: set out: in the file or pass --out")
        self.plans[0].dest.check_writable()
        if self.settings.features.store:
            from raysvc.storage.features import open_feature_store

            open_feature_store(self.settings.features.store).check_writable()


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


def _is_case_axis(key: str, value: Any) -> bool:
    """A case axis: a name that is no run option, holding a list of mappings of run options."""
    head = key.partition(".")[0]
    return head not in _RUN_FIELDS and isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _set_case(target: dict[str, Any], axis: str, case: dict[str, Any]) -> None:
    for key, value in case.items():
        if _is_case_axis(key, [value]):
            raise ConfigError(f"grid axis {axis!r}: a case sets run options, not {key!r}")
        _set_dotted(target, key, copy.deepcopy(value))


def expand_cells(fixed: dict[str, Any] | None, axes: dict[str, Any] | None) -> tuple[RunSpec, ...]:
    """The cartesian product of ``axes`` (lists; scalars are fixed) over ``fixed``, as RunSpecs.
    A case axis (:func:`_is_case_axis`) contributes one choice per mapping, each setting
    all of its options at once (a dataset with its split file; a strategy with its options)."""
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
            if _is_case_axis(key, [value]):
                _set_case(cell, key, value)
            else:
                _set_dotted(cell, key, copy.deepcopy(value))
        cells.append(RunSpec.from_dict(cell))
    return tuple(cells)


def apply_size(raw: dict[str, Any], size: str) -> dict[str, Any]:
    """``raw`` with its ``sizes[size]`` applied: settings replaced, ``fixed`` keys merged, ``grid``
    axes replaced (an axis set to null removed); ``sizes`` itself dropped."""
    sizes = raw.get("sizes") or {}
    if not isinstance(sizes, dict) or size not in sizes:
        named = ", ".join(sorted(sizes)) if isinstance(sizes, dict) and sizes else "none"
        raise ConfigError(f"the grid has no size {size!r}; its sizes: {named}")
    change = sizes[size] or {}
    if not isinstance(change, dict):
        raise ConfigError(f"grid size {size!r} must be a mapping")
    out = {k: copy.deepcopy(v) for k, v in raw.items() if k != "sizes"}
    for key, value in change.items():
        if key in ("fixed", "grid"):
            if not isinstance(value, dict):
                raise ConfigError(f"grid size {size!r}: {key} must be a mapping")
            block = {**(out.get(key) or {}), **copy.deepcopy(value)}
            out[key] = {k: v for k, v in block.items() if v is not None}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _with_data_root(block: Any, root: str | None) -> Any:
    """``block`` with ``{data_root}`` replaced in every string (a one-line error when no root is set)."""
    if isinstance(block, dict):
        return {k: _with_data_root(v, root) for k, v in block.items()}
    if isinstance(block, list):
        return [_with_data_root(v, root) for v in block]
    if isinstance(block, str) and "{data_root}" in block:
        if root is None:
            raise ConfigError(f"grid value {block!r} names {{data_root}}: set data_root: in the file or pass "
                              "--data-root")
        return block.replace("{data_root}", root.rstrip("/"))
    return block


_SETTINGS = {f.name for f in dataclasses.fields(GridSettings)}
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunSpec)}
_NOT_SETTINGS = {"fixed", "grid", "sizes", "study"}
_BLOCKS = {"resources": Resources, "ray_train": RayTrainOptions}


def read_grid_file(path: str | os.PathLike) -> dict[str, Any]:
    """A grid file's YAML as a mapping (one-line errors for an unreadable or invalid file)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"grid file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError("a grid file must be a mapping")
    return raw


def load_grid(source: str | os.PathLike | dict[str, Any], *, features_overrides: dict[str, Any] | None = None,
              size: str | None = None, **overrides: Any) -> Grid:
    """A validated :class:`Grid` from a YAML file or a dict; ``size`` applies one of its
    ``sizes:`` (:func:`apply_size`), ``overrides`` (not None) then replace top-level keys,
    ``features_overrides`` keys of the ``features:`` block. Every cell is resolved into its
    plan, its destination opened (not yet contacted)."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        default_name = "grid"
    else:
        raw = read_grid_file(source)
        default_name = Path(source).stem
    if size is not None:
        raw = apply_size(raw, size)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if features_overrides:
        raw["features"] = {**(raw.get("features") or {}), **features_overrides}
    unknown = sorted(set(raw) - _SETTINGS - _NOT_SETTINGS)
    if unknown:
        raise ConfigError(f"unknown grid option(s): {', '.join(unknown)}; options: "
                          f"{', '.join(sorted(_SETTINGS | _NOT_SETTINGS))}")
    values = {k: v for k, v in raw.items() if k in _SETTINGS}
    values.setdefault("name", default_name)
    for key, kind in _BLOCKS.items():
        if key in values:
            block = values[key] if isinstance(values[key], dict) else {"": values[key]}
            values[key] = kind.parse({str(k).lower() if key == "resources" else k: v for k, v in block.items()},
                                     f"grid {key.replace('_', ' ')}")
    if "features" in values:
        block = values["features"] if isinstance(values["features"], dict) else {"": values["features"]}
        values["features"] = FeatureSettings.parse(block, "grid features")
    settings = GridSettings.parse(values, "grid")
    dest = _destination(settings)
    plans = tuple(cell.resolve(dest, store_probs=settings.store_probs)
                  for cell in expand_cells(_with_data_root(raw.get("fixed"), settings.data_root),
                                           _with_data_root(raw.get("grid"), settings.data_root)))
    if not plans:
        raise ConfigError("the grid has no cells")
    ids = [plan.run_id for plan in plans]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid repeats a cell (two cells have the same run_id)")
    return Grid(settings, plans)


def _destination(settings: GridSettings):
    """The opened (not yet contacted) results destination, or None."""
    if settings.out is None:
        return None
    from raysvc.storage import open_store

    try:
        return open_store(settings.out)
    except StorageError as exc:
        raise ConfigError(f"grid out: {exc}") from None
