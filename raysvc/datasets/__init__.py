"""Image datasets by name: the packaged ones (one module each) and any class-per-folder
directory given by its path (:mod:`raysvc.datasets.folder`). Each module registers its
source in :data:`DATASETS`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysvc.datasets.base import (
    DatasetSource,
    ImageDataset,
    array_dataset,
    per_class_subset,
    pool_test_split,
)
from raysvc.registry import DATASETS, Part


def load_dataset(dataset: str | Part, options: Mapping[str, Any] | None = None) -> ImageDataset:
    """A dataset: a run plan's part, or a registered name (or an image folder's path) with
    ``options`` validated here."""
    part = dataset if isinstance(dataset, Part) else DATASETS.part(dataset, options)
    return part.cls(part.options).load()


__all__ = ["DATASETS", "DatasetSource", "ImageDataset", "array_dataset", "load_dataset", "per_class_subset",
           "pool_test_split"]
