"""Ray services: shared feature encoding, Ray Train runner, Tune grids of runs.

- :class:`~raysvc.service.encoders.FeatureService` / :func:`feature_service` /
  :class:`RayEncode`: one encoder pass per (dataset, backbone, image size), handed out
  through the object store.
- :class:`~raysvc.service.train.RayTrainRunner` / :func:`make_runner`: a TrainRunner on
  ``ray.train.torch.TorchTrainer``.
- :func:`~raysvc.service.gridspec.load_grid`: YAML grids, validated (:mod:`~raysvc.service.gridspec`);
  :func:`~raysvc.service.driver.run_grid`: a grid as a Ray Tune experiment
  (:mod:`~raysvc.service.driver`), whose trials (:mod:`~raysvc.service.trial`) checkpoint
  every round and write results idempotently.

Submodules import Ray lazily enough that ``import raysvc.service`` stays cheap.
"""

from __future__ import annotations

__all__ = [
    "FeatureService", "RayEncode", "feature_service", "shutdown_feature_service",
    "RayTrainRunner", "make_runner", "GridSpec", "GridResult", "load_grid", "run_grid",
]  # fmt: skip

_WHERE = {
    "FeatureService": "encoders", "RayEncode": "encoders", "feature_service": "encoders",
    "shutdown_feature_service": "encoders", "RayTrainRunner": "train", "make_runner": "train",
    "GridSpec": "gridspec", "GridResult": "driver", "load_grid": "gridspec", "run_grid": "driver",
}  # fmt: skip


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"raysvc.service.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'raysvc.service' has no attribute {name!r}")
