"""Run a grid (:mod:`raysvc.service.gridspec`) as a Ray Tune experiment on the connected cluster.

Trials are named ``<dataset>/<strategy>/s<seed>`` after their runs. Each trial's config
holds its own runs only, handed to Tune one trial at a time
(:class:`~raysvc.service.searcher.TrialConfigs`), so what a trial costs does not grow
with the grid's size (``python -m bench.grid --cells``). Tune's console table shows each
trial's latest round, test accuracy, labeled images and oracle queries (the first four
metrics a trial reports). Features come from one shared
:class:`~raysvc.service.encoders.EncoderService` actor, which reports its encoding
progress on the driver's console. Whoever wants to follow the trials as they go passes
Tune callbacks (``callbacks=``), which Tune calls in this process.

A grid is run by one driver at a time: the driver holds the grid's lease, a named actor
(``raysvc-grid-<name>``) in its own job, so a second driver of the same grid on the
cluster is refused with one line, and a dead driver's lease goes with it (``--resume``
then takes the grid over). The encoder service and the Tune experiment folder are named
after the grid too, so grids of other names never share them. While the grid runs, the
driver's S3 credentials stay out of its environment
(:mod:`raysvc.service.credentials`), where Tune would copy them into every trial's
logged runtime environment.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from raysvc.errors import ConfigError, StorageError, one_line
from raysvc.service.credentials import credentials_out_of_environment
from raysvc.service.gridspec import Grid
from raysvc.service.trial import TrialRuns, TrialSettings, grid_trainable
from raysvc.spec import RunPlan

LEASE_PREFIX = "raysvc-grid-"


@dataclasses.dataclass
class GridResult:
    """How a grid ended. ``missing``: runs the destination was seen not to hold;
    ``unconfirmed``: runs whose storing could not be checked (the destination could not be
    listed); ``errors``: failed trials, and what the driver could not do, one line each."""

    name: str
    out: str
    run_ids: list[str]
    missing: list[str]
    unconfirmed: list[str]
    errors: list[str]
    encode_counts: dict[str, int]
    n_trials: int
    wall_seconds: float
    experiment_path: str

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unconfirmed and not self.errors

    def summary(self) -> dict[str, Any]:
        """The driver's report (``jobs.grid`` prints it as JSON)."""
        return {
            "grid": self.name, "out": self.out, "runs": len(self.run_ids), "missing": self.missing,
            "unconfirmed": self.unconfirmed, "errors": self.errors, "trials": self.n_trials,
            "encode_counts": self.encode_counts, "wall_seconds": round(self.wall_seconds, 1),
            "experiment_path": self.experiment_path,
        }


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


class GridLease:
    """The lease of a running grid: a named actor only one driver can create (Ray refuses
    a second of the same name), owned by that driver's job so that it ends with it."""

    def __init__(self, holder: dict[str, str]):
        self._holder = holder

    def holder(self) -> dict[str, str]:
        return self._holder


def hold_grid(name: str):
    """This driver's lease of grid ``name``; a one-line ConfigError while another driver holds it."""
    import ray

    from raysvc.service.encoders import NAMESPACE

    lease_name = LEASE_PREFIX + name
    holder = {"pid": str(os.getpid()), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        # registered with the GCS before .remote() returns: a taken name (even by a driver
        # racing this one) raises ActorAlreadyExistsError, a ValueError, here
        return ray.remote(GridLease).options(name=lease_name, namespace=NAMESPACE, num_cpus=0,
                                              max_restarts=0).remote(holder)
    except ValueError:
        try:
            other = ray.get(ray.get_actor(lease_name, namespace=NAMESPACE).holder.remote(), timeout=30)
            who = f"driver pid {other['pid']} on {other['host']} since {other['since']}"
        except (ValueError, ray.exceptions.RayError):  # gone meanwhile, or not answering
            who = "another driver"
        raise ConfigError(f"grid {name} is running ({who}); wait for it or pass --name") from None


def run_grid(grid: Grid, *, resume: bool = False, skip_existing: bool = False, verbose: int = 1,
             callbacks: Sequence = ()) -> GridResult:
    """Run (or with ``resume`` restore) the grid on the connected Ray cluster (started locally
    if none is); ``callbacks`` are Tune callbacks told of every trial's results. Refused
    (ConfigError) while another driver runs a grid of the same name on the cluster."""
    import ray

    settings = grid.settings
    if not settings.out:
        raise ConfigError("the grid has no results destination: set out: in the file or pass --out")
    # per-round checkpoints with num_to_keep force frequent (cheap, local) state snapshots
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        ray.init()  # before the credentials leave the environment: its workers inherit them
    lease = hold_grid(settings.name)
    try:
        with credentials_out_of_environment():
            return _run(grid, resume=resume, skip_existing=skip_existing, verbose=verbose, callbacks=callbacks)
    finally:
        ray.kill(lease)


def _run(grid: Grid, *, resume: bool, skip_existing: bool, verbose: int, callbacks: Sequence) -> GridResult:
    import ray
    from ray import tune

    from raysvc import storage
    from raysvc.provenance import driver_code_revision
    from raysvc.service.encoders import start_encoder_service
    from raysvc.service.searcher import TrialConfigs

    settings = grid.settings
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
        checkpoint_seconds=settings.checkpoint_seconds, retry_backoff_seconds=settings.retry_backoff_seconds,
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
            param_space={"settings": shared},
            tune_config=tune.TuneConfig(
                search_alg=TrialConfigs([{"runs": t.config()} for t in trials]),
                num_samples=len(trials),
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
        try:
            results = tuner.fit()
        except tune.TuneError as exc:
            errors.append(one_line(f"the Tune experiment failed: {exc}"))
        else:
            n_trials = len(results)
            errors = [one_line(e) for e in results.errors]
    counts: dict[str, int] = {}
    try:
        counts = ray.get(service.encode_counts.remote())
    except ray.exceptions.RayError as exc:
        errors.append(one_line(f"the encoder service {settings.service_name} did not answer: {exc}"))
    finally:
        if not settings.features.service.detached:
            ray.kill(service)
    # the report must come whatever happened: runs the destination cannot confirm are listed
    try:
        stored = set(storage.list_runs(settings.out))
        missing, unconfirmed = [r for r in grid.run_ids if r not in stored], []
    except StorageError as exc:
        errors.append(one_line(f"cannot confirm the stored runs: {exc}"))
        missing, unconfirmed = [], grid.run_ids
    return GridResult(
        name=settings.name, out=settings.out, run_ids=grid.run_ids, missing=missing, unconfirmed=unconfirmed,
        errors=errors, encode_counts=counts, n_trials=n_trials,
        wall_seconds=time.perf_counter() - start, experiment_path=path,
    )
