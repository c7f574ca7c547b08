"""One Tune trial of a grid: its cells run one after another through :func:`raysvc.run.execute`.

After every completed round the trial reports the round's metrics (``test_acc``,
``n_queried``, ...); at most every ``checkpoint_seconds`` (and whenever a run is done) the
report carries a ``tune.Checkpoint`` holding the pickled :class:`~raysvc.loop.LoopState`
and which cells are done, so a retried trial (``FailureConfig(max_failures)``) resumes at
its last checkpointed round. Rounds are seeded, so redoing the few since then gives the
same rows. A finished run is written (same run_id replaces: idempotent) before the
checkpoint marks it done.
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

from raysvc.spec import RunSpec
from raysvc.run import RunHooks

STATE_FILE = "raysvc_state.pkl"


class TrialObserver:
    """Told what a trial does, in the trial's process; tests pass one in (it must pickle)
    to see rounds and writes happen and to time their faults. This one ignores everything.

    Events: ``start(trial_id, n_done)``, ``resume(run_id, completed_round)``,
    ``loaded(run_id)``, ``round(run_id, round)``, ``checkpointed(run_id, round)``,
    ``writing(run_id, n_rows)``, ``written(run_id, n_rows)``.
    """

    def event(self, name: str, *args: Any) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class TrialSettings:
    """What every trial of a grid shares (handed to Tune in the param space); ``groups`` maps a
    trial's name to its cells, so Tune searches over readable names, not over cell dicts."""

    grid: str
    groups: dict[str, list[dict[str, Any]]]
    out: str
    train: str
    ray_train: dict[str, Any]
    actor: str
    code_revision: str
    threads: int
    checkpoint_seconds: float = 30.0
    observer: TrialObserver = TrialObserver()


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


REPORTED = ("round", "test_acc", "n_labeled", "n_queried", "n_pseudo", "zeroshot_acc", "teacher_acc",
            "select_seconds", "train_seconds")


class TuneHooks(RunHooks):
    """Report every round of cell ``index``, checkpoint at most every ``checkpoint_seconds``;
    tell the observer."""

    def __init__(self, settings: TrialSettings, index: int, done: list[str], clock: dict[str, float]):
        self.settings, self.index, self.done, self.clock = settings, index, done, clock

    def started(self, spec, experiment) -> None:
        self.settings.observer.event("loaded", spec.run_id)

    def round_done(self, row: dict, state) -> None:
        observe = self.settings.observer.event
        observe("round", row["run_id"], row["round"])
        metrics = {k: row[k] for k in REPORTED}
        metrics.update(cell=self.index, cells_done=len(self.done), run=row["run_id"])
        due = time.monotonic() - self.clock["checkpointed"] >= self.settings.checkpoint_seconds
        _report(metrics, {"done": list(self.done), "current": {"run_id": row["run_id"], "state": state}}
                if due else None)
        if due:
            self.clock["checkpointed"] = time.monotonic()
            observe("checkpointed", row["run_id"], row["round"])

    def writing(self, spec, rows) -> None:
        self.settings.observer.event("writing", spec.run_id, len(rows))

    def written(self, spec, manifest) -> None:
        self.settings.observer.event("written", spec.run_id, manifest["n_rows"])


def grid_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: run the trial's cells, resuming from its last checkpoint."""
    import torch
    from ray import tune

    from raysvc.run import execute
    from raysvc.service.encoders import RayEncode
    from raysvc.service.train import make_runner

    settings: TrialSettings = config["settings"]
    cells: list[dict[str, Any]] = settings.groups[config["cells"]]
    torch.set_num_threads(settings.threads)
    # Ray logs every persisted checkpoint at INFO from inside the trial; a grid's console
    # should show rounds, not storage paths
    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    saved = _restore_state()
    done: list[str] = list(saved["done"])
    current = saved["current"]
    settings.observer.event("start", trial_id, len(done))
    runner = make_runner(settings.train, settings.ray_train)
    encode = RayEncode(settings.actor)
    context = {"grid": settings.grid, "trial_id": trial_id, "train": settings.train, "ray_train": settings.ray_train}
    clock = {"checkpointed": time.monotonic()}
    try:
        for index, cell in enumerate(cells):
            spec = RunSpec.from_dict(cell)
            if spec.run_id in done:
                continue
            state = None
            if current is not None and current["run_id"] == spec.run_id:
                state = current["state"]
                settings.observer.event("resume", spec.run_id, state.completed)
            execute(spec, encode=encode, out=settings.out, runner=runner, state=state,
                    hooks=TuneHooks(settings, index, done, clock), load=_dataset, revision=settings.code_revision,
                    context=context)
            current = None
            done.append(spec.run_id)
            _report({"cell": index, "cells_done": len(done), "run": spec.run_id, "run_written": 1},
                    {"done": list(done), "current": None})
            clock["checkpointed"] = time.monotonic()
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()


def _dataset(name: str, split_file: str | None, params: dict | None = None):
    """A trial runs several cells of one dataset; reloading it for each (seconds for the
    CSV-backed ones) would dominate small cells."""
    return _cached_dataset(name, split_file, tuple(sorted((params or {}).items())))


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, split_file: str | None, params: tuple):
    from raysvc.datasets import load_dataset

    return load_dataset(name, split_file, dict(params))
