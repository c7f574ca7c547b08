"""One Tune trial of a grid: its runs, one after another, through :func:`raysvc.run.execute`.

A trial's config holds what every trial shares (:class:`TrialSettings`) and its own
runs (``{"name": ..., "plans": ...}`` of a :class:`TrialRuns`: nothing of the other
trials'), so Tune's state per trial stays the same size whatever the grid's size; Tune
keeps the objects in it (settings, plans) once, by reference, and the name as is. After every completed round
the trial reports the round's metrics (``test_acc``, ``n_queried``, ...); at most every
``checkpoint_seconds`` (and whenever a run is done) the report carries a
``tune.Checkpoint`` holding the pickled :class:`~raysvc.loop.LoopState` and which runs
are done, so a retried trial (``FailureConfig(max_failures)``) resumes at its last
checkpointed round. Rounds are seeded, so redoing the few since then gives the same
rows. A finished run is written (same run_id replaces: idempotent) before the
checkpoint marks it done, and the report that marks it carries ``run_written``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pickle
import tempfile
import time
from typing import Any

from raysvc.registry import Part
from raysvc.run import RunHooks
from raysvc.service.scaling import RayTrainOptions, Train
from raysvc.spec import RunPlan

STATE_FILE = "raysvc_state.pkl"
# the metrics of every round's report, in the order Tune's console table shows them
REPORTED = ("round", "test_acc", "n_labeled", "n_queried", "n_pseudo", "zeroshot_acc", "teacher_acc",
            "select_seconds", "train_seconds")


@dataclasses.dataclass(frozen=True)
class TrialSettings:
    """What every trial of a grid shares (handed to Tune once, in the param space)."""

    grid: str
    train: Train
    ray_train: RayTrainOptions
    service: str  # the encoder service actor's name
    code_revision: str
    threads: int
    checkpoint_seconds: float = 30.0


@dataclasses.dataclass(frozen=True)
class TrialRuns:
    """One trial's runs, and the name Tune shows the trial by."""

    name: str
    plans: tuple[RunPlan, ...]

    def config(self) -> dict[str, Any]:
        """The trial's value in Tune's grid search (a dict: Tune keeps the name as it is)."""
        return {"name": self.name, "plans": self.plans}


def _report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """``tune.report`` of ``metrics``, with a checkpoint of ``state`` unless it is None."""
    from ray import tune

    if state is None:
        tune.report(metrics)
        return
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


class TuneHooks(RunHooks):
    """Report every round of run ``index``, with a checkpoint at most every ``checkpoint_seconds``."""

    def __init__(self, settings: TrialSettings, index: int, done: list[str], clock: dict[str, float]):
        self.settings, self.index, self.done, self.clock = settings, index, done, clock

    def round_done(self, row: dict, state) -> None:
        metrics = {k: row[k] for k in REPORTED}
        metrics.update(cell=self.index, cells_done=len(self.done), run=row["run_id"])
        due = time.monotonic() - self.clock["checkpointed"] >= self.settings.checkpoint_seconds
        _report(metrics, {"done": list(self.done), "current": {"run_id": row["run_id"], "state": state}}
                if due else None)
        if due:
            self.clock["checkpointed"] = time.monotonic()


def grid_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: run the trial's runs, resuming from its last checkpoint."""
    import torch
    from ray import tune

    from raysvc.run import execute
    from raysvc.service.encoders import RayEncode
    from raysvc.service.train import make_runner

    settings: TrialSettings = config["settings"]
    plans: tuple[RunPlan, ...] = config["runs"]["plans"]
    torch.set_num_threads(settings.threads)
    # Ray logs every persisted checkpoint at INFO from inside the trial; a grid's console
    # should show rounds, not storage paths
    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    saved = _restore_state()
    done: list[str] = list(saved["done"])
    current = saved["current"]
    runner = make_runner(settings.train, settings.ray_train)
    encode = RayEncode(settings.service)
    context = {"grid": settings.grid, "trial_id": trial_id, "train": settings.train,
               "ray_train": settings.ray_train.to_dict()}
    clock = {"checkpointed": time.monotonic()}
    try:
        for index, plan in enumerate(plans):
            if plan.run_id in done:
                continue
            state = current["state"] if current is not None and current["run_id"] == plan.run_id else None
            execute(plan, encode=encode, runner=runner, state=state, hooks=TuneHooks(settings, index, done, clock),
                    load=_cached_dataset, revision=settings.code_revision, context=context)
            current = None
            done.append(plan.run_id)
            _report({"cell": index, "cells_done": len(done), "run": plan.run_id, "run_written": 1},
                    {"done": list(done), "current": None})
            clock["checkpointed"] = time.monotonic()
    finally:
        runner.close()


@functools.lru_cache(maxsize=2)
def _cached_dataset(part: Part):
    """A trial runs several cells of one dataset; reloading it for each (seconds for the
    CSV-backed ones) would dominate small cells."""
    from raysvc.datasets import load_dataset

    return load_dataset(part)
