"""What every dataset is: indexable RGB images with labels, class names, prompts and a
fingerprint; the seeded pool/test split; the base of named dataset sources."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
from PIL import Image

from raysvc.errors import DatasetError
from raysvc.options import NoOptions, Options


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images addressed by index; ``load(i)`` returns an RGB PIL image.

    ``test_indices`` is set when the dataset ships its own test split (CoOp split files,
    the packaged emoji set); otherwise :func:`pool_test_split` draws one. ``native_size``
    is the side of the stored images when they are small (the backbone need not upsample
    them all the way). A class is prompted with every template in ``templates`` (several
    make a prompt ensemble: their embeddings are averaged), or with its ``descriptions``
    (the PCB setting's class descriptions, also averaged) when given. ``skipped`` names
    unreadable images left out (``skip_bad_images``). ``item_ids``: each image's stable
    name in its source (a folder's relative file path); None: its index in the packaged
    arrays (:meth:`item`).
    """

    name: str
    classnames: tuple[str, ...]
    labels: np.ndarray
    fingerprint: str
    loader: Callable[[int], Image.Image]
    templates: tuple[str, ...] = ("a photo of a {}.",)
    native_size: int | None = None
    test_indices: np.ndarray | None = None
    descriptions: tuple[tuple[str, ...], ...] | None = None
    skipped: tuple[str, ...] = ()
    item_ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def load(self, index: int) -> Image.Image:
        return self.loader(int(index))

    def item(self, index: int) -> str:
        """Image ``index``'s stable id: what a stored selection names it by."""
        return self.item_ids[int(index)] if self.item_ids is not None else str(int(index))

    def prompts(self) -> list[tuple[str, ...]]:
        """The sentences of each class: its descriptions, else the template filled in."""
        if self.descriptions is not None:
            return [tuple(d) for d in self.descriptions]
        return [tuple(t.format(c) for t in self.templates) for c in self.classnames]

    def subset(self, indices: np.ndarray) -> ImageDataset:
        """The images at ``indices`` (in that order), as a dataset with its own fingerprint."""
        indices = np.asarray(indices, dtype=np.int64)
        digest = hashlib.sha256(self.fingerprint.encode() + indices.tobytes()).hexdigest()[:16]
        parent = self.loader
        if self.test_indices is not None:
            position = np.full(len(self.labels), -1, dtype=np.int64)
            position[indices] = np.arange(len(indices))
            kept_test = position[self.test_indices]
            test = np.sort(kept_test[kept_test >= 0])
        else:
            test = None
        return dataclasses.replace(
            self,
            labels=self.labels[indices],
            fingerprint=f"{self.name}-subset-{digest}",
            loader=lambda i: parent(int(indices[i])),
            test_indices=test,
            item_ids=tuple(self.item(i) for i in indices),
        )


class DatasetSource(abc.ABC):
    """A named dataset (registered in :data:`raysvc.datasets.DATASETS`): typed options, and
    :meth:`load`, which checks what it can cheaply and reads images lazily. ``native_size``
    is the side of its stored images when they are small and known before loading (the
    plan picks the backbone's input size from it)."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = NoOptions
    native_size: ClassVar[int | None] = None

    def __init__(self, options: Options | None = None):
        self.options = self.Options() if options is None else options

    @abc.abstractmethod
    def load(self) -> ImageDataset: ...


def array_dataset(name: str, images: np.ndarray, labels: np.ndarray, classnames: Sequence[str], *,
                  invert: bool = False, fingerprint_extra: bytes = b"", **fields) -> ImageDataset:
    """A dataset of uint8 (N, H, W[, 3]) arrays in memory; ``invert`` shows 255 - pixels.

    The fingerprint (the feature cache key's dataset part) hashes the arrays and
    ``fingerprint_extra`` (e.g. a fixed split), never class names or templates.
    """
    labels = np.asarray(labels, dtype=np.int64)
    digest = hashlib.sha256(
        images.tobytes() + labels.tobytes() + fingerprint_extra + (b"inverted" if invert else b"")).hexdigest()[:16]

    def load(i: int) -> Image.Image:
        pixels = images[i]
        return Image.fromarray(255 - pixels if invert else pixels).convert("RGB")

    return ImageDataset(name=name, classnames=tuple(classnames), labels=labels, fingerprint=f"{name}-{digest}",
                        loader=load, **fields)


def pool_test_split(dataset: ImageDataset, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified pool/test split (or the dataset's own test split)."""
    if dataset.test_indices is not None:
        test = np.sort(dataset.test_indices)
        return np.setdiff1d(np.arange(len(dataset)), test), test
    rng = np.random.default_rng(seed)
    test = []
    for label in range(dataset.n_classes):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) == 0:
            raise DatasetError(f"class {dataset.classnames[label]!r} has no images")
        n_test = int(round(test_fraction * len(members)))
        test.append(rng.choice(members, size=n_test, replace=False))
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(dataset)), test), test


def per_class_subset(dataset: ImageDataset, per_class: int, seed: int) -> ImageDataset:
    """At most ``per_class`` images of each class, drawn with a seed (``--per-class``: small pools)."""
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(members, size=min(per_class, len(members)), replace=False)
        for members in (np.flatnonzero(dataset.labels == c) for c in range(dataset.n_classes))
    ]
    return dataset.subset(np.sort(np.concatenate(keep)))
