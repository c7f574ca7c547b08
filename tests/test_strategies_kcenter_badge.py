"""k-center (coreset, pcoreset), BADGE, PCB and class-balanced selection on cases with known answers."""

import numpy as np
import pytest

from bench.reference import (
    badge_embeddings_reference,
    badge_select_reference,
    cosine_farthest_first_reference,
    kcenter_greedy_reference,
)
from raysvc.errors import ConfigError, PoolExhaustedError
from raysvc.strategies import Pool, _badge, _kcenter, make_strategy
from raysvc.strategies._badge import badge_select, cosine_farthest_first, gradient_factor, gradient_sq_distances
from raysvc.strategies._kcenter import Backend, kcenter_greedy
from raysvc.strategies.classbalanced import classbalanced_allocation
from raysvc.strategies.pcb import balance_classes


def make_pool(features, probs=None, labeled=(), labels=None, embeddings=None):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    n = len(features)
    mask = np.zeros(n, dtype=bool)
    mask[list(labeled)] = True
    if probs is None:
        probs = np.full((n, 2), 0.5)
    if labels is None:
        labels = np.where(mask, 0, -1)
    return Pool(
        features=features,
        probs=np.asarray(probs, dtype=np.float64),
        labeled=mask,
        labels=np.asarray(labels),
        embeddings=embeddings,
    )


def random_probs(rng, n, c, sharpness=3.0):
    logits = sharpness * rng.standard_normal((n, c))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(params=["default", "torch"])
def backend(request, monkeypatch):
    """Run with the default backend (numpy here) and with torch on CPU, the GPU code path."""
    if request.param == "torch":
        torch = pytest.importorskip("torch")
        be = Backend(torch, lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32), lambda x: x.numpy())
        monkeypatch.setattr(_kcenter, "array_backend", lambda: be)
        monkeypatch.setattr(_badge, "array_backend", lambda: be)
    return request.param


# --- k-center -------------------------------------------------------------------------


def test_kcenter_picks_farthest_point_in_1d(backend):
    points, labeled = np.array([[0.0], [1.0], [2.0], [10.0], [4.0]]), np.arange(5) == 0
    assert list(kcenter_greedy(points, labeled, 1, np.random.default_rng(0))) == [3]
    # then 4.0 (4 from 0, 6 from 10) beats 2.0 (2 from 0)
    assert list(kcenter_greedy(points, labeled, 2, np.random.default_rng(0))) == [3, 4]


def test_coreset_2d_never_picks_labeled_and_ties_go_to_lowest_index(backend):
    # (3, 0) and (-3, 0) tie at distance 3 from the labeled origin; a labeled far point
    # at (0, 9) would win if labeled points were candidates
    pts = np.array([[0, 0], [0, 9], [3, 0], [-3, 0], [1, 1]], dtype=float)
    labeled = np.arange(5) < 2
    assert list(kcenter_greedy(pts, labeled, 2, np.random.default_rng(0))) == [2, 3]
    # the same on the unit circle (coreset normalises): (1, 0) and (-1, 0) tie at 1 from the zero row
    pool = make_pool(pts, labeled=[0, 1])
    assert list(make_strategy("coreset").select(pool, 2, seed=0).query) == [2, 3]


