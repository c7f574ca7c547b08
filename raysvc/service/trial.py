"""One Tune trial of a grid: its runs, one after another, through :func:`raysvc.run.execute`.

A trial's config holds what every trial shares (:class:`TrialSettings`) and its own
runs (``{"name": ..., "plans": ...}`` of a :class:`TrialRuns`: nothing of the other
trials'), so Tune's state per trial stays the same size whatever the grid's size
(``python -m bench.grid --cells``, bench/results/grid_scale_*.md). After every completed round
the trial reports the round's metrics (``test_acc``, ``n_queried``, ...); at most every
``checkpoint_seconds`` (and whenever a run is done) the report carries a
``tune.Checkpoint`` holding the pickled :class:`~raysvc.loop.LoopState` and which runs
are done, so a retried trial (``FailureConfig(max_failures)``) resumes at its last
checkpointed round. Rounds are seeded, so redoing the few since then gives the same
rows. A finished run is written (same run_id replaces: idempotent) before the
checkpoint marks it done, and the report that marks it carries ``run_written``.

A trial that fails (a store still unreachable after its retry window, say) checkpoints
its progress once more with the count of its failures since it last wrote a run; Tune
retries it at once, and the retry first waits :func:`backoff_seconds` (reported as
``backoff_seconds``), so that ``max_failures`` retries span an outage of about
``max_failures`` x (retry window + back-off) rather than ``max_failures`` retry windows.
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
BACKOFF_CAP_SECONDS = 600.0
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
    retry_backoff_seconds: float = 30.0


@dataclasses.dataclass(frozen=True)
class TrialRuns:
    """One trial's runs, and the name Tune shows the trial by."""

    name: str
    plans: tuple[RunPlan, ...]

    def config(self) -> dict[str, Any]:
        """The trial's own part of its Tune config (``config["runs"]``)."""
        return {"name": self.name, "plans": self.plans}


def backoff_seconds(base: float, failures: int) -> float:
    """How long a trial retried after its ``failures``-th failure in a row waits before it
    resumes: ``base``, doubled at each further failure, at most BACKOFF_CAP_SECONDS."""
    return min(BACKOFF_CAP_SECONDS, base * 2 ** (failures - 1)) if failures > 0 else 0.0


def _report(metrics: dict[str, Any], checkpoint: bytes | None) -> None:
    """``tune.report`` of ``metrics``, with a checkpoint holding ``checkpoint`` (a pickled
    state) unless it is None."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="raysvc-ckpt-") as tmp:
        with open(os.path.join(tmp, STATE_FILE), "wb") as fh:
            fh.write(checkpoint)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restore_state() -> dict[str, Any]:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {"done": [], "current": None, "failures": 0}
    with checkpoint.as_directory() as path:
        with open(os.path.join(path, STATE_FILE), "rb") as fh:
            return pickle.load(fh)


class TrialProgress:
    """What a trial's checkpoints record: the runs written (``done``), the loop state of the
    run under way after its latest checkpointed round (``current``), and the failures since
    the trial last wrote a run."""

    def __init__(self, saved: dict[str, Any]):
        self.done: list[str] = list(saved["done"])
        self.current: dict[str, Any] | None = saved["current"]
        self.failures: int = saved.get("failures", 0)
        self.checkpointed = time.monotonic()
        # the latest checkpoint as pickled: the loop mutates its state in place, so a failure
        # mid-round must checkpoint this, not the live state
        self._latest = pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL)

    def checkpoint(self) -> bytes:
        """The progress as a checkpoint (pickled now), remembered as the latest one."""
        self._latest = pickle.dumps({"done": list(self.done), "current": self.current, "failures": self.failures},
                                    protocol=pickle.HIGHEST_PROTOCOL)
        self.checkpointed = time.monotonic()
        return self._latest

    def failed(self) -> bytes:
        """The latest checkpoint with one more failure counted."""
        self.failures += 1
        state = pickle.loads(self._latest)
        state["failures"] = self.failures
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


class TuneHooks(RunHooks):
    """Report every round of run ``index``, with a checkpoint at most every ``checkpoint_seconds``."""

    def __init__(self, settings: TrialSettings, index: int, progress: TrialProgress):
        self.settings, self.index, self.progress = settings, index, progress

    def round_done(self, row: dict, state) -> None:
        metrics = {k: row[k] for k in REPORTED}
        metrics.update(cell=self.index, cells_done=len(self.progress.done), run=row["run_id"])
        due = time.monotonic() - self.progress.checkpointed >= self.settings.checkpoint_seconds
        if due:
            self.progress.current = {"run_id": row["run_id"], "state": state}
        _report(metrics, self.progress.checkpoint() if due else None)


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
    progress = TrialProgress(_restore_state())
    if progress.failures:
        wait = backoff_seconds(settings.retry_backoff_seconds, progress.failures)
        time.sleep(wait)
        _report({"failures": progress.failures, "backoff_seconds": wait}, None)
    runner = make_runner(settings.train, settings.ray_train)
    encode = RayEncode(settings.service)
    context = {"grid": settings.grid, "trial_id": trial_id, "train": settings.train,
               "ray_train": settings.ray_train.to_dict()}
    try:
        for index, plan in enumerate(plans):
            if plan.run_id in progress.done:
                continue
            current = progress.current
            state = current["state"] if current is not None and current["run_id"] == plan.run_id else None
            execute(plan, encode=encode, runner=runner, state=state, hooks=TuneHooks(settings, index, progress),
                    load=_cached_dataset, revision=settings.code_revision, context=context)
            progress.done.append(plan.run_id)
            progress.current, progress.failures = None, 0
            _report({"cell": index, "cells_done": len(progress.done), "run": plan.run_id, "run_written": 1},
                    progress.checkpoint())
    except Exception:
        try:
            checkpoint = progress.failed()
            _report({"failures": progress.failures}, checkpoint)
        except Exception:  # Tune's storage may be what failed: the retry then waits less
            pass
        raise
    finally:
        runner.close()


@functools.lru_cache(maxsize=2)
def _cached_dataset(part: Part):
    """A trial runs several cells of one dataset; reloading it for each (seconds for the
    CSV-backed ones) would dominate small cells."""
    from raysvc.datasets import load_dataset

    return load_dataset(part)
