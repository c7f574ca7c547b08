"""CoOp prompt learning and the loop, end to end on the real offline prior."""

import math

import numpy as np
import pytest
import torch
from experiments import cache_at, experiment_of

from raysvc.errors import ConfigError, PoolExhaustedError
from raysvc.experiment import initial_labeled
from raysvc.learners.coop import CoOpOptions, prompt_logits, train_coop
from raysvc.loop import LoopState, run_loop
from raysvc.spec import RunSpec


def test_both_prompts_average_the_two_cosines():
    image = torch.tensor([[1.0, 0.0]])
    unified = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    classwise = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    got = prompt_logits(image, [unified, classwise], scale=10.0)
    assert torch.allclose(got, torch.tensor([[10 * (1.0 + 0.6) / 2, 10 * (0.0 + 0.8) / 2]]))


def test_coop_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="prompt"):
        CoOpOptions(prompt="per-pixel")
    with pytest.raises(ConfigError, match="epochs"):
        CoOpOptions(epochs=0)


@pytest.fixture(scope="module")
def small_experiment(feature_cache):
    config = RunSpec(dataset="animal-mnist", per_class=12, test_fraction=0.25)
    return experiment_of(config, feature_cache)


def test_features_are_cached_and_reused(small_experiment, feature_cache):
    config = RunSpec(dataset="animal-mnist", per_class=12, test_fraction=0.25)
    again = experiment_of(config, feature_cache)
    assert again.encoded.key == small_experiment.encoded.key
    assert again.encoded.encode_seconds == 0.0
    assert np.array_equal(again.encoded.image_features, small_experiment.encoded.image_features)
    assert not list(feature_cache.glob("*.tmp"))


@pytest.mark.parametrize("prompt", ["unified", "classwise", "both"])
def test_coop_fits_labeled_set_better_than_zero_shot(small_experiment, prompt):
    exp = small_experiment
    labeled = np.arange(40)
    features = exp.encoded.image_features[exp.pool[labeled]]
    labels = exp.pool_labels[labeled]
    result = train_coop({
        "backbone": exp.backbone, "classnames": list(exp.dataset.classnames),
        "features": features, "labels": labels, "seed": 0, "text_features": exp.encoded.text_features,
        "options": CoOpOptions(variant="official", prompt=prompt, epochs=40, batch_size=64, warmup_epochs=0),
    })
    contexts = result["contexts"]
    assert result["steps"] == 40 and result["device"] == "cpu"
    shapes = {k: v.shape for k, v in contexts.items()}
    expected = {"unified": (16, 384), "classwise": (10, 16, 384)}
    assert shapes == ({k: expected[k] for k in expected} if prompt == "both" else {prompt: expected[prompt]})
    encoder = exp.backbone.load().prompt_encoder(exp.dataset.classnames, 16)
    with torch.no_grad():
        texts = [encoder(torch.as_tensor(c)) for c in contexts.values()]
    trained = (prompt_logits(torch.as_tensor(features), texts, 1.0).argmax(1).numpy() == labels).mean()
    zeroshot = (exp.encoded.zeroshot_probs(exp.pool[labeled]).argmax(1) == labels).mean()
    assert trained > zeroshot + 0.1


def _loop(spec, feature_cache, **kwargs):
    """``spec`` planned, assembled (features from the module's cache) and looped."""
    plan = spec.resolve()
    experiment = experiment_of(spec, feature_cache)
    return run_loop(plan, experiment, **kwargs)