def test_coreset_measures_cosine_distance_on_embeddings_when_given(backend):
    # embeddings: row 1 is orthogonal to the labeled row 0, row 2 nearly parallel; the
    # features say the opposite, and raw Euclidean distances would pick the long row 2
    feats = [[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [10.0, 1.0]])
    pool = make_pool(feats, labeled=[0], embeddings=emb)
    assert list(make_strategy("coreset").select(pool, 1, seed=0).query) == [1]
    assert list(kcenter_greedy(emb, pool.labeled, 1, np.random.default_rng(0))) == [2]
    assert list(kcenter_greedy(emb, pool.labeled, 1, np.random.default_rng(0), normalize=True)) == [1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_labeled", [0, 5])
def test_kcenter_incremental_equals_reference(backend, seed, n_labeled):
    rng = np.random.default_rng(seed)
    pts = rng.standard_normal((300, 8))
    labeled = np.zeros(300, dtype=bool)
    labeled[rng.choice(300, n_labeled, replace=False)] = True
    for normalize in (False, True):
        fast = kcenter_greedy(pts, labeled, 25, np.random.default_rng(seed), normalize=normalize)
        ref = kcenter_greedy_reference(pts, labeled, 25, np.random.default_rng(seed), normalize=normalize)
        assert not labeled[fast].any()
        np.testing.assert_array_equal(fast, ref)


def test_kcenter_labeled_centres_are_folded_in_chunks(monkeypatch):
    rng = np.random.default_rng(7)
    pts = rng.standard_normal((200, 4))
    labeled = np.zeros(200, dtype=bool)
    labeled[:50] = True
    monkeypatch.setattr(_kcenter, "CHUNK_ELEMENTS", 300)  # two centres per block
    fast = kcenter_greedy(pts, labeled, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(fast, kcenter_greedy_reference(pts, labeled, 10, np.random.default_rng(0)))


def test_pcoreset_picks_farthest_probability_vector():
    probs = [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]
    # features say the opposite, so a pick of 2 proves the distance is on probs
    feats = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [1.0, 0.1]]
    pool = make_pool(feats, probs=probs, labeled=[0])
    assert list(make_strategy("pcoreset").select(pool, 1, seed=0).query) == [2]
    assert list(make_strategy("coreset").select(pool, 1, seed=0).query) == [1]


def test_budget_beyond_unlabeled_raises():  # also in the contract test, for every strategy
    pool = make_pool([0.0, 1.0, 2.0], labeled=[0])
    for name in ("coreset", "pcoreset", "badge", "pcb", "classbalanced"):
        with pytest.raises(PoolExhaustedError):
            make_strategy(name).select(pool, 3, seed=0)


# --- BADGE ----------------------------------------------------------------------------


def test_gradient_embeddings_are_p_minus_onehot_outer_h():
    rng = np.random.default_rng(0)
    probs, h = random_probs(rng, 6, 4), rng.standard_normal((6, 3))
    g = badge_embeddings_reference(probs, h)
    for i in range(6):
        a = probs[i].copy()
        a[probs[i].argmax()] -= 1.0
        np.testing.assert_allclose(g[i], np.outer(a, h[i]).ravel())
    np.testing.assert_allclose(gradient_factor(probs), probs - np.eye(4)[probs.argmax(1)])


def test_factorised_distance_equals_materialised(backend):
    rng = np.random.default_rng(1)
    probs, h = random_probs(rng, 40, 7), rng.standard_normal((40, 5))
    g = badge_embeddings_reference(probs, h)
    for j in (0, 13, 39):
        expected = ((g - g[j]) ** 2).sum(1)
        got = gradient_sq_distances([(gradient_factor(probs), h)], j)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_factorised_seeding_equals_materialised(backend, seed):
    rng = np.random.default_rng(100 + seed)
    probs, h = random_probs(rng, 200, 10), rng.standard_normal((200, 6))
    labeled = np.zeros(200, dtype=bool)
    labeled[:20] = True
    fast = badge_select([(gradient_factor(probs), h)], labeled, 15, np.random.default_rng(seed))
    ref = badge_select_reference(badge_embeddings_reference(probs, h), labeled, 15, np.random.default_rng(seed))
    assert not labeled[fast].any()
    np.testing.assert_array_equal(fast, ref)


def test_badge_first_centre_has_largest_gradient_norm():
    rng = np.random.default_rng(2)
    probs, h = random_probs(rng, 50, 5), rng.standard_normal((50, 4))
    h[17] *= 10
    assert badge_select([(gradient_factor(probs), h)], np.zeros(50, bool), 1, rng)[0] == 17


def test_badge_with_every_distance_zero_draws_uniformly_from_the_rest():
    """Identical gradients: the official sampler would stop in pdb.set_trace() (badge.py:79)."""
    probs, h = np.tile([[0.7, 0.3]], (6, 1)), np.ones((6, 2))
    seen = set()
    for seed in range(30):
        picks = badge_select([(gradient_factor(probs), h)], np.zeros(6, bool), 3, np.random.default_rng(seed))
        assert picks[0] == 0 and len(set(picks.tolist())) == 3
        seen.update(picks[1:].tolist())
    assert seen == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("seed", range(3))
def test_several_pairs_equal_concatenated_embeddings(backend, seed):
    rng = np.random.default_rng(200 + seed)
    p1, p2 = random_probs(rng, 150, 6), random_probs(rng, 150, 6)
    h1, h2 = rng.standard_normal((150, 5)), rng.standard_normal((150, 3))
    labeled = np.zeros(150, dtype=bool)
    pairs = [(gradient_factor(p1), h1), (gradient_factor(p2), h2)]
    fast = badge_select(pairs, labeled, 12, np.random.default_rng(seed))
    g = np.concatenate([badge_embeddings_reference(p1, h1), badge_embeddings_reference(p2, h2)], axis=1)
    ref = badge_select_reference(g, labeled, 12, np.random.default_rng(seed))
    np.testing.assert_array_equal(fast, ref)
    single = badge_select(pairs[:1], labeled, 12, np.random.default_rng(seed))
    assert list(single) != list(fast)  # the second pair does change the selection
    np.testing.assert_array_equal(cosine_farthest_first(pairs, labeled, 12),
                                  cosine_farthest_first_reference(g, labeled, 12))


def test_badge_strategy_without_embeddings_is_kmeanspp_on_features():
    rng = np.random.default_rng(3)
    probs, feats = random_probs(rng, 80, 4), rng.standard_normal((80, 3))
    pool = make_pool(feats, probs=probs, labeled=[0, 1], labels=[0, 1] + [-1] * 78)
    got = make_strategy("badge").select(pool, 5, seed=9).query
    expected = badge_select([(gradient_factor(probs), feats)], pool.labeled, 5, np.random.default_rng(9))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(3))
