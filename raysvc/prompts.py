"""Class prompts: CoOp's per-dataset templates, a run's own template, class descriptions.

CoOp (and both papers after it) prompt each dataset with its own template,
``CUSTOM_TEMPLATES`` in the CoOp code (``trainers/alvlm.py`` of
ml-postech/active-prompt-learning @105a662 carries the same table); a dataset folder
with one of the usual names (``oxford_pets``, ...) gets its template by default. The PCB
setting prompts with class descriptions written by a language model (Menon & Vondrick
2023): a JSON file maps each class name to sentences whose embeddings are averaged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from raysvc.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # raysvc.datasets imports this module (folder templates)
    from raysvc.datasets import ImageDataset

# generic templates whose embeddings, averaged, prompt a class without choosing a form for
# the images at hand (measured on the emoji pool: bench/emoji_prior.py)
PROMPT_ENSEMBLE = (
    "a photo of a {}.", "an emoji of a {}.", "a cartoon of a {}.", "an icon of a {}.", "a drawing of a {}.",
    "a {}.", "{}",
)  # fmt: skip

# dataset folder name (as in CoOp's DATASETS.md) -> CoOp's template (APL alvlm.py:30-48,
# keyed there by DATASET.NAME; the folders are the dataset_dir of its datasets/*.py)
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food-101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech-101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet-sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet-adversarial": "a photo of a {}.",
    "imagenet-rendition": "a photo of a {}.",
}


def description_key(name: str) -> str:
    """How class names and description keys are matched: lowercased, ``_`` as a space
    (APL alvlm.py:139-151 lowercases both and writes class names with spaces)."""
    return name.replace("_", " ").lower()


def read_descriptions(path: str) -> dict[str, tuple[str, ...]]:
    """Class name -> sentences, from a JSON object of non-empty lists of strings."""
    try:
        raw = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read class descriptions {path!r}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"class descriptions {path!r} are not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"class descriptions {path!r} must be a JSON object: class name -> list of sentences")
    out, seen = {}, {}
    for name, sentences in raw.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s for s in sentences):
            raise ConfigError(f"class descriptions {path!r}: {name!r} needs a non-empty list of sentences")
        if description_key(name) in seen:
            raise ConfigError(f"class descriptions {path!r}: {seen[description_key(name)]!r} and {name!r} name the "
                              "same class (names match case-insensitively, '_' as a space)")
        seen[description_key(name)] = name
        out[str(name)] = tuple(sentences)
    return out


def with_prompts(dataset: ImageDataset, template: str | None,
                 descriptions: Mapping[str, tuple[str, ...]] | None, source: str | None = None) -> ImageDataset:
    """``dataset`` prompted with ``template`` and/or ``descriptions`` (read from ``source``
    by :func:`read_descriptions`).

    Only the text side changes, so the images' fingerprint (the feature cache key) stays.
    Descriptions must cover every class; names match by :func:`description_key`
    (case-insensitively, ``_`` as a space), so the descriptor files of the PCB code fit.
    """
    if template is not None:
        dataset = dataclasses.replace(dataset, templates=(template,))
    if descriptions is not None:
        described = {description_key(k): v for k, v in descriptions.items()}
        rows = []
        for name in dataset.classnames:
            sentences = described.get(description_key(name))
            if sentences is None:
                raise DatasetError(f"class descriptions {source!r} have no entry for class {name!r}")
            rows.append(sentences)
        dataset = dataclasses.replace(dataset, descriptions=tuple(rows))
    return dataset
