"""One function runs one configured run end to end; the CLI, ``jobs.run``, ``jobs.sweep``,
the Tune trial and the benchmarks all call :func:`execute`, so a run writes the same
records and the same manifest fields wherever it runs."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from raysvc import provenance
from raysvc.spec import RunSpec
from raysvc.datasets import load_dataset
from raysvc.learners import Experiment, TrainRunner
from raysvc.loop import Encode, LoadDataset, LoopState, load_experiment, run_loop
from raysvc.records import to_table
from raysvc.storage import ObjectStore, check_writable, open_store, write_run

class RunHooks:
    """What a caller of :func:`execute` is told as the run goes (all no-ops here): the CLI
    prints, a Tune trial reports and checkpoints, tests time their faults."""

    def started(self, spec: RunSpec, experiment: Experiment) -> None:
        """The experiment is loaded and encoded; the first round is next."""

    def round_done(self, row: dict, state: LoopState) -> None:
        """A round completed; ``state`` resumes after it."""

    def writing(self, spec: RunSpec, rows: list[dict]) -> None:
        """All rounds are done; the run is about to be written."""

    def written(self, spec: RunSpec, manifest: dict) -> None:
        """The run is stored."""


@dataclasses.dataclass
class RunResult:
    spec: RunSpec
    experiment: Experiment
    rows: list[dict]
    manifest: dict
    stored: bool


def execute(
    spec: RunSpec,
    *,
    encode: Encode,
    out: str | ObjectStore | None = None,
    runner: TrainRunner | None = None,
    state: LoopState | None = None,
    hooks: RunHooks | None = None,
    load: LoadDataset = load_dataset,
    revision: str | None = None,
    context: dict[str, Any] | None = None,
) -> RunResult:
    """Validate ``spec``, check ``out``, load and encode, run the rounds not in ``state``,
    and write records and manifest to ``out`` (when given).

    ``context`` adds fields to the manifest (``train``, ``grid``, ``trial_id``);
    ``revision`` is the code revision a driver resolved for a worker that cannot.
    Nothing is written unless the whole run completes.
    """
    hooks = hooks or RunHooks()
    spec.validate()
    store = None
    if out is not None:
        store = open_store(out)
        if state is None:  # a resumed run checked its destination when it started
            check_writable(store)
    start = time.perf_counter()
    experiment = load_experiment(spec, encode, load)
    hooks.started(spec, experiment)
    rows = run_loop(spec, experiment, runner, state, hooks.round_done)
    encoded = experiment.encoded
    manifest = provenance.manifest(
        spec.to_dict(),
        revision=revision,
        options=spec.resolved_options(),
        wall_seconds=time.perf_counter() - start,
        features={"key": encoded.key, "text_key": encoded.text_key, "dtype": str(encoded.image_features.dtype),
                  "encode_seconds": encoded.encode_seconds, "image_size": experiment.backbone.image_size},
        dataset={"name": experiment.dataset.name, "pool": len(experiment.pool), "test": len(experiment.test),
                 "skipped_images": list(experiment.dataset.skipped)},
        **(context or {}),
    )
    if store is not None:
        hooks.writing(spec, rows)
        manifest = write_run(store, spec.run_id, to_table(rows), manifest)
        hooks.written(spec, manifest)
    return RunResult(spec, experiment, rows, manifest, store is not None)
