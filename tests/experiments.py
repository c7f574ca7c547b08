"""Helpers that build what a run builds, for tests that start from a RunSpec: a feature
cache in a folder, and a spec's experiment assembled through it."""

from __future__ import annotations

from raysvc.experiment import Experiment, assemble
from raysvc.feature_settings import FeatureSettings
from raysvc.featurecache import FeatureCache


def cache_at(root, **settings) -> FeatureCache:
    """A quiet feature cache in ``root`` with ``settings`` (FeatureSettings fields)."""
    options = {k: v for k, v in settings.items() if k in ("rows_per_shard", "lease_seconds")}
    values = {k: v for k, v in settings.items() if k not in options}
    return FeatureCache(FeatureSettings.parse({"cache_dir": str(root), **values}, "test features"),
                        progress="off", **options)


def experiment_of(spec, root, **settings) -> Experiment:
    """``spec``'s experiment, its features cached in ``root``."""
    return assemble(spec.resolve(), cache_at(root, **settings).encode)
