"""Animal-MNIST: 10,000 28-px drawings of 10 animals (PyPI ``animal-mnist``)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from raysvc.datasets import DATASETS
from raysvc.datasets.base import DatasetSource, ImageDataset, array_dataset
from raysvc.errors import DatasetError


@DATASETS.register
class AnimalMNIST(DatasetSource):
    """Animal-MNIST: 10 animals, 1000 28-px drawings each (PyPI animal-mnist)."""

    name = "animal-mnist"
    native_size = 28

    def load(self) -> ImageDataset:
        try:
            import animal_mnist
        except ImportError:
            raise DatasetError("animal-mnist needs the package: pip install --no-deps animal-mnist") from None
        # the package's own loader imports tensorflow; its pickles need only numpy
        root = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
        with gzip.open(root / "animal_data_version_3.gz", "rb") as fh:
            images = np.ascontiguousarray(pickle.load(fh), dtype=np.uint8)
        with gzip.open(root / "animal_label_version_3.gz", "rb") as fh:
            labels = np.asarray(pickle.load(fh), dtype=np.int64)
        classnames = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
        # stored light-on-dark; inverted they read as dark-on-light drawings, which an ImageNet backbone knows
        return array_dataset("animal-mnist", images, labels, classnames, invert=True, native_size=self.native_size)
