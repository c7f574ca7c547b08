"""The contract every registered dataset, backbone and learner keeps, parametrised over the
registries: a part added in its own module is covered here without touching this file
(strategies have theirs in test_strategy_contract.py). CONTRIBUTING.md points here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raysvc.backbones import BACKBONES, load_backbone
from raysvc.datasets import DATASETS, load_dataset
from raysvc.learners import LEARNERS, LocalRunner, make_learner

# a member of every family, so a family is exercised too (random weights: no hub access)
FAMILY_MEMBERS = {"open_clip:<model>:<pretrained tag|checkpoint path|random>": "open_clip:RN50:random"}


def _backbone_names() -> list[str]:
    return [e.name for e in BACKBONES.entries()] + [FAMILY_MEMBERS[f.name] for f in BACKBONES.families()]


@pytest.mark.parametrize("name", [e.name for e in DATASETS.entries()])
def test_every_dataset_loads_labelled_rgb_images_with_a_stable_fingerprint(name):
    dataset = load_dataset(name)
    assert dataset.n_classes >= 2 and len(dataset) == len(dataset.labels)
    assert set(np.unique(dataset.labels)) == set(range(dataset.n_classes))  # every class has images
    image = dataset.load(len(dataset) - 1)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    prompts = dataset.prompts()
    assert len(prompts) == dataset.n_classes and all(p and all(isinstance(s, str) for s in p) for p in prompts)
    assert load_dataset(name).fingerprint == dataset.fingerprint
    if dataset.test_indices is not None:
        assert 0 < len(dataset.test_indices) < len(dataset)


@pytest.mark.parametrize("name", _backbone_names())
def test_every_backbone_embeds_images_and_prompts_in_one_unit_sphere(name):
    backbone = load_backbone(name)
    images = [Image.fromarray(np.full((48, 48, 3), v, np.uint8)) for v in (30, 200)]
    with torch.no_grad():
        pixels = backbone.preprocess(images)
        features = backbone.encode_images(pixels)
        text = backbone.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert pixels.shape[-1] == backbone.image_size
    assert features.shape == (2, backbone.embed_dim) and text.shape == (2, backbone.embed_dim)
    assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-4)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-4)
    encoder = backbone.prompt_encoder(["cat", "dog"], n_ctx=4)
    with torch.no_grad():  # a context of the words themselves is the plain prompt
        assert torch.allclose(encoder(encoder.word_embeddings("a photo of a")), text, atol=1e-4)
    assert isinstance(backbone.model_id, str) and backbone.model_id and backbone.logit_scale > 0


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    from experiments import experiment_of

    from raysvc.spec import RunSpec

    spec = RunSpec(dataset="animal-mnist", per_class=4, test_fraction=0.25, rounds=1)
    return experiment_of(spec, tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("name", [e.name for e in LEARNERS.entries()])
def test_every_learner_starts_at_the_prior_fits_predicts_and_restores(tiny_experiment, name):
    exp = tiny_experiment
    quick = {"epochs": 1} if name == "coop" else {"repeat": 1, "image_size": 32, "clap_repeat": 5}
    learner = make_learner(name, exp, quick)
    np.testing.assert_allclose(learner.predict_proba("test"), exp.encoded.zeroshot_probs(exp.test), atol=1e-5)
    positions = np.arange(exp.dataset.n_classes)
    learner.fit(positions, exp.pool_labels[positions], seed=0, runner=LocalRunner())
    for split, rows in (("pool", exp.pool), ("test", exp.test)):
        probs = learner.predict_proba(split)
        assert probs.shape == (len(rows), exp.dataset.n_classes)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    restored = make_learner(name, exp, quick)
    restored.set_state(learner.get_state())
    np.testing.assert_allclose(restored.predict_proba("test"), learner.predict_proba("test"), atol=1e-6)
    assert isinstance(learner.student, str) and isinstance(learner.teacher, str)
