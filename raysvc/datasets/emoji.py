"""Emoji: 852 Noto (Google) and Twemoji (Twitter) 64-px renderings of 426 emoji in 18 classes.

Each class is one emoji-datasource subcategory that names a concrete kind of thing
("animal-bird" -> "bird"), composited onto white, with a pool/test split fixed at build
time, stratified by class and grouped by emoji: both vendors' renderings of an emoji fall
on the same side, so no test image has a near-twin in the pool. The build (npm packs,
once) is :mod:`raysvc.datasets.emoji_build`:

    python -m raysvc.datasets.emoji_build build [--root DIR]     # or: make data

Licences: Noto Emoji images Apache-2.0, Twemoji graphics CC-BY-4.0, emoji-datasource
data MIT; see docs/emoji.md.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from raysvc.datasets import DATASETS
from raysvc.datasets.base import DatasetSource, ImageDataset, array_dataset
from raysvc.errors import DatasetError
from raysvc.prompts import PROMPT_ENSEMBLE

NAME = "emoji"
SIDE = 64
# bumped whenever the files a build writes change meaning; load() refuses older builds
FORMAT = 1
# $RAYSVC_DATA lets a Ray job, which runs in an uploaded copy of the checkout without the
# ignored .data/, find the build of the checkout it came from (cluster/start_local.sh sets it)
DEFAULT_ROOT = Path(os.environ.get("RAYSVC_DATA") or Path(__file__).resolve().parents[2] / ".data") / "emoji"
# a prompt ensemble of generic templates: on the pool it measured at least as well as any single
# template (bench/emoji_prior.py), without choosing one for these images
TEMPLATES = PROMPT_ENSEMBLE


@DATASETS.register
class Emoji(DatasetSource):
    """Emoji: 852 Noto and Twemoji 64-px renderings of 426 emoji in 18 classes, fixed split (make data)."""

    name = NAME
    native_size = SIDE

    def load(self) -> ImageDataset:
        return load()


def load(root: Path = DEFAULT_ROOT) -> ImageDataset:
    """The built dataset, with its fixed test split as ``test_indices``."""
    root = Path(root)
    how = "make data" if root.resolve() == DEFAULT_ROOT else f"python -m raysvc.datasets.emoji_build build --root {root}"
    try:
        meta = json.loads((root / "meta.json").read_text())
        with np.load(root / "images.npz", allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("images", "labels", "test_indices")}
    except FileNotFoundError:
        raise DatasetError(f"emoji dataset not built in {root}: run `{how}`") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"emoji dataset in {root} is unreadable ({exc}): delete it and run `{how}`") from None
    if meta.get("format") != FORMAT:
        raise DatasetError(f"emoji dataset in {root} is format {meta.get('format')}, not {FORMAT}: "
                           f"delete it and run `{how}`")
    images, labels, test = arrays["images"], arrays["labels"], arrays["test_indices"]
    return array_dataset(NAME, images, labels, tuple(meta["classes"]), fingerprint_extra=test.tobytes(),
                         templates=TEMPLATES, native_size=SIDE, test_indices=test)
