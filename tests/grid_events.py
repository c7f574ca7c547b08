"""A trial observer for the service tests: appends ``EVENT ARGS.. PID TIME`` lines to
``folder/events.log`` from inside the trial processes, and may pause after a checkpoint
so a test has time to kill a worker mid-trial."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from raysvc.service.trial import TrialObserver


class EventLog(TrialObserver):
    def __init__(self, folder: Path, pause_after_checkpoint: float = 0.0):
        self.path = str(Path(folder) / "events.log")
        self.pause = pause_after_checkpoint

    def event(self, name, *args):
        line = " ".join(str(w) for w in (name, *args, os.getpid(), f"{time.time():.3f}")) + "\n"
        with open(self.path, "a") as fh:
            fh.write(line)
        if name == "checkpointed" and self.pause:
            time.sleep(self.pause)

    def lines(self) -> list[list[str]]:
        path = Path(self.path)
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def ship_by_value() -> None:
    """Trial processes cannot import the tests folder: send this module with the observer."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
