"""Ray Tune grids of active-learning runs, described in YAML.

A grid file::

    name: demo                     # Tune experiment name (and the feature actor's suffix)
    out: s3://raysvc/demo          # results destination (``--out`` overrides)
    train: local                   # local | ray-train: where each round's training runs
    ray_train: {num_workers: 1, use_gpu: false, resources_per_worker: {CPU: 1}}
    cells_per_trial: 2             # pack this many runs into one Tune trial
    resources: {cpu: 1, gpu: 0}    # per trial
    features: {num_gpus: 0, num_cpus: 0, threads: null, cache_dir: null, detached: false, actor: null}
    max_failures: 2                # Tune retries of a trial whose worker died
    max_concurrent_trials: null
    storage_path: null             # Tune's experiment storage (default ~/ray_results)
    fixed:                         # RunConfig options shared by every cell
      rounds: 3
      learner_params: {epochs: 10}
    grid:                          # axes: a list is searched, a scalar is fixed
      dataset: [animal-mnist]
      strategy: [random, entropy]
      seed: [0, 1]
      learner_params.epochs: [5, 10]   # dotted keys reach into *_params

Cells are the cartesian product of the axes (in file order, so consecutive cells share
a dataset) over ``fixed``; each is validated as a :class:`RunConfig` before Ray starts.
Consecutive cells are packed ``cells_per_trial`` to a trial and Tune grid-searches over
the packs. A trial runs its cells one after another; after every completed round it
calls ``tune.report`` with the round's metrics and a ``tune.Checkpoint`` holding the
pickled :class:`LoopState` (and which cells are done), so a retried trial
(``FailureConfig(max_failures)``) resumes at its last completed round. A finished run is
written with :func:`raysvc.storage.write_run` (same run_id replaces: idempotent) before
the checkpoint marks it done. Features come from one shared :class:`FeatureService`.

``debug`` (tests): with ``pid_dir`` each trial appends ``EVENT ARG ARG PID TIME`` lines to
``PID_DIR/events.log`` (``start``, ``resume``, ``loaded``, ``round``, ``checkpointed``,
``writing``, ``written``); ``round_sleep`` pauses that many seconds after each
checkpoint (to leave time to kill a worker mid-trial).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from raysvc.config import RunConfig
from raysvc.errors import ConfigError

STATE_FILE = "raysvc_state.pkl"
PARAM_KEYS = ("strategy_params", "learner_params")
_GRID_KEYS = {
    "name", "out", "train", "ray_train", "cells_per_trial", "resources", "features", "max_failures",
    "max_concurrent_trials", "storage_path", "fixed", "grid", "debug", "description",
}  # fmt: skip


@dataclasses.dataclass
class GridSpec:
    name: str
    cells: list[dict[str, Any]]
    out: str | None = None
    train: str = "local"
    ray_train: dict[str, Any] = dataclasses.field(default_factory=dict)
    cells_per_trial: int = 1
    resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1})
    features: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_failures: int = 2
    max_concurrent_trials: int | None = None
    storage_path: str | None = None
    debug: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def run_ids(self) -> list[str]:
        return [RunConfig.from_dict(c).run_id for c in self.cells]

    @property
    def groups(self) -> list[list[dict[str, Any]]]:
        n = self.cells_per_trial
        return [self.cells[i : i + n] for i in range(0, len(self.cells), n)]

    @property
    def actor_name(self) -> str:
        return self.features.get("actor") or f"raysvc-features-{self.name}"

    @property
    def experiment_path(self) -> str:
        root = self.storage_path or os.path.join(os.path.expanduser("~"), "ray_results")
        return os.path.join(root, self.name) if "://" not in root else f"{root.rstrip('/')}/{self.name}"


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    head, dot, rest = key.partition(".")
    if not dot:
        if head in PARAM_KEYS and isinstance(value, dict):
            target[head] = {**target.get(head, {}), **value}
        else:
            target[head] = value
        return
    if head not in PARAM_KEYS:
        raise ConfigError(f"grid key {key!r}: only {', '.join(PARAM_KEYS)} take dotted sub-keys")
    target.setdefault(head, {})
    target[head] = dict(target[head])
    target[head][rest] = value


def expand_cells(fixed: dict[str, Any] | None, axes: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The cartesian product of ``axes`` (lists; scalars are fixed) over ``fixed``, validated."""
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
        config = RunConfig.from_dict(cell)
        config.validate_names()
        cells.append(config.to_dict())
    ids = [RunConfig.from_dict(c).run_id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid repeats a cell (two cells have the same run_id)")
    return cells


def load_grid(source: str | os.PathLike | dict[str, Any], **overrides: Any) -> GridSpec:
    """A validated :class:`GridSpec` from a YAML file or a dict; ``overrides`` replace top-level keys."""
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
    unknown = sorted(set(raw) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid option(s): {', '.join(unknown)}")
    cells = expand_cells(raw.get("fixed"), raw.get("grid"))
    spec = GridSpec(
        name=str(raw.get("name") or default_name),
        cells=cells,
        out=raw.get("out"),
        train=str(raw.get("train", "local")),
        ray_train=dict(raw.get("ray_train") or {}),
        cells_per_trial=raw.get("cells_per_trial", 1),
        resources={str(k).lower(): v for k, v in (raw.get("resources") or {"cpu": 1}).items()},
        features=dict(raw.get("features") or {}),
        max_failures=raw.get("max_failures", 2),
        max_concurrent_trials=raw.get("max_concurrent_trials"),
        storage_path=raw.get("storage_path"),
        debug=dict(raw.get("debug") or {}),
    )
    if spec.train not in ("local", "ray-train"):
        raise ConfigError(f"train must be 'local' or 'ray-train', got {spec.train!r}")
    if not isinstance(spec.cells_per_trial, int) or spec.cells_per_trial < 1:
        raise ConfigError(f"cells_per_trial must be a positive integer, got {spec.cells_per_trial!r}")
    if not isinstance(spec.max_failures, int) or spec.max_failures < -1:
        raise ConfigError(f"max_failures must be an integer >= -1, got {spec.max_failures!r}")
    if set(spec.resources) - {"cpu", "gpu", "memory"}:
        raise ConfigError(f"resources takes cpu, gpu, memory; got {sorted(spec.resources)}")
    unknown = sorted(set(spec.features) - {"actor", "cache_dir", "num_cpus", "num_gpus", "detached", "threads"})
    if unknown:
        raise ConfigError(f"unknown features option(s): {', '.join(unknown)}")
    if spec.train == "ray-train":
        from raysvc.service.train import RayTrainRunner

        RayTrainRunner.from_options(spec.ray_train)  # validate now
    if not spec.cells:
        raise ConfigError("the grid has no cells")
    return spec


# ------------------------------------------------------------------ trial
def _event(pid_dir: str | None, *words: Any) -> None:
    if not pid_dir:
        return
    line = " ".join(str(w) for w in (*words, os.getpid(), f"{time.time():.3f}")) + "\n"
    with open(os.path.join(pid_dir, "events.log"), "a") as fh:
        fh.write(line)
        fh.flush()


def _metrics(row: dict[str, Any], cell: int, cells_done: int) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    out.update(cell=cell, cells_done=cells_done)
    return out


def _report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="raysvc-ckpt-") as tmp:
        with open(os.path.join(tmp, STATE_FILE), "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restore_state() -> dict[str, Any]:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {"done": [], "current": None}
    with checkpoint.as_directory() as path:
        with open(os.path.join(path, STATE_FILE), "rb") as fh:
            return pickle.load(fh)


def grid_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: run the trial's cells, resuming from its last checkpoint."""
    import torch
    from ray import tune

    from raysvc import storage
    from raysvc.loop import load_experiment, run_loop
    from raysvc.records import to_table
    from raysvc.service.encoders import RayEncode
    from raysvc.service.manifest import run_manifest
    from raysvc.service.train import make_runner

    service = config["service"]
    cells: list[dict[str, Any]] = config["cells"]
    pid_dir = service.get("pid_dir")
    round_sleep = float(service.get("round_sleep") or 0)
    torch.set_num_threads(max(1, int(service.get("threads") or 1)))
    trial_id = tune.get_context().get_trial_id()

    state = _restore_state()
    done: list[str] = list(state["done"])
    current = state["current"]
    _event(pid_dir, "start", trial_id, len(done))
    runner = make_runner(service["train"], service.get("ray_train"))
    encode = RayEncode(service["actor"])
    try:
        for index, cell in enumerate(cells):
            run_config = RunConfig.from_dict(cell)
            run_id = run_config.run_id
            if run_id in done:
                continue
            start = time.perf_counter()
            loop_state = None
            if current is not None and current["run_id"] == run_id:
                loop_state = current["state"]
                _event(pid_dir, "resume", run_id, loop_state.completed)
            experiment = load_experiment(run_config, encode, _dataset)
            _event(pid_dir, "loaded", run_id, 0)

            def on_round(row: dict[str, Any], loop_state, index=index, run_id=run_id) -> None:
                _event(pid_dir, "round", run_id, row["round"])
                _report(_metrics(row, index, len(done)),
                        {"done": list(done), "current": {"run_id": run_id, "state": loop_state}})
                _event(pid_dir, "checkpointed", run_id, row["round"])
                if round_sleep:
                    time.sleep(round_sleep)

            rows = run_loop(run_config, experiment, runner, loop_state, on_round)
            current = None
            _event(pid_dir, "writing", run_id, len(rows))
            manifest = run_manifest(
                run_config.to_dict(), code_revision=service.get("code_revision"), grid=service["grid"],
                trial_id=trial_id, train=service["train"], ray_train=service.get("ray_train") or {},
                wall_seconds=time.perf_counter() - start,
            )
            storage.write_run(service["out"], run_id, to_table(rows), manifest)
            _event(pid_dir, "written", run_id, len(rows))
            done.append(run_id)
            _report({"cell": index, "cells_done": len(done), "run_written": 1, "run_id": run_id},
                    {"done": list(done), "current": None})
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()


@functools.lru_cache(maxsize=2)
def _dataset(name: str, split_file: str | None):
    """A trial runs several cells of one dataset; reloading it for each (seconds for the
    CSV-backed ones) would dominate small cells."""
    from raysvc.datasets import load_dataset

    return load_dataset(name, split_file)


def trial_name(trial) -> str:
    return f"cells_{trial.trial_id}"


# ----------------------------------------------------------------- driver
@dataclasses.dataclass
class GridResult:
    name: str
    out: str
    run_ids: list[str]
    missing: list[str]
    errors: list[str]
    encode_counts: dict[str, int]
    n_trials: int
    wall_seconds: float
    experiment_path: str

    @property
    def ok(self) -> bool:
        return not self.missing and not self.errors


def _trainable(spec: GridSpec):
    from ray import tune

    resources = {k: v for k, v in spec.resources.items() if v}
    return tune.with_resources(grid_trainable, resources or {"cpu": 0})


def run_grid(
    spec: GridSpec,
    *,
    resume: bool = False,
    skip_existing: bool = False,
    verbose: int = 1,
) -> GridResult:
    """Run (or with ``resume`` restore) the grid on the connected Ray cluster; see module doc."""
    import ray
    from ray import tune

    from raysvc import storage
    from raysvc.service.encoders import feature_service
    from raysvc.service.manifest import driver_code_revision

    if not spec.out:
        raise ConfigError("the grid has no results destination: set out: in the file or pass --out")
    # per-round checkpoints with num_to_keep force frequent (cheap, local) state snapshots
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        ray.init()
    start = time.perf_counter()
    storage.check_writable(spec.out)
    features = spec.features
    actor = feature_service(
        spec.actor_name, cache_dir=features.get("cache_dir"), num_cpus=features.get("num_cpus", 0),
        num_gpus=features.get("num_gpus", 0), detached=bool(features.get("detached", False)),
        threads=features.get("threads"),
    )
    cells = spec.cells
    if skip_existing:
        existing = set(storage.list_runs(spec.out))
        cells = [c for c in cells if RunConfig.from_dict(c).run_id not in existing]
    spec_run = dataclasses.replace(spec, cells=cells)
    service = {
        "grid": spec.name, "out": spec.out, "train": spec.train, "ray_train": spec.ray_train,
        "actor": spec.actor_name, "code_revision": driver_code_revision(),
        "threads": max(1, int(spec.resources.get("cpu") or 1)), "pid_dir": spec.debug.get("pid_dir"),
        "round_sleep": spec.debug.get("round_sleep", 0),
    }
    path = spec.experiment_path
    errors: list[str] = []
    n_trials = 0
    if cells or resume:
        trainable = _trainable(spec)
        if resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            if resume:
                print(f"nothing to resume at {path}: starting the grid afresh", flush=True)
            tuner = tune.Tuner(
                trainable,
                param_space={"cells": tune.grid_search(spec_run.groups), "service": service},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.max_concurrent_trials,
                    trial_name_creator=trial_name,
                    trial_dirname_creator=trial_name,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=os.path.dirname(path) if "://" not in path else path.rsplit("/", 1)[0],
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=verbose,
                ),
            ) if cells else None
        if tuner is not None:
            results = tuner.fit()
            n_trials = len(results)
            errors = [" ".join(str(e).split())[:500] for e in results.errors]
    try:
        counts = ray.get(actor.encode_counts.remote())
    finally:
        if not features.get("detached"):
            ray.kill(actor)
    existing = set(storage.list_runs(spec.out))
    run_ids = spec.run_ids
    return GridResult(
        name=spec.name, out=spec.out, run_ids=run_ids, missing=[r for r in run_ids if r not in existing],
        errors=errors, encode_counts=counts, n_trials=n_trials,
        wall_seconds=time.perf_counter() - start, experiment_path=path,
    )
