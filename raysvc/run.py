"""One function runs one planned run end to end: experiment, loop, store.

A run goes entry -> plan -> experiment -> loop -> store. The entry points (the CLI,
``jobs.run``, ``jobs.sweep``, the Tune trial, the benchmarks) build the
:class:`~raysvc.spec.RunPlan` and call :func:`execute`, which takes it through the
last three stages, so a run writes the same records and the same manifest fields
wherever it runs.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from raysvc import provenance
from raysvc.datasets import load_dataset
from raysvc.experiment import Encode, Experiment, LoadDataset, assemble
from raysvc.learners import LocalRunner, TrainRunner
from raysvc.loop import LoopState, run_loop
from raysvc.records import SELECTIONS, selections_table, to_table
from raysvc.spec import RunPlan
from raysvc.storage import write_run

# pool rows per stored probabilities shard (float16): 64 MiB at 1000 classes
PROBS_ROWS_PER_SHARD = 32_768


class RunHooks:
    """What a caller of :func:`execute` is told as the run goes (no-ops here): the CLI
    prints, a Tune trial reports and checkpoints."""

    def started(self, plan: RunPlan, experiment: Experiment) -> None:
        """The experiment is loaded and encoded; the first round is next."""

    def round_done(self, row: dict, state: LoopState) -> None:
        """A round completed; ``state`` resumes after it."""


class PoolProbs:
    """``store_probs``: each round's pool probabilities (what its selection saw), float16, in
    shards of :data:`PROBS_ROWS_PER_SHARD` rows, spilled to a temporary folder as the run
    goes and stored with it as ``probs-r<round>-s<shard>.npy``. A trial resumed in another
    process has the rounds it ran since; the manifest's ``probs_rounds`` says which."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="raysvc-probs-")
        self.files: dict[str, Path] = {}
        self.rounds: list[int] = []

    def __call__(self, round_: int, probs) -> None:
        for shard, start in enumerate(range(0, len(probs), PROBS_ROWS_PER_SHARD)):
            rows = np.asarray(probs[start : start + PROBS_ROWS_PER_SHARD], dtype=np.float16)
            name = f"probs-r{round_:03d}-s{shard:03d}.npy"
            path = Path(self._folder.name) / name
            np.save(path, rows, allow_pickle=False)
            self.files[name] = path
        self.rounds.append(round_)

    def close(self) -> None:
        self._folder.cleanup()


@dataclasses.dataclass
class RunResult:
    plan: RunPlan
    experiment: Experiment
    rows: list[dict]
    manifest: dict
    stored: bool


def run_manifest(plan: RunPlan, experiment: Experiment, wall_seconds: float, revision: str | None,
                 context: dict[str, Any] | None) -> dict[str, Any]:
    """What the manifest records besides the rows, read from the plan and the experiment."""
    encoded = experiment.encoded
    return provenance.manifest(
        plan.spec.to_dict(),
        revision=revision,
        options=plan.options,
        wall_seconds=wall_seconds,
        features={"key": encoded.key, "text_key": encoded.text_key, "sha256": encoded.sha256,
                  "dtype": str(encoded.image_features.dtype),
                  "encode_seconds": encoded.encode_seconds, "image_size": experiment.backbone.image_size},
        dataset={"name": experiment.dataset.name, "pool": len(experiment.pool), "test": len(experiment.test),
                 "skipped_images": list(experiment.dataset.skipped)},
        **(context or {}),
    )


def execute(
    plan: RunPlan,
    *,
    encode: Encode,
    runner: TrainRunner | None = None,
    state: LoopState | None = None,
    hooks: RunHooks | None = None,
    load: LoadDataset = load_dataset,
    revision: str | None = None,
    context: dict[str, Any] | None = None,
) -> RunResult:
    """Assemble the experiment, run the rounds not in ``state``, and write records and
    manifest to the plan's destination (when it has one).

    ``context`` adds fields to the manifest (``train``, ``grid``, ``trial_id``);
    ``revision`` is the code revision a driver resolved for a worker that cannot.
    Nothing is written unless the whole run completes.
    """
    hooks = hooks or RunHooks()
    start = time.perf_counter()
    experiment = assemble(plan, encode, load)
    hooks.started(plan, experiment)
    runner = runner or LocalRunner()
    state = state or LoopState.start(plan, experiment)
    probs = PoolProbs() if plan.store_probs and plan.dest is not None else None
    try:
        rows = run_loop(plan, experiment, runner, state, hooks.round_done, on_probs=probs)
        context = {**(context or {}), "training": runner.placement(plan.learner.cls)}  # workers used, and why
        manifest = run_manifest(plan, experiment, time.perf_counter() - start, revision, context)
        if plan.dest is not None:
            files: dict[str, Any] = {SELECTIONS: selections_table(state.selections)}
            if probs is not None:
                files.update(probs.files)
                manifest["probs_rounds"] = probs.rounds
            manifest = write_run(plan.dest, plan.run_id, to_table(rows), manifest, files=files)
    finally:
        if probs is not None:
            probs.close()
    return RunResult(plan, experiment, rows, manifest, plan.dest is not None)
