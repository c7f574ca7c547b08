"""Cluster-based strategies on toys whose right answer is known by construction."""

import numpy as np
import pytest

from bench.reference import kmeans_reference
from raysvc.errors import ConfigError, RaysvcBug
from raysvc.strategies import Pool, make_strategy
from raysvc.strategies._faiss import kmeans, knn
from raysvc.strategies._guided import class_guided_features, pool_features
from raysvc.strategies.cbsq import class_thresholds


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(sizes, dim=6, std=0.02, seed=0):
    """Tight unit-norm blobs around the first len(sizes) axes; returns (features, blob id)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(len(sizes)), sizes)
    x = np.eye(dim)[ids] + std * rng.standard_normal((len(ids), dim))
    return unit(x).astype(np.float32), ids


def blob_pool(sizes, labeled=(), round=1, **kw):
    """Pool of blobs where blob b is class b and the model leans towards it."""
    x, ids = blobs(sizes, **kw)
    n_classes = len(sizes)
    text = np.eye(x.shape[1], dtype=np.float32)[:n_classes]
    probs = np.full((len(x), n_classes), 0.1 / max(n_classes - 1, 1))
    probs[np.arange(len(x)), ids] = 0.9
    mask = np.zeros(len(x), dtype=bool)
    mask[list(labeled)] = True
    labels = np.where(mask, ids, -1)
    return Pool(x, probs, mask, labels, text, round=round), ids


def nearest_to_mean(x, members):
    """The member nearest the mean of ``members`` (K-means' centroid on a clean blob)."""
    return members[np.argmin(((x[members] - x[members].mean(axis=0)) ** 2).sum(axis=1))]


# --- faiss helpers ---------------------------------------------------------------


def test_kmeans_matches_sklearn_on_blobs():
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(600, centers=5, n_features=8, random_state=0)
    centroids, assignment, inertia = kmeans(x, 5, seed=0)
    assert inertia <= 1.01 * kmeans_reference(x, 5, seed=0)[2]
    sq = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(assignment, sq.argmin(axis=1))
    assert inertia == pytest.approx(sq.min(axis=1).sum(), rel=1e-4)


def test_kmeans_clips_k_to_the_number_of_points():
    x = np.random.default_rng(0).standard_normal((7, 3))
    centroids, assignment, inertia = kmeans(x, 50, seed=0)
    assert centroids.shape == (7, 3)
    assert sorted(assignment) == list(range(7)) and inertia == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_equals_brute_force(metric):
    rng = np.random.default_rng(1)
    x, q = rng.standard_normal((200, 16)), rng.standard_normal((50, 16))
    dist, idx = knn(x, 7, queries=q, metric=metric, chunk_size=13)
    if metric == "l2":
        full = np.sqrt(((q[:, None, :] - x[None]) ** 2).sum(axis=2))
        expected = np.argsort(full, axis=1)[:, :7]
    else:
        full = q @ x.T
        expected = np.argsort(-full, axis=1)[:, :7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist, np.take_along_axis(full, expected, axis=1), rtol=1e-4, atol=1e-4)


def test_knn_clips_k_and_finds_itself_first():
    x = np.random.default_rng(2).standard_normal((5, 4))
    dist, idx = knn(x, 10)
    assert idx.shape == (5, 5) and (idx >= 0).all()
    np.testing.assert_array_equal(idx[:, 0], np.arange(5))
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-3)


# --- class-guided features ---------------------------------------------------------


