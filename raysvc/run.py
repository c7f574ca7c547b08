"""One function runs one planned run end to end: experiment, loop, store.

A run goes entry -> plan -> experiment -> loop -> store. The entry points (the CLI,
``jobs.run``, ``jobs.sweep``, the Tune trial, the benchmarks) build the
:class:`~raysvc.spec.RunPlan` and call :func:`execute`, which takes it through the
last three stages, so a run writes the same records and the same manifest fields
wherever it runs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from raysvc import provenance
from raysvc.datasets import load_dataset
from raysvc.experiment import Encode, Experiment, LoadDataset, assemble
from raysvc.learners import LocalRunner, TrainRunner
from raysvc.loop import LoopState, run_loop
from raysvc.records import to_table
from raysvc.spec import RunPlan
from raysvc.storage import write_run


class RunHooks:
    """What a caller of :func:`execute` is told as the run goes (no-ops here): the CLI
    prints, a Tune trial reports and checkpoints."""

    def started(self, plan: RunPlan, experiment: Experiment) -> None:
        """The experiment is loaded and encoded; the first round is next."""

    def round_done(self, row: dict, state: LoopState) -> None:
        """A round completed; ``state`` resumes after it."""


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
        features={"key": encoded.key, "text_key": encoded.text_key, "dtype": str(encoded.image_features.dtype),
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
    rows = run_loop(plan, experiment, runner, state, hooks.round_done)
    context = {**(context or {}), "training": runner.placement(plan.learner.cls)}  # workers used, and why
    manifest = run_manifest(plan, experiment, time.perf_counter() - start, revision, context)
    if plan.dest is not None:
        manifest = write_run(plan.dest, plan.run_id, to_table(rows), manifest)
    return RunResult(plan, experiment, rows, manifest, plan.dest is not None)
