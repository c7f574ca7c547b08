"""What a paper-figure analysis reads of a stored run: its manifest, selections, pool
probabilities by round, and the experiment the run worked on.

The experiment (pool, labels, image and class embeddings) is re-assembled from the
manifest's spec through the feature cache (``$RAYSVC_CACHE``, else
``~/.cache/raysvc/features``): it reads the cached features, it does not re-run the loop
(a cache that lacks them encodes them again, as ``raysvc run`` would). The features it
gets are checked against the checksum the run recorded, so an analysis never mixes a
run's selections with other embeddings.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from raysvc import storage
from raysvc.errors import AnalysisError, EmptySourceError

RERUN_WITH_PROBS = "rerun it with --store-probs (a grid file: store_probs: true)"


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """One stored run of ``source``: reads its files when asked, once."""

    source: str
    run: storage.Run
    _probs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def config(self) -> dict:
        """The run's spec as given (``RunSpec.to_dict``)."""
        return self.run.manifest["config"]

    def option(self, part: str, name: str, default=None):
        """One option of a part (``strategy``, ``learner``, ...), defaults filled in as the run resolved them."""
        return self.run.manifest.get("options", {}).get(part, {}).get(name, default)

    @property
    def strategy(self) -> str:
        """The strategy's name, ``+R`` for PCoreSet's reverse (ActiveKD's PCoreSet+R)."""
        return self.config["strategy"] + ("+R" if self.option("strategy", "reverse") else "")

    @property
    def n_classes(self) -> int:
        return int(self.run.table["n_classes"][0].as_py())

    @functools.cached_property
    def selections(self) -> pd.DataFrame:
        from analysis.load import load_selections

        picks = load_selections(self.source, runs=[self.run])
        if picks.empty:
            raise AnalysisError(f"run {self.run_id!r} stored no selections (written before raysvc stored them): "
                                "rerun it")
        return picks

    @property
    def probs_rounds(self) -> list[int]:
        return [int(r) for r in self.run.manifest.get("probs_rounds", [])]

    def probs(self, round_: int) -> np.ndarray:
        """(pool, C) float32: the pool probabilities round ``round_``'s selection saw (the model trained up to
        the round before), from the stored float16 shards."""
        if round_ not in self.probs_rounds:
            raise AnalysisError(f"run {self.run_id!r} stored no pool probabilities for round {round_} "
                                f"(it has rounds {self.probs_rounds or 'none'}): {RERUN_WITH_PROBS}")
        if round_ not in self._probs:
            self._probs[round_] = _read_probs(self.source, self.run, round_)
        return self._probs[round_]

    @functools.cached_property
    def experiment(self):
        """The run's experiment, its features from the feature cache, checked against the run's."""
        from raysvc.experiment import assemble
        from raysvc.feature_settings import FeatureSettings
        from raysvc.featurecache import FeatureCache
        from raysvc.spec import RunSpec

        experiment = assemble(RunSpec.from_dict(self.config).resolve(),
                              FeatureCache(FeatureSettings(), progress="off").encode)
        recorded = self.run.manifest.get("features", {}).get("sha256")
        if recorded is not None and recorded != experiment.encoded.sha256:
            raise AnalysisError(f"the feature cache holds other embeddings of {self.config['dataset']!r} than run "
                                f"{self.run_id!r} used (checksum differs): point $RAYSVC_CACHE at its cache")
        return experiment

    def pool_features(self) -> np.ndarray:
        """(pool, D) float32 image embeddings of the run's pool, in pool positions."""
        experiment = self.experiment
        return np.asarray(experiment.encoded.image_features[experiment.pool], np.float32)


def _read_probs(source: str, run: storage.Run, round_: int) -> np.ndarray:
    shards = []
    while True:
        raw = storage.read_run_file(source, run, f"probs-r{round_:03d}-s{len(shards):03d}.npy")
        if raw is None:
            break
        shards.append(np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32))
    if not shards:
        raise AnalysisError(f"run {run.run_id!r} lists round {round_}'s pool probabilities but stored none: "
                            f"{RERUN_WITH_PROBS}")
    return np.concatenate(shards)


def stored_runs(source, run_ids: Sequence[str] | None = None) -> list[StoredRun]:
    """The runs under ``source`` (all, or ``run_ids``), sorted by id; every named run must exist."""
    name = os.fspath(source)
    runs = storage.read_runs(source, None if run_ids is None else list(run_ids))
    if run_ids is not None:
        missing = sorted(set(run_ids) - {run.run_id for run in runs})
        if missing:
            raise AnalysisError(f"no run {', '.join(map(repr, missing))} in {name} (raysvc runs {name} lists them)")
    if not runs:
        raise EmptySourceError(f"no runs found in {name}")
    return [StoredRun(name, run) for run in runs]


def with_probs(runs: Sequence[StoredRun], figure: str) -> list[StoredRun]:
    """``runs``, each of which stored its pool probabilities; else one error naming the first that did not."""
    for run in runs:
        if not run.probs_rounds:
            raise AnalysisError(f"{figure} needs each round's pool probabilities, which run {run.run_id!r} did not "
                                f"store: {RERUN_WITH_PROBS}")
    return list(runs)


def labels(runs: Sequence[StoredRun], keys: Sequence[str] = ("strategy", "learner", "dataset")) -> dict[str, str]:
    """run_id -> a curve label: the first key always, the others only where the runs differ in them."""
    def value(run: StoredRun, key: str) -> str:
        return run.strategy if key == "strategy" else str(run.config[key])

    varying = [k for k in keys[1:] if len({value(r, k) for r in runs}) > 1]
    return {r.run_id: " / ".join(value(r, k) for k in (keys[0], *varying)) for r in runs}
