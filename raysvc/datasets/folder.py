"""Any class-per-folder directory, given by its path, optionally with a CoOp split JSON.

Every image's header is checked when the folder is read (PIL ``verify``: reads each
file once, decodes nothing), so an unreadable image is named before any encoding; with
``skip_bad_images`` it is left out and named in ``ImageDataset.skipped`` instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from raysvc.datasets import DATASETS
from raysvc.datasets.base import DatasetSource, ImageDataset
from raysvc.errors import DatasetError, one_line
from raysvc.options import Options, option

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@DATASETS.register
class ImageFolder(DatasetSource):
    """An image folder: one sub-folder per class (its name is the class name), or a CoOp split JSON."""

    name = "<path to an image folder, one sub-folder per class>"
    fixed = ("path",)

    @classmethod
    def from_name(cls, name: str) -> dict[str, str] | None:
        """A name that looks like a path names a folder."""
        if "/" in name or name.startswith(("~", ".")) or Path(name).expanduser().is_dir():
            return {"path": name}
        return None

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        path: str = option("", "the folder (set by the name)")
        split_file: str | None = option(None, "CoOp-style split JSON: train + val form the pool, test is held out")
        pool_parts: Literal["train+val", "train"] = option(
            "train+val", "with a split file, the parts that form the pool; train: no validation image (the pool "
                         "of APL's and ActiveKD's code, dassl's train_x)")
        skip_bad_images: bool = option(False, "leave out unreadable images (named in the manifest) instead of failing")

        def check(self):
            folder = Path(self.path).expanduser()
            if not folder.is_dir():
                raise DatasetError(f"dataset folder {self.path!r} does not exist or is not a directory")
            if self.split_file is not None and not Path(self.split_file).expanduser().is_file():
                raise DatasetError(f"split file {self.split_file!r} does not exist")

    def load(self) -> ImageDataset:
        o = self.options
        return image_folder(o.path, split_file=o.split_file, skip_bad_images=o.skip_bad_images,
                            val_in_pool=o.pool_parts == "train+val")


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image, or None when its header and chunks check out."""
    try:
        with Image.open(path) as image:
            image.verify()
    except UnidentifiedImageError:
        return "not a valid image file"
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports broken chunks as SyntaxError
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return None


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


# unreadable images a refusal names before it counts the rest
NAMED_BAD_IMAGES = 3


def _check_images(root: Path, paths: list[Path], labels: list[int],
                  skip_bad: bool) -> tuple[list[Path], list[int], list[str]]:
    """(readable paths, their labels, names of the skipped ones). Every image is checked;
    unless ``skip_bad``, one DatasetError line names the first few unreadable ones and counts
    the rest, so one pass finds them all."""
    kept, kept_labels, bad = [], [], []
    for path, label in zip(paths, labels):
        reason = _unreadable(path)
        if reason is None:
            kept.append(path)
            kept_labels.append(label)
        else:
            bad.append((path, reason))
    if bad and not skip_bad:
        if len(bad) == 1:
            path, reason = bad[0]
            raise DatasetError(f"cannot read image {path}: {reason} (or pass skip_bad_images)")
        named = "; ".join(f"{path.relative_to(root)}: {one_line(reason, 120)}" for path, reason in bad[:NAMED_BAD_IMAGES])
        more = f"; and {len(bad) - NAMED_BAD_IMAGES} more" if len(bad) > NAMED_BAD_IMAGES else ""
        raise DatasetError(f"cannot read {len(bad)} images in {root}: {named}{more} (or pass skip_bad_images)")
    return kept, kept_labels, [f"{path}: {reason}" for path, reason in bad]


def image_folder(
    root: str | Path,
    name: str | None = None,
    classnames: dict[str, str] | None = None,
    template: str | None = None,
    split_file: str | None = None,
    skip_bad_images: bool = False,
    val_in_pool: bool = True,
) -> ImageDataset:
    """One sub-folder per class (folder name = class name), or a CoOp-style split JSON.

    The split JSON maps "train"/"val"/"test" to ``[relative_path, label, classname]``
    rows; train and val form the pool (train alone without ``val_in_pool``: the val images are
    left out) and test is held out. ``template`` None: CoOp's
    template when the folder has one of the usual names, else "a photo of a {}.".
    """
    from raysvc.prompts import COOP_TEMPLATES

    root = Path(root).expanduser().resolve()
    name = name or root.name
    template = template or COOP_TEMPLATES.get(root.name.lower(), "a photo of a {}.")
    if split_file:
        return _coop_split(root, name, Path(split_file).expanduser(), template, skip_bad_images, val_in_pool)
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
    if len(folders) < 2:
        raise DatasetError(f"dataset folder {root} has one class ({folders[0].name!r}); "
                           "active learning needs at least two class sub-folders")
    paths, labels, skipped = _check_images(root, paths, labels, skip_bad_images)
    emptied = sorted(set(range(len(folders))) - set(labels))
    if emptied:
        raise DatasetError(f"class {folders[emptied[0]].name!r} in {root} has no readable images")
    names = tuple((classnames or {}).get(f.name, f.name.replace("_", " ")) for f in folders)
    label_array = np.asarray(labels, dtype=np.int64)
    return ImageDataset(
        name=name,
        classnames=names,
        labels=label_array,
        fingerprint=_files_fingerprint(name, root, paths, label_array, template + "|".join(names)),
        loader=_pil_loader(paths),
        templates=(template,),
        skipped=tuple(skipped),
        item_ids=tuple(p.relative_to(root).as_posix() for p in paths),
    )


def _coop_split(root: Path, name: str, split_file: Path, template: str, skip_bad_images: bool,
                val_in_pool: bool = True) -> ImageDataset:
    try:
        split = json.loads(split_file.read_text())
        rows = {part: split.get(part, []) for part in ("train", "val", "test")}
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise DatasetError(f"cannot read split file {split_file}: {exc}") from None
    if not val_in_pool:
        rows["val"] = []
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
    if n_classes < 2:
        raise DatasetError(f"split file {split_file} has one class; active learning needs at least two")
    paths = [root / rel for rel, _, _ in entries]
    absent = next((p for p in paths if not p.is_file()), None)
    if absent is not None:
        raise DatasetError(f"split file {split_file} names {absent}, which does not exist")
    n_pool = len(rows["train"]) + len(rows["val"])
    is_test = [i >= n_pool for i in range(len(entries))]
    labels = [int(label) for _, label, _ in entries]
    kept, kept_labels, skipped = _check_images(root, paths, labels, skip_bad_images)
    if skipped:
        keep = {p: t for p, t in zip(paths, is_test)}
        is_test = [keep[p] for p in kept]
    label_array = np.asarray(kept_labels, dtype=np.int64)
    names = tuple(classnames[c] for c in range(n_classes))
    test = np.flatnonzero(is_test)
    return ImageDataset(
        name=name,
        classnames=names,
        labels=label_array,
        fingerprint=_files_fingerprint(name, root, kept, label_array, template + split_file.read_text()),
        loader=_pil_loader(kept),
        templates=(template,),
        test_indices=test if len(test) else None,
        skipped=tuple(skipped),
        item_ids=tuple(p.relative_to(root).as_posix() for p in kept),
    )
