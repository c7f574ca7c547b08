"""Run a grid (:mod:`raysvc.service.gridspec`) as a Ray Tune experiment on the connected cluster.

Trials are named ``<dataset>/<strategy>/s<seed>`` after their runs; Tune's console table
shows each trial's latest round, test accuracy, labeled images and oracle queries (the
first four metrics a trial reports). Features come from one shared
:class:`~raysvc.service.encoders.EncoderService` actor, which reports its encoding
progress on the driver's console. Whoever wants to follow the trials as they go passes
Tune callbacks (``callbacks=``), which Tune calls in this process.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

from raysvc.errors import ConfigError
from raysvc.service.gridspec import Grid
from raysvc.service.trial import TrialRuns, TrialSettings, grid_trainable
from raysvc.spec import RunPlan


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


def group_name(plans: Sequence[RunPlan]) -> str:
    """``<dataset>/<strategy>/s<seed>`` of a trial's runs: their seeds listed when the runs
    differ only in seed (``emoji/cb/s0,1,2``), else the first run's name and ``+N`` for the
    others packed with it."""
    specs = [plan.spec for plan in plans]
    first = specs[0]
    name = f"{os.path.basename(str(first.dataset))}/{first.strategy}/s"
    rest = [{k: v for k, v in spec.to_dict().items() if k != "seed"} for spec in specs]
    if len(specs) > 1 and all(r == rest[0] for r in rest):
        return name + ",".join(str(spec.seed) for spec in specs)
    return name + str(first.seed) + (f"+{len(specs) - 1}" if len(specs) > 1 else "")


def trial_runs(plans: Sequence[RunPlan], per_trial: int) -> list[TrialRuns]:
    """The plans packed ``per_trial`` to a trial, in order, each trial named (uniquely)."""
    trials, names = [], set()
    for first in range(0, len(plans), per_trial):
        group = tuple(plans[first : first + per_trial])
        name = group_name(group)
        name = name if name not in names else f"{name}#{first}"
        names.add(name)
        trials.append(TrialRuns(name, group))
    return trials


def _trial_name(trial) -> str:
    return str(trial.config.get("runs", {}).get("name", trial.trial_id))


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def run_grid(grid: Grid, *, resume: bool = False, skip_existing: bool = False, verbose: int = 1,
             callbacks: Sequence = ()) -> GridResult:
    """Run (or with ``resume`` restore) the grid on the connected Ray cluster (started locally
    if none is); ``callbacks`` are Tune callbacks told of every trial's results."""
    import ray
    from ray import tune

    from raysvc import storage
    from raysvc.provenance import driver_code_revision
    from raysvc.service.encoders import start_encoder_service

    settings = grid.settings
    if not settings.out:
        raise ConfigError("the grid has no results destination: set out: in the file or pass --out")
    # per-round checkpoints with num_to_keep force frequent (cheap, local) state snapshots
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        ray.init()
    start = time.perf_counter()
    service = start_encoder_service(settings.features, settings.service_name)
    plans = list(grid.plans)
    if skip_existing:
        stored = storage.stored_runs(settings.out)
        for run_id in sorted(set(stored.incomplete) & set(grid.run_ids)):
            print(f"{run_id}: stored incompletely ({stored.incomplete[run_id]}), run again", flush=True)
        plans = [plan for plan in plans if plan.run_id not in stored.complete]
    trials = trial_runs(plans, settings.cells_per_trial)
    if verbose:
        print(f"grid {settings.name}: {len(plans)} runs in {len(trials)} trials ({settings.cells_per_trial} per "
              f"trial, train={settings.train}) -> {settings.out}", flush=True)
    shared = TrialSettings(
        grid=settings.name, train=settings.train, ray_train=settings.ray_train, service=settings.service_name,
        code_revision=driver_code_revision(), threads=max(1, int(settings.resources.cpu or 1)),
        checkpoint_seconds=settings.checkpoint_seconds,
    )
    path = settings.experiment_path
    errors: list[str] = []
    n_trials = 0
    tuner = None
    trainable = tune.with_resources(grid_trainable, settings.resources.tune_resources())
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    elif trials:
        if resume:
            print(f"nothing to resume at {path}: starting the grid afresh", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"runs": tune.grid_search([t.config() for t in trials]), "settings": shared},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=settings.max_concurrent_trials,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=settings.name,
                storage_path=os.path.dirname(path) if "://" not in path else path.rsplit("/", 1)[0],
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=list(callbacks),
                verbose=verbose,
            ),
        )
    if tuner is not None:
        results = tuner.fit()
        n_trials = len(results)
        errors = [" ".join(str(e).split())[:500] for e in results.errors]
    try:
        counts = ray.get(service.encode_counts.remote())
    finally:
        if not settings.features.service.detached:
            ray.kill(service)
    stored = set(storage.list_runs(settings.out))
    return GridResult(
        name=settings.name, out=settings.out, run_ids=grid.run_ids, missing=[r for r in grid.run_ids if r not in stored],
        errors=errors, encode_counts=counts, n_trials=n_trials,
        wall_seconds=time.perf_counter() - start, experiment_path=path,
    )
