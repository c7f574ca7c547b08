"""Run a grid (:mod:`raysvc.service.gridspec`) as a Ray Tune experiment on the connected cluster.

Trials are named ``<dataset>/<strategy>/s<seed>`` after their first cell; Tune's console
table shows each trial's latest round, test accuracy, labeled images and oracle queries
(the first four metrics a trial reports). Features come
from one shared :class:`~raysvc.service.encoders.FeatureService` actor, which reports its
encoding progress on the driver's console.
"""

from __future__ import annotations

import dataclasses
import os
import time

from raysvc.spec import RunSpec
from raysvc.errors import ConfigError
from raysvc.service.gridspec import GridSpec
from raysvc.service.trial import TrialObserver, TrialSettings, grid_trainable


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


def group_name(cells: list[dict]) -> str:
    """``<dataset>/<strategy>/s<seed>`` of a trial's cells: their seeds listed when the cells
    differ only in seed (``emoji/cb/s0,1,2``), else the first cell's name and ``+N`` for the
    others packed with it."""
    first = cells[0]
    name = f"{os.path.basename(str(first['dataset']))}/{first['strategy']}/s"
    rest = [{k: v for k, v in cell.items() if k != "seed"} for cell in cells]
    if len(cells) > 1 and all(r == rest[0] for r in rest):
        return name + ",".join(str(cell["seed"]) for cell in cells)
    return name + str(first["seed"]) + (f"+{len(cells) - 1}" if len(cells) > 1 else "")


def trial_name(trial) -> str:
    return str(trial.config.get("cells", trial.trial_id))


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trainable(spec: GridSpec):
    from ray import tune

    resources = {k: v for k, v in dataclasses.asdict(spec.resources).items() if v}
    return tune.with_resources(grid_trainable, resources or {"cpu": 0})


def run_grid(spec: GridSpec, *, resume: bool = False, skip_existing: bool = False, verbose: int = 1,
             observer: TrialObserver | None = None) -> GridResult:
    """Run (or with ``resume`` restore) the grid on the connected Ray cluster (started locally
    if none is); ``observer`` is told what every trial does (tests)."""
    import ray
    from ray import tune

    from raysvc import storage
    from raysvc.provenance import driver_code_revision
    from raysvc.service.encoders import feature_service
    from raysvc.storage.features import open_feature_store

    if not spec.out:
        raise ConfigError("the grid has no results destination: set out: in the file or pass --out")
    storage.check_writable(spec.out)
    if spec.features.store:
        open_feature_store(spec.features.store).check_writable()  # before Ray: a bad store costs nothing
    # per-round checkpoints with num_to_keep force frequent (cheap, local) state snapshots
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        ray.init()
    start = time.perf_counter()
    features = spec.features
    actor = feature_service(
        spec.actor_name, cache_dir=features.cache_dir, num_cpus=features.num_cpus, num_gpus=features.num_gpus,
        detached=features.detached, threads=features.threads, store=features.store, encoder=features.encoder,
        ray_data_min_images=features.ray_data_min_images, ray_data=features.ray_data(),
    )
    cells = list(spec.cells)
    if skip_existing:
        existing = set(storage.list_runs(spec.out))
        cells = [c for c in cells if RunSpec.from_dict(c).run_id not in existing]
    groups: dict[str, list[dict]] = {}
    for first in range(0, len(cells), spec.cells_per_trial):
        group = cells[first : first + spec.cells_per_trial]
        name = group_name(group)
        groups[name if name not in groups else f"{name}#{first}"] = group
    settings = TrialSettings(
        grid=spec.name, groups=groups, out=spec.out, train=spec.train, ray_train=dict(spec.ray_train), actor=spec.actor_name,
        code_revision=driver_code_revision(), threads=max(1, int(spec.resources.cpu or 1)),
        checkpoint_seconds=spec.checkpoint_seconds, observer=observer or TrialObserver(),
    )
    path = spec.experiment_path
    errors: list[str] = []
    n_trials = 0
    tuner = None
    trainable = _trainable(spec)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    elif cells:
        if resume:
            print(f"nothing to resume at {path}: starting the grid afresh", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"cells": tune.grid_search(list(groups)), "settings": settings},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent_trials,
                trial_name_creator=trial_name,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=os.path.dirname(path) if "://" not in path else path.rsplit("/", 1)[0],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=verbose,
            ),
        )
    if tuner is not None:
        results = tuner.fit()
        n_trials = len(results)
        errors = [" ".join(str(e).split())[:500] for e in results.errors]
    try:
        counts = ray.get(actor.encode_counts.remote())
    finally:
        if not features.detached:
            ray.kill(actor)
    existing = set(storage.list_runs(spec.out))
    run_ids = spec.run_ids
    return GridResult(
        name=spec.name, out=spec.out, run_ids=run_ids, missing=[r for r in run_ids if r not in existing],
        errors=errors, encode_counts=counts, n_trials=n_trials,
        wall_seconds=time.perf_counter() - start, experiment_path=path,
    )