def test_class_guided_features_equal_hand_computation():
    features = np.array([[3.0, 4.0], [0.0, 2.0]])  # normalised first, as the official forward pass
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    probs = np.array([[0.75, 0.25], [0.5, 0.5]])
    # [I, p T] = (.6, .8, .75, .25) with squared norm 1.625, and (0, 1, .5, .5) with 1.5
    paper = np.array([[0.6, 0.8, 0.75, 0.25], [0.0, 1.0, 0.5, 0.5]])
    official = paper / np.sqrt([[1.625], [1.5]])
    z = class_guided_features(features, probs, text)
    assert z.dtype == np.float32 and z.flags.c_contiguous
    np.testing.assert_allclose(z, official, atol=1e-6)
    np.testing.assert_allclose(class_guided_features(features, probs, text, variant="paper"), paper, atol=1e-6)
    # chunked and row-gathered computations agree with the whole
    np.testing.assert_allclose(class_guided_features(features, probs, text, chunk=1, rows=np.array([1])), official[1:],
                               atol=1e-6)


def test_class_guided_features_of_a_float16_pool():
    rng = np.random.default_rng(0)
    features = unit(rng.standard_normal((50, 8))).astype(np.float16)
    text = unit(rng.standard_normal((3, 8))).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), 50).astype(np.float16)
    z = class_guided_features(features, probs, text, chunk=7)
    expected = class_guided_features(features.astype(np.float32), probs.astype(np.float32), text)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)


def test_pool_features_kinds():
    pool, _ = blob_pool([4, 3])
    np.testing.assert_array_equal(pool_features(pool, "image"), pool.features)
    assert pool_features(pool, "guided").shape == (7, 12)
    assert pool_features(pool, "text").shape == (7, 6)
    with pytest.raises(RaysvcBug):  # the options were validated: an unknown kind here is a bug
        pool_features(pool, "pixels")
    no_text = Pool(pool.features, pool.probs, pool.labeled, pool.labels)
    with pytest.raises(RaysvcBug):  # the loop computes what a strategy requires
        pool_features(no_text, "guided")
    with pytest.raises(RaysvcBug):  # the true labels come only with oracle=true
        pool_features(pool, "label")