def test_loop_end_to_end_with_selective_querying(feature_cache):
    config = RunSpec(dataset="animal-mnist", strategy="cbsq", per_class=12, test_fraction=0.25, rounds=3,
                       budget=6, learner_params={"epochs": 5})
    seen = []
    rows = _loop(config, feature_cache, on_round=lambda row, state: seen.append(state.completed))
    assert seen == [1, 2, 3]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["n_labeled"] for r in rows] == [6, 12, 18]
    assert rows[0]["n_queried"] == 6  # no selective querying in the first round
    for r in rows:
        assert r["n_labeled"] == r["n_queried"] + r["n_pseudo"]  # a pseudo-label replaces a query
        assert 0.0 <= r["test_acc"] <= 1.0 and r["select_seconds"] >= 0 and r["train_seconds"] > 0
        assert math.isnan(r["pseudo_acc"]) == (r["n_pseudo"] == 0)
    assert rows[0]["n_pseudo"] == 0  # no selective querying in the first round
    assert rows[0]["zeroshot_acc"] == rows[-1]["zeroshot_acc"]


def test_resumed_loop_continues_where_it_stopped(feature_cache):
    config = RunSpec(dataset="animal-mnist", strategy="entropy", per_class=12, test_fraction=0.25, rounds=3,
                       budget=5, learner_params={"epochs": 3})
    full = _loop(config, feature_cache)
    states = []
    _loop(RunSpec(**{**config.to_dict(), "rounds": 2}), feature_cache, on_round=lambda row, state: states.append(state))
    resumed = _loop(config, feature_cache, state=states[-1])
    assert [r["round"] for r in resumed] == [1, 2, 3]
    assert resumed[-1]["n_queried"] == full[-1]["n_queried"]
    assert resumed[-1]["test_acc"] == pytest.approx(full[-1]["test_acc"], abs=1e-6)


def test_k_shot_start_labels_k_per_class_in_a_recorded_round_zero(small_experiment, feature_cache):
    config = RunSpec(dataset="animal-mnist", strategy="random", per_class=12, test_fraction=0.25, rounds=2,
                       budget=5, initial_per_class=1, learner_params={"epochs": 3})
    states = []
    rows = _loop(config, feature_cache, on_round=lambda row, state: states.append(state.labeled.copy()))
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["n_labeled"] for r in rows] == [10, 15, 20]
    assert [r["n_queried"] for r in rows] == [10, 15, 20]  # the start's labels come from the oracle too
    start = np.flatnonzero(states[0])
    assert sorted(small_experiment.pool_labels[start].tolist()) == list(range(10))
    assert states[1][start].all()
    again = _loop(config, feature_cache, on_round=lambda row, state: states.append(state.labeled.copy()))
    assert np.array_equal(states[3], states[0])  # seeded
    assert again[0]["test_acc"] == pytest.approx(rows[0]["test_acc"], abs=1e-6)


def test_k_shot_start_larger_than_a_class_is_refused(feature_cache):
    with pytest.raises(PoolExhaustedError, match="class 'dog' has 2 pool images, fewer than initial_per_class=3"):
        initial_labeled(np.array([0, 0, 0, 1, 1]), ["cat", "dog"], per_class=3, seed=0)
    config = RunSpec(dataset="animal-mnist", per_class=12, test_fraction=0.25, rounds=1, budget=2,
                       initial_per_class=9)
    with pytest.raises(PoolExhaustedError, match="after a 9-shot start need 92 images; the pool has 90"):
        _loop(config, feature_cache)
    with pytest.raises(ConfigError, match="initial_per_class"):
        RunSpec(initial_per_class=-1)


def test_budget_larger_than_pool_is_refused(feature_cache):
    config = RunSpec(dataset="animal-mnist", per_class=12, test_fraction=0.25, rounds=2, budget=80)
    with pytest.raises(PoolExhaustedError, match="pool has"):
        _loop(config, feature_cache)
    assert LoopState.fresh(3).labels.tolist() == [-1, -1, -1]