def test_badge_strategy_with_embeddings_is_cosine_farthest_first(backend, seed):
    """ActiveKD's BADGE: one embedding from the combined probs, normalised, farthest-first, no sampling."""
    rng = np.random.default_rng(30 + seed)
    probs, feats, emb = random_probs(rng, 80, 4), rng.standard_normal((80, 3)), np.abs(rng.standard_normal((80, 6)))
    pool = make_pool(feats, probs=probs, labeled=[0, 1], labels=[0, 1] + [-1] * 78, embeddings=emb)
    got = make_strategy("badge").select(pool, 6, seed=seed).query
    np.testing.assert_array_equal(got, make_strategy("badge").select(pool, 6, seed=seed + 1).query)
    ref = cosine_farthest_first_reference(badge_embeddings_reference(probs, emb), pool.labeled, 6)
    np.testing.assert_array_equal(got, ref)


def test_cosine_farthest_first_starts_at_the_lowest_non_zero_embedding():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.4], [0.5, 0.5]])  # rows 0, 1: zero gradients
    h = np.ones((4, 2))
    picks = cosine_farthest_first([(gradient_factor(probs), h)], np.zeros(4, bool), 3)
    # then the zero rows, at cosine distance 1, beat row 3 (parallel to row 2, distance 0)
    assert picks.tolist() == [2, 0, 1]


# --- PCB ------------------------------------------------------------------------------


def test_balance_classes_fills_the_rarest_class_first():
    # class 0 already has 3 labeled, class 1 has 1, class 2 none; class 2 has one candidate
    classes = np.array([0, 0, 0, 1, 1, 1, 2])
    rest = set()
    for seed in range(200):
        picks = balance_classes(classes, np.array([3, 1, 0]), 4, np.random.default_rng(seed))
        # class 2 (count 0 -> 1), then class 1 (1 -> 2), then class 2 is the first minimum
        # again with no candidate left: the last two picks are uniform over the rest
        assert picks[0] == 6 and picks[1] in (3, 4, 5) and len(set(picks)) == 4
        rest.update(picks[2:].tolist())
    assert rest == {0, 1, 2, 3, 4, 5}


def test_balance_classes_goes_uniform_once_the_scarcest_class_runs_out():
    # counts [2, 0, 1]; class 1 has one candidate (position 2), then stays the minimum
    seen = set()
    for seed in range(300):
        picks = balance_classes(np.array([0, 2, 1, 0]), np.array([2, 0, 1]), 3, np.random.default_rng(seed))
        assert picks[0] == 2
        seen.add(frozenset(picks[1:].tolist()))
    assert seen == {frozenset({0, 1}), frozenset({0, 3}), frozenset({1, 3})}


def test_pcb_balances_pseudo_classes():
    rng = np.random.default_rng(4)
    n = 120
    # 100 images look like class 0, 10 like class 1, 10 like class 2
    cls = np.array([0] * 100 + [1] * 10 + [2] * 10)
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), cls] = 0.9
    feats = rng.standard_normal((n, 4))
    pool = make_pool(feats, probs=probs)
    query = make_strategy("pcb", candidate_fraction=1.0, cold_start="prior").select(pool, 12, seed=0).query
    np.testing.assert_array_equal(np.bincount(cls[query], minlength=3), [4, 4, 4])


def test_pcb_candidates_are_a_tenth_of_the_pool_at_least_the_budget():
    pool = make_pool(np.zeros((1000, 2)), labeled=range(200))
    pcb = make_strategy("pcb")
    assert pcb.n_candidates(pool, 10) == 100  # int(0.1 x 1000): labeled images count (alvlm.py:505)
    assert pcb.n_candidates(pool, 150) == 150
    assert make_strategy("pcb", candidate_fraction=1.0).n_candidates(pool, 10) == 800  # the unlabeled pool