def test_text_and_label_guided_features_equal_hand_computation():
    """Tab. 2's spaces on the hand case above: text = p T (official: unit rows; paper: as is);
    label (CB*) = [I, T_y] with y the true label: (.6, .8, 0, 1)/sqrt2 and (0, 1, 1, 0)/sqrt2."""
    features = np.array([[3.0, 4.0], [0.0, 2.0]])
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    probs = np.array([[0.75, 0.25], [0.5, 0.5]])
    np.testing.assert_allclose(class_guided_features(None, probs, text, kind="text", variant="paper"), probs,
                               atol=1e-6)
    np.testing.assert_allclose(class_guided_features(None, probs, text, kind="text"),
                               probs / np.linalg.norm(probs, axis=1, keepdims=True), atol=1e-6)
    labels = np.array([1, 0])
    z = class_guided_features(features, None, text, kind="label", labels=labels)
    np.testing.assert_allclose(z, np.array([[0.6, 0.8, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]) / np.sqrt(2), atol=1e-6)
    pool = Pool(features, probs, np.zeros(2, bool), np.full(2, -1), text, true_labels=labels)
    np.testing.assert_allclose(pool_features(pool, "label", rows=np.array([1])), z[1:], atol=1e-6)


# --- cb ------------------------------------------------------------------------------


@pytest.mark.parametrize("features", ["guided", "image"])
def test_cb_picks_centroid_nearest_point_of_largest_label_free_cluster(features):
    # blob 0 is largest overall, but 20 of its 30 images are labeled: blob 1 is the largest label-free one
    pool, ids = blob_pool([30, 20, 12], labeled=range(20), round=3)
    x = pool_features(pool, features)
    sel = make_strategy("cb", features=features, variant="paper").select(pool, 1, seed=0)  # K = 3 x 1
    assert sel.query.tolist() == [nearest_to_mean(x, np.flatnonzero(ids == 1))]


def test_cb_gives_extra_picks_to_the_smallest_labeled_share():
    pool, ids = blob_pool([30, 20, 12])
    x = pool.features
    # nothing labeled, official: K = C = 3 clusters for a budget of 5. One pick each by size
    # (ratios 1/30, 1/20, 1/12), then blob 0 (1/30 -> 2/30), then blob 1 (1/20 < 2/30)
    sel = make_strategy("cb", features="image").select(pool, 5, seed=0)
    assert np.bincount(ids[sel.query]).tolist() == [2, 2, 1]
    for b in (0, 1):
        members = np.flatnonzero(ids == b)
        by_distance = members[np.argsort(((x[members] - x[members].mean(axis=0)) ** 2).sum(axis=1))]
        assert [i for i in sel.query if ids[i] == b] == by_distance[:2].tolist()
    # one cluster's picks are adjacent in the output (ascending cluster id)
    blocks = [ids[i] for k, i in enumerate(sel.query) if k == 0 or ids[i] != ids[sel.query[k - 1]]]
    assert sorted(blocks) == [0, 1, 2]


def test_number_of_clusters_follows_the_variant():
    cb, cbsq = make_strategy("cb", variant="paper"), make_strategy("cbsq", variant="paper")
    rounds = [blob_pool([10, 10, 10], labeled=range(4), round=r)[0] for r in (1, 2, 5)]
    assert [cb.n_clusters(p, 6) for p in rounds] == [6, 12, 30]
    assert [cbsq.n_clusters(p, 6) for p in rounds] == [6, 12, 30]
    # official: C + n_labeled (cb), 4C + n_labeled (cbsq), whatever the round
    assert [make_strategy("cb").n_clusters(p, 6) for p in rounds] == [3 + 4] * 3
    assert [make_strategy("cbsq").n_clusters(p, 6) for p in rounds] == [4 * 3 + 4] * 3
    # nothing labeled: K = C for both (the official loop runs plain CB then), also in round 3
    empty = blob_pool([10, 10, 10], round=3)[0]
    assert make_strategy("cb").n_clusters(empty, 6) == make_strategy("cbsq").n_clusters(empty, 6) == 3


@pytest.mark.parametrize(
    "name, params",
    [
        ("cb", {"features": "pixels"}),
        ("cb", {"features": "label"}),  # the true labels need oracle=true
        ("coreset", {"oracle": True}),  # and oracle=true is for features=label only
        ("cb", {"clusters_per_budget": 0}),
        ("probcover", {"centres": "medoids"}),
        ("cb", {"variant": "nearest"}),
        ("cb", {"k_rule": "paper"}),  # subsumed by variant
        ("cbsq", {"variant": "Official"}),
        ("cbsq", {"max_pseudo": -1}),
        ("typiclust", {"max_clusters": 0}),
        ("probcover", {"delta": 0.0}),
        ("dropquery", {"rate": 1.0}),
        ("dropquery", {"n_dropouts": 0}),
    ],
)
def test_bad_parameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        make_strategy(name, **params)


def test_requires_follows_the_feature_kind():
    assert make_strategy("cb").requires == {"features", "probs", "text_features"}
    assert make_strategy("cb", features="image").requires == {"features"}
    assert make_strategy("cbsq", features="image").requires == {"features", "probs"}
    assert make_strategy("typiclust", features="guided").requires == {"features", "probs", "text_features"}
    assert make_strategy("cb", features="text").requires == {"probs", "text_features"}
    assert make_strategy("coreset", features="label", oracle=True).requires == {"features", "true_labels",
                                                                               "text_features"}
    assert make_strategy("dropquery", features="text").requires == {"features", "probs", "text_features"}


def test_fixed_number_of_clusters_per_budget():
    """Tab. 6: K = B and K = 8B in every round, labeled or not, in either variant."""
    rounds = [blob_pool([10, 10, 10], labeled=range(n), round=r)[0] for n, r in ((0, 1), (4, 2), (9, 5))]
    for variant in ("official", "paper"):
        for name in ("cb", "cbsq"):
            for per_budget, k in ((1, 6), (8, 48)):
                strategy = make_strategy(name, variant=variant, clusters_per_budget=per_budget)
                assert [strategy.n_clusters(p, 6) for p in rounds] == [k] * 3


# --- cbsq ----------------------------------------------------------------------------


def test_class_thresholds_by_variant():
    # the second image is labeled 0 though the model prefers class 1
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    labels = np.array([0, 0, 1, -1, -1])
    labeled = np.array([True, True, True, False, False])
    # official: the mean max-probability of the class's labeled images (APL cbsq.py:104-108)
    np.testing.assert_allclose(class_thresholds(probs, labels, labeled, 3), [(0.7 + 0.5) / 2, 0.8, np.inf])
    # paper: the mean p(c|x) (eq. 11)
    np.testing.assert_allclose(class_thresholds(probs, labels, labeled, 3, "paper"), [(0.7 + 0.4) / 2, 0.8, np.inf])


def sq_pool(round=2):
    """Classes 0 and 1 have labeled images (tau = 0.8 and 0.9); class 2 has none."""
    rng = np.random.default_rng(3)
    n, n_classes = 60, 3
    features = unit(rng.standard_normal((n, 8))).astype(np.float32)
    text = unit(rng.standard_normal((n_classes, 8))).astype(np.float32)
    kinds = np.arange(n) % 6  # which toy case each image is
    predicted = np.array([0, 1, 0, 0, 1, 2])[kinds]
    confidence = np.array([0.8, 0.9, 0.85, 0.7, 0.85, 0.99])[kinds]
    probs = np.full((n, n_classes), 0.0)
    probs[np.arange(n), predicted] = confidence
    probs[np.arange(n), (predicted + 1) % n_classes] = 1 - confidence
    labeled = kinds < 2  # kind 0: labeled class 0 at 0.8, kind 1: labeled class 1 at 0.9
    labels = np.where(labeled, predicted, -1)
    # kind 2: class 0 at 0.85 >= 0.8, pseudo; kinds 3, 4: below threshold; kind 5: class without labels
    return Pool(features, probs, labeled, labels, text, round=round), kinds, predicted


def walk(order, confident, budget, max_pseudo):
    """Reference: selective querying over the first ``budget`` candidates, one at a time."""
    query, pseudo = [], []
    for i in order[:budget]:
        if confident[i] and len(pseudo) < max_pseudo:
            pseudo.append(i)
        else:
            query.append(i)
    return query, pseudo


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("max_pseudo", [None, 3])
def test_cbsq_pseudo_labels_exactly_the_confident_candidates(max_pseudo, variant):
    pool, kinds, predicted = sq_pool()
    strategy = make_strategy("cbsq", max_pseudo=max_pseudo, variant=variant)
    budget = 12
    sel = strategy.select(pool, budget, seed=4)
    assert len(sel.query) + len(sel.pseudo) == budget  # pseudo-labels replace queries
    assert (kinds[sel.pseudo] == 2).all() and (sel.pseudo_labels == 0).all()
    cap = budget if max_pseudo is None else max_pseudo
    assert 0 < len(sel.pseudo) <= cap
    order = strategy.picks(pool, budget, np.random.default_rng(4))
    query, pseudo = walk(order, kinds == 2, budget, cap)
    assert sel.query.tolist() == query and sel.pseudo.tolist() == pseudo


def test_cbsq_with_the_whole_pool_walked_pseudo_labels_every_confident_image():
    pool, kinds, _ = sq_pool()
    # 40 unlabeled: 10 confident (kind 2) and 30 to query
    sel = make_strategy("cbsq", max_pseudo=100).select(pool, 40, seed=0)
    assert sorted(sel.pseudo) == np.flatnonzero(kinds == 2).tolist()
    assert sorted(sel.query) == np.flatnonzero(np.isin(kinds, [3, 4, 5])).tolist()


def test_cbsq_never_pseudo_labels_a_class_without_labeled_images():
    pool, kinds, _ = sq_pool()
    sel = make_strategy("cbsq").select(pool, 30, seed=1)
    assert not np.isin(sel.pseudo, np.flatnonzero(kinds == 5)).any()
    assert 2 not in sel.pseudo_labels


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_cbsq_queries_everything_when_nothing_is_labeled(variant):
    pool, _, _ = sq_pool()
    empty = Pool(pool.features, pool.probs, np.zeros(len(pool.labeled), bool), np.full(len(pool.labeled), -1),
                 pool.text_features, round=3)
    sel = make_strategy("cbsq", variant=variant).select(empty, 12, seed=0)
    assert len(sel.query) == 12 and len(sel.pseudo) == 0
    np.testing.assert_array_equal(sel.query, make_strategy("cb", variant=variant).select(empty, 12, seed=0).query)


def test_cbsq_pseudo_labels_in_round_one_after_a_k_shot_start():
    pool, kinds, _ = sq_pool(round=1)
    sel = make_strategy("cbsq").select(pool, 40, seed=0)
    assert sorted(sel.pseudo) == np.flatnonzero(kinds == 2).tolist()


# --- typiclust -----------------------------------------------------------------------


def test_typiclust_picks_the_most_typical_point_of_an_uncovered_cluster():
    rng = np.random.default_rng(5)
    a = rng.normal(0.0, 1.0, (60, 2))
    b = rng.normal(0.0, 1.0, (40, 2)) + [20.0, 0.0]
    x = np.concatenate([a, b]).astype(np.float32)
    labeled = np.zeros(100, dtype=bool)
    labeled[0] = True  # the larger blob is covered
    pool = Pool(x, np.full((100, 2), 0.5), labeled, np.where(labeled, 0, -1))
    sel = make_strategy("typiclust").select(pool, 1, seed=0)  # K = 1 + 1
    members = np.arange(60, 100)
    d = np.sqrt(((x[members, None] - x[None, members]) ** 2).sum(axis=2))
    mean_nn = np.sort(d, axis=1)[:, 1:21].mean(axis=1)
    assert sel.query.tolist() == [members[mean_nn.argmin()]]
    assert np.linalg.norm(x[sel.query[0]] - [20.0, 0.0]) < 1.0  # a dense point, near the core


def test_typiclust_covers_clusters_before_returning_to_one():
    pool, ids = blob_pool([30, 20, 12])
    sel = make_strategy("typiclust").select(pool, 3, seed=0)
    assert sorted(ids[sel.query]) == [0, 1, 2]


# --- probcover -----------------------------------------------------------------------


def test_probcover_covers_distinct_blobs_largest_first():
    pool, ids = blob_pool([30, 20, 12])
    sel = make_strategy("probcover").select(pool, 3, seed=0)
    assert ids[sel.query].tolist() == [0, 1, 2]


def test_probcover_skips_blobs_covered_by_labels_then_goes_random():
    pool, ids = blob_pool([30, 20, 12], labeled=[0])
    sel = make_strategy("probcover").select(pool, 4, seed=0)
    assert ids[sel.query[:2]].tolist() == [1, 2]
    assert len(set(sel.query)) == 4


# --- dropquery -----------------------------------------------------------------------


def test_dropquery_picks_uncertain_points_one_per_group():
    rng = np.random.default_rng(6)
    text = unit(rng.standard_normal((4, 64)))
    confident = np.repeat(text, 25, axis=0)
    # two groups of images halfway between two classes, (0, 1) and (2, 3), of unequal
    # sizes so that one centroid for both would sit nearer the larger group
    between = np.repeat(np.stack([text[0] + text[1], text[2] + text[3]]), [20, 8], axis=0)
    x = unit(np.concatenate([confident, between]) + 0.02 * rng.standard_normal((128, 64))).astype(np.float32)
    pool = Pool(x, np.full((128, 4), 0.25), np.zeros(128, dtype=bool), np.full(128, -1), text.astype(np.float32))
    sel = make_strategy("dropquery").select(pool, 2, seed=0)
    assert (sel.query >= 100).all()
    assert sorted(sel.query >= 120) == [False, True]