def test_float16_feature_store_keeps_embeddings_within_rounding(small_experiment, feature_cache, tmp_path):
    store = cache_at(tmp_path, dtype="float16")
    half = store.encode(small_experiment.dataset, small_experiment.backbone)
    assert half.key != small_experiment.encoded.key
    assert np.load(store.path(half.key)).dtype == np.float16
    assert half.image_features.dtype == np.float16  # handed out as stored, not as a float32 copy
    assert np.abs(half.image_features.astype(np.float32) - small_experiment.encoded.image_features).max() < 2e-3
    full = small_experiment.encoded.zeroshot_probs(np.arange(20))
    assert np.abs(half.zeroshot_probs(np.arange(20)) - full).max() < 2e-2
    with pytest.raises(ConfigError, match="float16"):
        cache_at(tmp_path, dtype="int8")


def test_pool_centring_removes_the_pool_mean_and_renormalises():
    """Hand case: rows e1, e2 (the pool) and (1, 1)/sqrt 2; the pool's mean is (.5, .5)."""
    from raysvc.encoded import EncodedDataset, centred

    x = np.array([[1, 0], [0, 1], [2 ** -0.5, 2 ** -0.5]], dtype=np.float16)
    text = np.eye(2, dtype=np.float32)
    encoded = EncodedDataset(x, text, text, np.array([0, 1, 0]), 10.0, "k", 0.0)
    got = centred(encoded, np.array([0, 1]))
    h = 2 ** -0.5
    np.testing.assert_allclose(got.image_features.astype(np.float32), [[h, -h], [-h, h], [h, h]], atol=1e-3)
    assert got.image_features.dtype == np.float16 and got.key.startswith("k-centred-")


def test_prior_weight_mixes_the_zero_shot_cosines_into_the_logits():
    """Hand case: learned cosines (1, 0), zero-shot cosines (0, 1), weight 0.25, scale 4 -> (3, 1)."""
    image = torch.tensor([[1.0, 0.0]])
    learned, prior = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(prompt_logits(image, [learned], 4.0, prior, 0.25).numpy(), [[3.0, 1.0]])
    np.testing.assert_allclose(prompt_logits(image, [learned], 4.0, prior, 0.0).numpy(), [[4.0, 0.0]])


def test_kgcoop_penalty_is_the_mean_squared_distance_to_the_zero_shot_embeddings():
    """Hand case: rows (1, 0), (0, 1) against (0, 1), (1, 0): each squared distance 2, mean 2;
    averaged with a second prompt kind equal to the prior (0): 1."""
    from raysvc.learners.coop import kgcoop_penalty

    learned, prior = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert kgcoop_penalty([learned], prior).item() == pytest.approx(2.0)
    assert kgcoop_penalty([learned, prior], prior).item() == pytest.approx(1.0)


def test_run_ids_of_earlier_configurations_do_not_change():
    """Ids as computed before ``initial_per_class`` existed: reruns must replace, not duplicate."""
    assert RunSpec().run_id == "animal-mnist-cbsq-coop-s0-f90dfccc3b"
    config = RunSpec(strategy="pcoreset", learner="kd-zeroshot", seed=2, per_class=200)
    assert config.run_id == "animal-mnist-pcoreset-kd-zeroshot-s2-2957aabfe0"
    assert RunSpec(strategy="pcoreset", learner="kd-zeroshot", seed=2, per_class=200,
                     initial_per_class=1).run_id != config.run_id


def test_official_coop_warms_up_one_epoch_at_1e_5_then_follows_a_cosine():
    """Hand case: 2 epochs of 2 steps, lr 0.1, one warm-up epoch (dassl's constant warm-up)."""
    from raysvc.learners.coop import warmup_cosine

    config = CoOpOptions(variant="official", epochs=2, lr=0.1)
    assert config.warmup_epochs == 1 and config.prompt == "classwise" and config.random_context
    factor = warmup_cosine(config, steps_per_epoch=2)
    assert [factor(s) for s in range(4)] == pytest.approx([1e-4, 1e-4, 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))])
    prior = CoOpOptions()
    assert (prior.ctx_init, prior.kg_weight, prior.prior_weight, prior.lr, prior.epochs) == ("a photo of a", 8.0, 0.5,
                                                                                           0.01, 50)
