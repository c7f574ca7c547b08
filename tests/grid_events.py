"""A Tune callback for the service tests: what the grid's trials report, seen from the
driver (where Tune calls callbacks), with the time each report arrived."""

from __future__ import annotations

import time

from ray import tune


class GridEvents(tune.Callback):
    """``starts``: (time, trial id) of every trial start; ``results``: (time, trial id, the
    result's pid, round, run, run_written, backoff_seconds) of every report;
    ``checkpoints``: (time, trial id, round, run) of every checkpoint Tune registered;
    ``recoveries``: (time, trial id) of every failure Tune retries. Lists, appended by
    Tune's loop and read by the test (an append is atomic): the Tuner pickles its
    callbacks, so no lock."""

    def __init__(self):
        self.starts: list[tuple] = []
        self.results: list[tuple] = []
        self.checkpoints: list[tuple] = []
        self.recoveries: list[tuple] = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts.append((time.time(), trial.trial_id))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append((time.time(), trial.trial_id, result.get("pid"), result.get("round"),
                             result.get("run"), result.get("run_written"), result.get("backoff_seconds")))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recoveries.append((time.time(), trial.trial_id))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        last = trial.last_result or {}
        self.checkpoints.append((time.time(), trial.trial_id, last.get("round"), last.get("run")))

    def written(self) -> list[tuple]:
        return [r for r in list(self.results) if r[5]]
