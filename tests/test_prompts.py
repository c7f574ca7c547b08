"""Class prompts: CoOp's templates as the official code has them, and class descriptions."""

import json

import numpy as np
import pytest
import torch

from raysvc.datasets.base import ImageDataset
from raysvc.encoded import encode_class_prompts
from raysvc.errors import ConfigError, DatasetError
from raysvc.prompts import COOP_TEMPLATES, read_descriptions, with_prompts

# ml-postech/active-prompt-learning @105a662 trainers/alvlm.py:30-48 (CUSTOM_TEMPLATES),
# by the dataset_dir of its datasets/*.py
OFFICIAL_TEMPLATES = {
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


def test_coop_templates_are_the_official_ones():
    assert COOP_TEMPLATES == OFFICIAL_TEMPLATES


def _dataset(classnames):
    return ImageDataset(name="toy", classnames=tuple(classnames), labels=np.zeros(0, dtype=np.int64),
                        fingerprint="toy", loader=lambda i: None)


def test_descriptions_match_class_names_case_insensitively_with_underscores_as_spaces(tmp_path):
    path = tmp_path / "descriptors.json"
    path.write_text(json.dumps({"Golden_Retriever": ["a dog with golden fur"], "tabby CAT": "a striped cat"}))
    dataset = with_prompts(_dataset(["golden retriever", "Tabby cat"]), None, read_descriptions(str(path)), str(path))
    assert dataset.prompts() == [("a dog with golden fur",), ("a striped cat",)]
    with pytest.raises(DatasetError, match="no entry for class 'beagle'"):
        with_prompts(_dataset(["beagle"]), None, read_descriptions(str(path)), str(path))


def test_descriptions_naming_one_class_twice_are_refused(tmp_path):
    path = tmp_path / "descriptors.json"
    path.write_text(json.dumps({"tabby_cat": ["a"], "Tabby Cat": ["b"]}))
    with pytest.raises(ConfigError, match="name the same class"):
        read_descriptions(str(path))


class _FixedText:
    """A backbone whose raw sentence embeddings are given."""

    def __init__(self, raw):
        self.raw = raw

    def encode_text(self, prompts, normalize=True):
        out = torch.as_tensor([self.raw[p] for p in prompts], dtype=torch.float32)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def test_class_text_embeddings_normalised_for_zero_shot_and_raw_for_clap():
    backbone = _FixedText({"a": [3.0, 0.0], "b": [0.0, 1.0], "c": [2.0, 2.0]})
    normalised, raw = encode_class_prompts(backbone, [("a", "b"), ("c",)])
    # zero-shot: the normalised mean of the normalised sentences ((1, 0) and (0, 1) -> (1, 1) / sqrt 2)
    np.testing.assert_allclose(normalised, [[2 ** -0.5, 2 ** -0.5], [2 ** -0.5, 2 ** -0.5]], atol=1e-6)
    # CLAP's anchor (ActiveKD's clip_weights_before_norm): the plain mean of the raw sentences
    np.testing.assert_allclose(raw, [[1.5, 0.5], [2.0, 2.0]], atol=1e-6)
