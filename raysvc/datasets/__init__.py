"""Image datasets by name: the packaged ones (one module each) and any class-per-folder
directory given by its path (:mod:`raysvc.datasets.folder`). Each module registers its
source in :data:`DATASETS`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysvc.datasets.base import (
    DatasetSource, ImageDataset, array_dataset, per_class_subset, pool_test_split,
)
from raysvc.options import Options
from raysvc.registry import Registry

DATASETS: Registry[DatasetSource] = Registry("dataset", "raysvc.datasets")


def dataset_options(name: str, split_file: str | None = None, params: Mapping[str, Any] | None = None) -> Options:
    """The validated options of dataset ``name`` (a ``split_file`` belongs to folders only)."""
    values = dict(params or {})
    if split_file is not None:
        values["split_file"] = split_file
    return DATASETS.part(name, values).options


def load_dataset(name: str, split_file: str | None = None, params: Mapping[str, Any] | None = None) -> ImageDataset:
    """A registered dataset by name, or an image folder by path."""
    return DATASETS.resolve(name).cls(dataset_options(name, split_file, params)).load()


__all__ = ["DATASETS", "DatasetSource", "ImageDataset", "array_dataset", "dataset_options",
           "load_dataset", "per_class_subset", "pool_test_split"]
