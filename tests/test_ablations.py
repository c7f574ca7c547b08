"""What a selection may read and the pool protocol (issue 20): the learner's class text
embeddings in the class-guided features, the true labels only for an explicit oracle, the
train-only pool, the unlabeled-pool subsample, base-to-novel."""

from __future__ import annotations

import numpy as np
import pytest

from raysvc.datasets import ImageDataset
from raysvc.encoded import EncodedDataset
from raysvc.experiment import Experiment
from raysvc.learners.coop import CoOpLearner, CoOpOptions
from raysvc.loop import LoopState, make_pool
from raysvc.strategies import make_strategy
from raysvc.strategies.base import ClusterStrategy


def deg(*angles):
    a = np.deg2rad(np.array(angles, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def tiny_experiment(image_features, text_features, labels, scale=100.0) -> Experiment:
    """An experiment of embeddings only (no images): every row in the pool, none in the test."""
    n = len(image_features)
    classnames = tuple(f"class {c}" for c in range(len(text_features)))
    dataset = ImageDataset("tiny", classnames, np.asarray(labels), "tiny-0", loader=lambda i: None)
    encoded = EncodedDataset(np.asarray(image_features), np.asarray(text_features), np.asarray(text_features),
                             np.asarray(labels), scale, "tiny", 0.0)
    return Experiment(dataset, encoded, None, np.arange(n), np.arange(0), budget=1)


@pytest.fixture
def centroid_clustering(monkeypatch):
    """K-means replaced by a given assignment with given centroids; records the features clustered."""
    seen = []

    def install(centroids, assignment):
        def fixed(self, x, k, seed):
            seen.append(np.array(x))
            return centroids, assignment, 0.0

        monkeypatch.setattr(ClusterStrategy, "kmeans", fixed)
        return seen

    return install


# Row 0 labeled (90 deg); u1 = row 1 at 0 deg, u2 = row 2 at 30 deg. Zero-shot class embeddings at
# 0 and 90 deg; the learned ones at 60 and -60 deg. Scale 100: probabilities one-hot but u1's,
# which ties the learned classes (.5, .5).
GUIDED_X = deg(90, 0, 30)
ZERO_SHOT_T = deg(0, 90)
LEARNED_T = deg(60, -60)


def _guided(x, p, t):
    z = np.concatenate([x, p @ t], axis=1)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_cb_clusters_on_the_learned_class_embeddings_once_a_prompt_is_trained(centroid_clustering):
    """Hand case (CB official, ``cb.py:74-77``): the label-free cluster {u1, u2} has centroid
    [1, 0, 0, 1]. Zero-shot, both text halves are e1: z(u1) = [1, 0, 1, 0]/sqrt2 (cosine .5 to
    the centroid) beats z(u2) = [.87, .5, 1, 0]/sqrt2 (.43): u1 is queried. With the learned
    embeddings z(u1) = [1, 0, .5, 0]/sqrt1.25 (.63) and z(u2) = [.87, .5, .5, .87]/sqrt2 (.87):
    u2 is queried."""
    experiment = tiny_experiment(GUIDED_X, ZERO_SHOT_T, [1, 0, 0])
    seen = centroid_clustering(np.array([[0, 1, 0, 1], [1, 0, 0, 1]], dtype=np.float32), np.array([0, 1, 1]))
    strategy = make_strategy("cb")
    learner = CoOpLearner(experiment, CoOpOptions(variant="official"))
    state = LoopState.fresh(3)
    state.labeled[0], state.labels[0] = True, 1

    def pick():
        pool = make_pool(frozenset(strategy.requires), experiment, learner, GUIDED_X, state, 2)
        return pool, strategy.select(pool, 1, seed=0).query.tolist()

    pool, picks = pick()  # before any fit: the zero-shot prompts
    np.testing.assert_array_equal(pool.text_features, ZERO_SHOT_T)
    np.testing.assert_allclose(seen[-1], _guided(GUIDED_X, np.array([[0, 1], [1, 0], [1, 0]]), ZERO_SHOT_T), atol=1e-6)
    assert picks == [1]

    learner.set_state({"class_embeddings_0": LEARNED_T})  # as a fit leaves it
    pool, picks = pick()
    np.testing.assert_array_equal(pool.text_features, LEARNED_T)
    p = np.array([[1, 0], [0.5, 0.5], [1, 0]])
    np.testing.assert_allclose(pool.probs, p, atol=1e-6)
    np.testing.assert_allclose(seen[-1], _guided(GUIDED_X, p, LEARNED_T), atol=1e-6)
    assert picks == [2]


@pytest.mark.parametrize("prompt, prior_weight", [("classwise", 0.0), ("both", 0.0), ("unified", 0.5), ("both", 0.25)])
def test_class_text_features_are_those_the_probabilities_come_from(prompt, prior_weight):
    """softmax(scale f . T^T) with T the learner's class text features is its pool probabilities,
    for one or both prompt kinds (eq. 14: mean of the cosines) and a zero-shot share of the logits;
    with one kind and no share T is that kind's learned embeddings."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kinds = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2 if prompt == "both" else 1)]
    kinds = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in kinds]
    experiment = tiny_experiment(x, deg(0, 90, 180, 270) @ np.eye(2, 3, dtype=np.float32), np.zeros(7, int), 5.0)
    learner = CoOpLearner(experiment, CoOpOptions(prompt=prompt, prior_weight=prior_weight))
    learner.set_state({f"class_embeddings_{i}": t for i, t in enumerate(kinds)})
    t = learner.class_text_features()
    logits = 5.0 * x @ t.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), learner.predict_proba("pool"), atol=1e-5)
    if len(kinds) == 1 and not prior_weight:
        np.testing.assert_array_equal(t, kinds[0])


def test_learners_without_text_embeddings_keep_the_zero_shot_ones():
    from raysvc.learners import make_learner

    experiment = tiny_experiment(GUIDED_X, ZERO_SHOT_T, [1, 0, 0])
    np.testing.assert_array_equal(make_learner("kd-zeroshot", experiment).class_text_features(), ZERO_SHOT_T)
    np.testing.assert_array_equal(make_learner("coop", experiment).class_text_features(), ZERO_SHOT_T)


def test_true_labels_reach_a_strategy_only_through_an_explicit_oracle():
    from raysvc.errors import ConfigError, RaysvcBug
    from raysvc.spec import RunSpec

    with pytest.raises(ConfigError, match="oracle=true"):  # refused at plan time, one line
        RunSpec(dataset="emoji", strategy="cb", strategy_params={"features": "label"}).resolve()
    RunSpec(dataset="emoji", strategy="cb", strategy_params={"features": "label", "oracle": True}).resolve()

    experiment = tiny_experiment(GUIDED_X, ZERO_SHOT_T, [1, 0, 0])
    learner = CoOpLearner(experiment, CoOpOptions())
    state = LoopState.fresh(3)
    strategy = make_strategy("cb", features="label", oracle=True)
    assert "true_labels" in strategy.requires and strategy.oracle
    pool = make_pool(frozenset(strategy.requires), experiment, learner, GUIDED_X, state, 1, oracle=strategy.oracle)
    np.testing.assert_array_equal(pool.true_labels, [1, 0, 0])
    assert pool.probs is None  # CB* weighs by the label, not the prediction
    with pytest.raises(RaysvcBug, match="oracle=true"):
        make_pool(frozenset(strategy.requires), experiment, learner, GUIDED_X, state, 1)
    plain = make_pool(frozenset(make_strategy("cb").requires), experiment, learner, GUIDED_X, state, 1)
    assert plain.true_labels is None


def test_selective_querying_options_and_its_base_options_are_parsed_once(monkeypatch):
    """The base strategy's options are validated with the wrapper's, at plan time; a plan shipped
    to a worker and the strategy built from it parse nothing again."""
    import pickle
    from collections import Counter

    from raysvc.options import Options
    from raysvc.spec import RunSpec

    parses = Counter()
    parse = Options.parse.__func__

    def counting(cls, values, owner):
        parses[owner] += 1
        return parse(cls, values, owner)

    monkeypatch.setattr(Options, "parse", classmethod(counting))
    plan = RunSpec(dataset="emoji", strategy="sq:pcb",
                   strategy_params={"base_options": {"candidate_fraction": 0.2}, "max_pseudo": 2}).resolve()
    assert parses["strategy 'sq:pcb'"] == 1 and parses["strategy 'pcb'"] == 1
    before = Counter(parses)
    shipped = pickle.loads(pickle.dumps(plan))
    strategy = shipped.strategy.cls(shipped.strategy.options)
    assert parses == before
    assert strategy.name == "sq:pcb" and strategy.base.options.candidate_fraction == 0.2
    assert strategy.requires == {"features", "probs"} and plan.run_id.startswith("emoji-sq+pcb-coop-s0-")
    assert plan.options["strategy"]["base_options"] == {"candidate_fraction": 0.2}  # as the manifest records it


def test_the_strategy_listing_shows_the_selective_querying_family():
    from raysvc.listing import list_parts, option_keys_epilog

    listing = list_parts("strategies")
    assert "sq:<strategy>" in listing and "base_options" in listing and "clusters_per_budget" in listing
    assert "base_options (dict | None, default None)" in listing  # every default printable
    assert "strategy sq:<strategy>: base_options, variant, max_pseudo" in option_keys_epilog()


# --- the pool protocol ----------------------------------------------------------------------


def test_a_coop_split_pool_of_training_images_only(tmp_path):
    """pool_parts=train leaves the split's val images out (APL's and ActiveKD's pool: dassl's
    train_x); the test split is unchanged and the fingerprint differs."""
    import json

    from PIL import Image

    from raysvc.datasets import load_dataset, pool_test_split

    root = tmp_path / "d"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    split = {"train": [["cat/0.png", 0, "cat"], ["dog/0.png", 1, "dog"]], "val": [["cat/1.png", 0, "cat"]],
             "test": [["cat/2.png", 0, "cat"], ["dog/2.png", 1, "dog"]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    both = load_dataset(str(root), {"split_file": str(tmp_path / "split.json")})
    train = load_dataset(str(root), {"split_file": str(tmp_path / "split.json"), "pool_parts": "train"})
    assert [len(part) for part in pool_test_split(both, 0.5, 0)] == [3, 2]
    pool, test = pool_test_split(train, 0.5, 0)
    assert pool.tolist() == [0, 1] and train.labels[pool].tolist() == [0, 1] and train.labels[test].tolist() == [0, 1]
    assert train.fingerprint != both.fingerprint


@pytest.fixture(scope="module")
def mnist_spec():
    from raysvc.spec import RunSpec

    # 9 pool and 3 test images for each of 10 classes
    return RunSpec(dataset="animal-mnist", strategy="random", per_class=12, test_fraction=0.25, rounds=1, budget=5,
                   initial_per_class=1, learner_params={"epochs": 1})


def test_pool_subsample_keeps_the_k_shot_start_and_a_seeded_draw_of_the_rest(mnist_spec, feature_cache):
    """The start is drawn from the whole pool, as without a subsample; 30 of the other 80 pool
    images are kept, the same for the same seed, others for another seed."""
    from experiments import experiment_of

    from raysvc.errors import PoolExhaustedError
    from raysvc.spec import RunSpec

    whole = experiment_of(mnist_spec, feature_cache)
    sub = experiment_of(RunSpec(**{**mnist_spec.to_dict(), "pool_subsample": 30}), feature_cache)
    assert len(whole.pool) == 90 and len(sub.pool) == 40 and len(sub.initial) == 10
    np.testing.assert_array_equal(sub.pool[sub.initial], whole.pool[whole.initial])  # the same start images
    assert sorted(sub.pool_labels[sub.initial].tolist()) == list(range(10)) and set(sub.pool) <= set(whole.pool)
    np.testing.assert_array_equal(sub.test, whole.test)
    again = experiment_of(RunSpec(**{**mnist_spec.to_dict(), "pool_subsample": 30}), feature_cache)
    other = experiment_of(RunSpec(**{**mnist_spec.to_dict(), "pool_subsample": 30, "seed": 1}), feature_cache)
    np.testing.assert_array_equal(again.pool, sub.pool)
    assert set(other.pool) != set(sub.pool)
    with pytest.raises(PoolExhaustedError, match="the pool has 40"):  # the budget is checked on the kept pool
        experiment_of(RunSpec(**{**mnist_spec.to_dict(), "pool_subsample": 30, "rounds": 7}), feature_cache)
    assert RunSpec(**{**mnist_spec.to_dict(), "pool_subsample": None}).run_id == mnist_spec.run_id


def test_a_subsampled_run_starts_from_the_experiments_k_shot_images(mnist_spec, feature_cache):
    from experiments import experiment_of

    from raysvc.loop import run_loop
    from raysvc.spec import RunSpec

    spec = RunSpec(**{**mnist_spec.to_dict(), "pool_subsample": 30})
    experiment = experiment_of(spec, feature_cache)
    starts = []
    rows = run_loop(spec.resolve(), experiment, on_round=lambda row, state: starts.append(state.labeled.copy()))
    assert np.flatnonzero(starts[0]).tolist() == sorted(experiment.initial.tolist())
    assert [r["pool_size"] for r in rows] == [40, 40] and [r["n_labeled"] for r in rows] == [10, 15]
    assert all(np.isnan(r[c]) for r in rows for c in ("test_acc_base", "test_acc_novel", "test_acc_hm"))


def test_base_novel_classes_by_hand():
    from raysvc.errors import ConfigError
    from raysvc.experiment import base_novel_classes

    base, novel = base_novel_classes(5, "halves", seed=0)  # CoOp: the first ceil(5/2) labels
    assert base.tolist() == [0, 1, 2] and novel.tolist() == [3, 4]
    base, novel = base_novel_classes(10, "seeded", seed=0)
    assert len(base) == len(novel) == 5 and sorted(base.tolist() + novel.tolist()) == list(range(10))
    np.testing.assert_array_equal(base_novel_classes(10, "seeded", seed=0)[0], base)
    assert base.tolist() != base_novel_classes(10, "seeded", seed=1)[0].tolist()
    with pytest.raises(ConfigError, match="at least 4 classes"):
        base_novel_classes(3, "halves", seed=0)


def test_base_to_novel_trains_on_base_classes_and_scores_both_halves(mnist_spec, feature_cache):
    """animal-mnist halves: base bear..dog (0-4), novel elephant..zebra (5-9). The pool and test
    hold base images only, labelled among the base classes; the novel test images are scored with
    the learned context in front of the novel names; HM = 2 b n / (b + n)."""
    from experiments import experiment_of

    from raysvc.errors import ConfigError
    from raysvc.loop import run_loop
    from raysvc.spec import RunSpec

    spec = RunSpec(**{**mnist_spec.to_dict(), "base_to_novel": "halves", "initial_per_class": 0})
    experiment = experiment_of(spec, feature_cache)
    whole = experiment_of(mnist_spec, feature_cache)
    assert experiment.dataset.classnames == ("bear", "bird", "cat", "cow", "dog")
    assert experiment.novel.classnames == ("elephant", "giraffe", "horse", "sheep", "zebra")
    assert len(experiment.pool) == 45 and len(experiment.test) == 15 and len(experiment.novel.test) == 15
    assert set(experiment.pool_labels) == set(range(5)) and set(experiment.novel.test_labels) == set(range(5))
    assert experiment.budget == 5 and experiment.encoded.text_features.shape[0] == 5
    np.testing.assert_array_equal(experiment.novel.text_features, whole.encoded.text_features[5:])
    np.testing.assert_array_equal(experiment.encoded.image_features, whole.encoded.image_features)  # no copy

    rows = run_loop(spec.resolve(), experiment)
    (row,) = rows
    b, n = row["test_acc_base"], row["test_acc_novel"]
    assert row["test_acc"] == b and row["n_classes"] == 5
    assert row["test_acc_hm"] == pytest.approx(2 * b * n / (b + n))
    assert 0.0 < n <= 1.0
    with pytest.raises(ConfigError, match="prompt=unified"):
        RunSpec(**{**spec.to_dict(), "learner_params": {"variant": "official"}}).resolve()
    with pytest.raises(ConfigError, match="prompt=unified"):
        RunSpec(**{**spec.to_dict(), "learner": "kd-zeroshot", "learner_params": {}}).resolve()


def test_novel_class_probs_put_the_learned_context_before_the_new_names(mnist_spec, feature_cache):
    """Before a fit the novel classes are scored zero-shot; after one, with the unified context
    the fit learned, encoded in front of the novel names (the base names give the base embeddings)."""
    import torch
    from experiments import experiment_of

    from raysvc.encoded import softmax
    from raysvc.learners.base import LocalRunner
    from raysvc.learners.coop import CoOpLearner as Coop
    from raysvc.learners.coop import context_length
    from raysvc.spec import RunSpec

    spec = RunSpec(**{**mnist_spec.to_dict(), "base_to_novel": "halves", "initial_per_class": 0})
    experiment = experiment_of(spec, feature_cache)
    novel = experiment.novel
    learner = Coop(experiment, spec.resolve().learner.options)
    x = np.asarray(experiment.encoded.image_features[novel.test], dtype=np.float32)
    np.testing.assert_allclose(learner.novel_class_probs(novel.test, novel.classnames, novel.text_features),
                               softmax(experiment.encoded.logit_scale * x @ novel.text_features.T), atol=1e-5)
    learner.fit(np.arange(10), experiment.pool_labels[:10], seed=0, runner=LocalRunner())
    backbone = experiment.backbone.load()
    encoder = backbone.prompt_encoder(list(novel.classnames), context_length(learner.options, backbone))
    with torch.no_grad():
        learned = encoder(torch.as_tensor(learner.contexts["unified"])).numpy()
    w = learner.options.prior_weight
    cosines = (1 - w) * x @ learned.T + w * x @ novel.text_features.T
    np.testing.assert_allclose(learner.novel_class_probs(novel.test, novel.classnames, novel.text_features),
                               softmax(experiment.encoded.logit_scale * cosines), atol=1e-5)
