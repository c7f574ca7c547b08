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
    assert "strategy sq:<strategy>: base_options, variant, max_pseudo" in option_keys_epilog()