def test_pcb_on_a_large_pool_proposes_a_share_of_badges_subsample(monkeypatch):
    from raysvc.strategies.pcb import PCB

    monkeypatch.setattr(PCB, "max_badge_pool", 300)
    rng = np.random.default_rng(8)
    probs = random_probs(rng, 1000, 5)
    pool = make_pool(rng.standard_normal((1000, 3)), probs=probs, labeled=range(10), labels=probs.argmax(1))
    pcb = make_strategy("pcb")
    assert pcb.badge_pool_size(pool, 10) == 300 and pcb.n_candidates(pool, 10) == 30  # 0.1 x 300, not x 1000
    query = pcb.select(pool, 10, seed=0).query
    assert len(set(query.tolist())) == 10 and not pool.labeled[query].any()


def test_pcb_rejects_bad_candidate_fraction():
    for bad in (0.0, 1.5, "0.1"):
        with pytest.raises(ConfigError):
            make_strategy("pcb", candidate_fraction=bad)
    with pytest.raises(ConfigError):
        make_strategy("pcb", candidate_factor=10.0)  # replaced by candidate_fraction


# --- class-balanced -------------------------------------------------------------------


def test_classbalanced_allocation_by_hand():
    # labeled counts (3, 1, 0): class 2 weighs like a class with one label -> w = 1/4, 1/2, 1/2
    # = (.2, .4, .4); budget 4: floors (0, 1, 1), the two left go to classes 1 and 2
    assert classbalanced_allocation([3, 1, 0], [0, 1, 2], 4).tolist() == [0, 2, 2]
    # budget 7: 1.4, 2.8, 2.8 -> (1, 2, 2), the two left to the heaviest, ties to the lower id
    assert classbalanced_allocation([3, 1, 0], [0, 1, 2], 7).tolist() == [1, 3, 3]
    # only predicted classes take part; nothing labeled: equal weights
    assert classbalanced_allocation([3, 1, 0], [0, 2], 5).tolist() == [1, 0, 4]
    assert classbalanced_allocation([0, 0, 0], [0, 1, 2], 5).tolist() == [2, 2, 1]


def test_classbalanced_draws_per_allocation():
    n_classes, rng = 3, np.random.default_rng(5)
    pseudo = rng.integers(0, n_classes, 300)
    probs = np.full((300, n_classes), 0.1)
    probs[np.arange(300), pseudo] = 0.8
    labeled = np.arange(30)
    labels = np.full(300, -1)
    labels[labeled] = np.repeat([0, 1, 2], [20, 9, 1])  # n = (20, 9, 1) -> w = 1/21, 1/10, 1/2
    pool = make_pool(rng.standard_normal((300, 2)), probs=probs, labeled=labeled, labels=labels)
    query = make_strategy("classbalanced").select(pool, 13, seed=1).query
    counts = np.bincount(pseudo[query], minlength=3)
    expected = classbalanced_allocation([20, 9, 1], [0, 1, 2], 13)
    np.testing.assert_array_equal(counts, expected)
    # 13 * (1/21, 1/10, 1/2) / 0.6476 = 0.96, 2.01, 10.04 -> 0 + 2 + 10, one more to the heaviest
    assert list(expected) == [0, 2, 11]


def test_classbalanced_overflow_is_uniform_over_what_is_left():
    # counts {0: 3, 1: 1}, class 2 none; predicted 5 x c0, 5 x c1, 1 x c2; budget 4 -> alloc (0, 2, 2):
    # class 2 has one member, so one pick goes uniformly to the 8 left (5 of c0, 3 of c1)
    pred = np.array([0] * 5 + [1] * 5 + [2])
    probs = np.eye(3)[np.concatenate([[0, 0, 0, 1], pred])] * 0.9 + 0.1 / 3
    labels = np.concatenate([[0, 0, 0, 1], np.full(11, -1)])
    pool = make_pool(np.zeros((15, 2)), probs=probs, labeled=range(4), labels=labels)
    outcomes = {}
    for seed in range(400):
        query = make_strategy("classbalanced").select(pool, 4, seed=seed).query
        c = tuple(np.bincount(pred[query - 4], minlength=3))
        assert 14 in query and c[2] == 1
        outcomes[c] = outcomes.get(c, 0) + 1
    assert set(outcomes) == {(1, 2, 1), (0, 3, 1)}
    assert abs(outcomes[(1, 2, 1)] / 400 - 5 / 8) < 0.08
