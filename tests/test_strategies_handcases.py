"""Small cases whose answer is known by hand, per strategy and variant (FINDINGS H-1 .. H-7).

The official answers come from the authors' code (cited per test). For cb and cbsq the
clustering is injected through the strategies' own seam (``ClusterStrategy.kmeans``): the
official K-means (scikit-learn) cannot be reproduced, everything after it can. For random parts the
deterministic parts and the law or support are checked.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raysvc.strategies import Pool, make_strategy
from raysvc.strategies._badge import badge_select, gradient_factor
from raysvc.strategies._kcenter import kcenter_greedy
from raysvc.strategies.base import ClusterStrategy
from raysvc.strategies.pcb import balance_classes


def deg(*angles):
    a = np.deg2rad(np.array(angles, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


# H-1 geometry: labeled rows 0 (0 deg, cluster 0) and 1 (270 deg, cluster 3), then the
# unlabeled u0..u8 = pool rows 2..10
CB_X = deg(0, 270, 10, 20, 40, 90, 100, 120, 180, 200, 280)
CB_ASSIGNMENT = np.array([0, 3, 0, 0, 0, 1, 1, 1, 2, 2, 3])
CB_CENTROIDS = deg(18, 104, 185, 275)


@pytest.fixture
def fixed_clustering(monkeypatch):
    """Replace K-means by a given (centroids, assignment); records each call's (x, k)."""
    calls = []

    def install(centroids, assignment):
        def fixed(self, x, k, seed):
            calls.append((np.array(x), k))
            return centroids, assignment, 0.0

        monkeypatch.setattr(ClusterStrategy, "kmeans", fixed)
        return calls

    return install


def cb_pool(labeled=2, probs=None, labels=None, round_=2):
    n = len(CB_X)
    mask = np.arange(n) < labeled
    probs = np.full((n, 2), 0.5) if probs is None else probs
    labels = np.where(mask, 0, -1) if labels is None else labels
    return Pool(CB_X, probs, mask, labels, text_features=np.eye(2, dtype=np.float32), round=round_)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("budget, picks", [(1, [4]), (2, [4, 6]), (3, [1, 4, 6]), (4, [1, 4, 3, 6])])
def test_cb_h1_allocation_and_order(fixed_clustering, variant, budget, picks):
    """Ratios (labeled/size): c0 1/4, c1 0 (size 3), c2 0 (size 2), c3 1/2. c1 first (largest
    label-free), then c2, then c0 (1/4 < 1/3 < 1/2); the output is in cluster-id order. A
    fourth pick goes to c1 again (1/3 is then the lowest): raysvc's extension takes its
    next-nearest member, u3 at 90 deg (official CB asserts, cb.py:153)."""
    fixed_clustering(CB_CENTROIDS, CB_ASSIGNMENT)
    sel = make_strategy("cb", features="image", variant=variant).select(cb_pool(), budget, seed=0)
    assert (sel.query - 2).tolist() == picks


def test_cb_h1_first_round_takes_the_centroid_nearest_member_of_each_cluster(fixed_clustering):
    x = CB_X[2:10]  # 10 .. 200 deg, nothing labeled, 3 clusters
    calls = fixed_clustering(deg(18, 104, 185), np.array([0, 0, 0, 1, 1, 1, 2, 2]))
    pool = Pool(x, np.full((8, 3), 1 / 3), np.zeros(8, bool), np.full(8, -1), round=4, n_classes=3)
    assert make_strategy("cb", features="image").select(pool, 3, seed=0).query.tolist() == [1, 4, 6]
    assert calls[-1][1] == 3  # official, nothing labeled: K = C whatever the round (alvlm.py:511-519)
    make_strategy("cb", features="image", variant="paper").select(pool, 3, seed=0)
    assert calls[-1][1] == 4 * 3  # paper: K = round x budget


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_cb_clusters_the_variants_guided_features(fixed_clustering, variant):
    calls = fixed_clustering(CB_CENTROIDS[:, :2].repeat(2, axis=1), CB_ASSIGNMENT)
    pool = cb_pool(probs=np.tile([[0.75, 0.25]], (len(CB_X), 1)))
    make_strategy("cb", variant=variant).select(pool, 2, seed=0)
    x, k = calls[-1]
    raw = np.concatenate([CB_X, np.tile([[0.75, 0.25]], (len(CB_X), 1))], axis=1)  # [I, p T] with T = I_2
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True) if variant == "official" else raw
    np.testing.assert_allclose(x, expected, atol=1e-6)
    assert k == (2 + 2 if variant == "official" else 2 * 2)  # C + n_labeled, or round x budget


def test_cb_nearest_member_ties_go_to_the_lower_index(fixed_clustering):
    """Members at +-30 deg of a centroid at 0 deg are equally near (the official ``np.argsort`` of
    the cosine distances is unstable); the lower pool index wins."""
    x = deg(30, -30, 0.0, 180)
    fixed_clustering(deg(0, 180), np.array([0, 0, 0, 1]))
    pool = Pool(x, None, np.array([False, False, True, True]), np.array([-1, -1, 0, 1]), n_classes=2)
    assert make_strategy("cb", features="image").select(pool, 1, seed=0).query.tolist() == [0]


def cbsq_case():
    """H-2: C = 2; labeled rows 0 (probs .9/.1) and 1 (.3/.7, mispredicted), both stored as class 0."""
    probs = np.full((len(CB_X), 2), 0.5)
    probs[0], probs[1] = (0.9, 0.1), (0.3, 0.7)
    probs[3], probs[6], probs[8] = (0.85, 0.15), (0.75, 0.25), (0.01, 0.99)  # u1, u4, u6
    return cb_pool(probs=probs, labels=np.array([0, 0] + [-1] * 9))


def test_cbsq_h2_official_threshold_is_the_mean_max_probability(fixed_clustering):
    """tau_0 = mean(.9, .7) = .8 (cbsq.py:104-108), tau_1 = never: u1 (.85) is pseudo-labeled 0,
    u4 (.75) and u6 (class 1) are queried."""
    fixed_clustering(CB_CENTROIDS, CB_ASSIGNMENT)
    sel = make_strategy("cbsq", features="image").select(cbsq_case(), 3, seed=0)
    assert (sel.pseudo - 2).tolist() == [1] and sel.pseudo_labels.tolist() == [0]
    assert (sel.query - 2).tolist() == [4, 6]
    assert sel.pseudo_scores.tolist() == [0.85] and sel.query_scores is None  # the confidence; CB has no score


def test_cbsq_h2_paper_threshold_is_the_mean_true_class_probability(fixed_clustering):
    """Eq. 11: tau_0 = mean p(0|x) = mean(.9, .3) = .6, so u4 (.75) is pseudo-labeled too."""
    fixed_clustering(CB_CENTROIDS, CB_ASSIGNMENT)
    sel = make_strategy("cbsq", features="image", variant="paper").select(cbsq_case(), 3, seed=0)
    assert (sel.pseudo - 2).tolist() == [1, 4] and sel.pseudo_labels.tolist() == [0, 0]
    assert (sel.query - 2).tolist() == [6]


def test_cbsq_caps_pseudo_labels_in_pick_order(fixed_clustering):
    fixed_clustering(CB_CENTROIDS, CB_ASSIGNMENT)
    sel = make_strategy("cbsq", features="image", variant="paper", max_pseudo=1).select(cbsq_case(), 3, seed=0)
    assert (sel.pseudo - 2).tolist() == [1] and (sel.query - 2).tolist() == [4, 6]


def test_entropy_h3():
    p = np.array([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [0.8, 0.1, 0.1]], dtype=np.float32)
    pool = Pool(None, p, np.zeros(4, bool), np.full(4, -1))
    sel = make_strategy("entropy", cold_start="prior").select(pool, 3, seed=0)
    assert sel.query.tolist() == [2, 1, 3]
    # each pick's score is its entropy: ln 3, ln 2, -(.8 ln .8 + 2 x .1 ln .1)
    np.testing.assert_allclose(sel.query_scores, [np.log(3), np.log(2), -(0.8 * np.log(0.8) + 0.2 * np.log(0.1))],
                               rtol=1e-6)
    assert sel.pseudo_scores is None


@pytest.mark.parametrize("name", ["entropy", "coreset", "badge", "pcb"])
def test_cold_start_random_is_a_uniform_draw(name):
    """Nothing labeled: the official loop samples ``n_query`` at random (alvlm.py:531-532)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((30, 4)).astype(np.float32)
    pool = Pool(features, rng.dirichlet(np.ones(3), 30), np.zeros(30, bool), np.full(30, -1))
    for seed in range(3):
        got = make_strategy(name).select(pool, 5, seed=seed).query
        assert got.tolist() == make_strategy("random").select(pool, 5, seed=seed).query.tolist()
    labeled = Pool(features, pool.probs, np.arange(30) == 0, np.where(np.arange(30) == 0, 0, -1))
    first = make_strategy(name).select(labeled, 5, seed=0).query
    assert not labeled.labeled[first].any()


def test_coreset_h4_prompt_setting_is_euclidean_k_center():
    """Labeled (0, 0); unlabeled (1, 0), (4, 0), (5, 0), (10, 0): (10, 0), (5, 0), then (1, 0)
    and (4, 0) tie at 1 and the lower index wins (coreset.py:61-84, torch.argmax)."""
    points = np.array([[0, 0], [1, 0], [4, 0], [5, 0], [10, 0]], dtype=np.float32)
    assert kcenter_greedy(points, np.arange(5) == 0, 3, np.random.default_rng(0)).tolist() == [4, 3, 1]


def test_badge_h5_first_pick_and_second_pick_law():
    """f = (1, 0); p = (.9,.1), (.6,.4), (.3,.7), (.5,.5): gradient norms sqrt2 (.1, .4, .3, .5) make
    3 the first pick; squared distances to it .32, .02, 1.28, 0 the law of the second."""
    f = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (4, 1))
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], dtype=np.float32)
    draws = 2000
    seconds = Counter()
    for seed in range(draws):
        picks = badge_select([(gradient_factor(p), f)], np.zeros(4, bool), 2, np.random.default_rng(seed))
        assert picks[0] == 3
        seconds[int(picks[1])] += 1
    law = np.array([0.32, 0.02, 1.28, 0.0]) / 1.62
    freq = np.array([seconds[i] for i in range(4)]) / draws
    assert np.abs(freq - law).max() < 0.03 and seconds[3] == 0


def test_pcb_h6a_no_class_runs_out():
    """statistics [2, 0, 1], candidates predicted [0, 2, 1, 1, 0]: a class-1 pick, class 1 again
    (the first minimum of the tie with class 2), then class 2: the set {1, 2, 3}."""
    orders = Counter(tuple(balance_classes(np.array([0, 2, 1, 1, 0]), np.array([2, 0, 1]), 3,
                                           np.random.default_rng(s)).tolist()) for s in range(200))
    assert set(orders) == {(2, 3, 1), (3, 2, 1)}


def test_pcb_h6c_no_candidate_of_the_scarcest_class():
    """statistics [0, 3, 3], predictions [1, 2, 1, 2]: class 0 has none, so both picks are uniform."""
    pairs = Counter(frozenset(balance_classes(np.array([1, 2, 1, 2]), np.array([0, 3, 3]), 2,
                                              np.random.default_rng(s)).tolist()) for s in range(600))
    assert len(pairs) == 6


def test_activekd_coreset_h7_is_cosine():
    """Labeled (1, 0); unlabeled (10, 1), (0, 1): cosine picks (0, 1) first (strategies.py:54-152);
    raw Euclidean distances would pick (10, 1)."""
    emb = np.array([[1, 0], [10, 1], [0, 1]], dtype=np.float32)
    pool = Pool(emb, None, np.arange(3) == 0, np.array([0, -1, -1]), embeddings=emb, n_classes=2)
    assert make_strategy("coreset").select(pool, 2, seed=0).query.tolist() == [2, 1]


def _combined(ce, kd):
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return 0.5 * softmax(ce) + 0.5 * softmax(kd)  # ActiveKD: alpha 0.5, beta 1 (strategies.py:34-36)


def test_activekd_uncertainty_h7():
    ce = np.array([[0, 0], [10, 0], [10, 0], [1, 0]], dtype=np.float32)
    kd = np.array([[0, 0], [10, 0], [0, 10], [1, 0]], dtype=np.float32)
    pool = Pool(None, _combined(ce, kd), np.arange(4) == 0, np.array([0, -1, -1, -1]))
    assert make_strategy("entropy").select(pool, 2, seed=0).query.tolist() == [2, 3]


def test_activekd_pcoreset_h7():
    q = np.array([0.9, 0.8, 0.5, 0.1, 0.45])
    pool = Pool(None, np.stack([q, 1 - q], 1), np.arange(5) == 0, np.array([0, -1, -1, -1, -1]))
    assert make_strategy("pcoreset").select(pool, 3, seed=0).query.tolist() == [3, 2, 1]


def test_activekd_badge_h7_is_deterministic_farthest_first():
    """E = 1 feature; first pick 0 (all embeddings non-zero); cosine distances from it 1.5, .055, .018
    give 1; then min(.055, 1.189) beats min(.018, 1.655): 2, then 3 (strategies.py:242-289)."""
    p = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.5, 0.1, 0.4], [0.7, 0.2, 0.1]], dtype=np.float32)
    pool = Pool(np.ones((4, 1), np.float32), p, np.zeros(4, bool), np.full(4, -1), embeddings=np.ones((4, 1)))
    for seed in range(3):
        assert make_strategy("badge", cold_start="prior").select(pool, 4, seed=seed).query.tolist() == [0, 1, 2, 3]


# --- the ablations of issue 20 ----------------------------------------------------------


def chain_pool():
    """A chain a..e at 0, .3, .6, .9, 1.2 and a pair f, g at 10, 10.3 (x axis). With delta .35 the
    balls are a {a,b}, b {a,b,c}, c {b,c,d}, d {c,d,e}, e {d,e}, f {f,g}, g {f,g}."""
    x = np.array([[0.0, 0], [0.3, 0], [0.6, 0], [0.9, 0], [1.2, 0], [10.0, 0], [10.3, 0]], dtype=np.float32)
    return Pool(x, None, np.zeros(7, bool), np.full(7, -1), n_classes=2)


def test_probcover_star_takes_the_best_covering_member_of_each_kmeans_cluster(fixed_clustering):
    """ProbCover* (CB paper Tab. 11), clusters {a..e} and {f, g}: the larger cluster first gives a
    member of degree 3 (b, c or d), then the pair gives f or g, whatever the seed. The greedy
    ProbCover after b (covering a, b, c) ties d, e (uncovered {d, e}) with f, g: for some seeds
    its second pick stays on the chain."""
    calls = fixed_clustering(np.zeros((2, 2), np.float32), np.array([0, 0, 0, 0, 0, 1, 1]))
    star, greedy = [], []
    for seed in range(20):
        star.append(make_strategy("probcover", delta=0.35, centres="kmeans").select(chain_pool(), 2, seed=seed).query)
        greedy.append(make_strategy("probcover", delta=0.35).select(chain_pool(), 2, seed=seed).query)
    assert calls[-1][1] == 0 + 2  # K = n_labeled + budget
    assert all(p[0] in (1, 2, 3) and p[1] in (5, 6) for p in star)
    assert any(p[0] in (1, 2, 3) and p[1] in (3, 4) for p in greedy)


def test_pcoreset_reverse_takes_the_nearest_probability_vector():
    """Labeled (1, 0); unlabeled u1 (.9, .1), u2 (.5, .5), u3 (0, 1). PCoreSet: u3 (distance sqrt2),
    then u2 (.71 from both centres; u1 is .14 from (1, 0)). PCoreSet+R: u1 (.14), then u2 (.57 from
    u1; u3 is 1.27 from u1)."""
    probs = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1]], dtype=np.float32)
    pool = Pool(None, probs, np.arange(4) == 0, np.array([0, -1, -1, -1]))
    assert make_strategy("pcoreset").select(pool, 2, seed=0).query.tolist() == [3, 2]
    assert make_strategy("pcoreset", reverse=True).select(pool, 2, seed=0).query.tolist() == [1, 2]


def sq_case():
    """Labeled rows 0 (.9/.1) and 1 (.3/.7, mispredicted), both stored as class 0; unlabeled
    u2 (.86/.14), u3 (.6/.4), u4 (.3/.7), u5 (.95/.05). Entropy's order: u3, u4, u2, u5."""
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.86, 0.14], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]], dtype=np.float32)
    return Pool(None, probs, np.arange(6) < 2, np.array([0, 0, -1, -1, -1, -1]))


@pytest.mark.parametrize("variant, pseudo", [("official", [2]), ("paper", [3, 2])])
def test_selective_querying_on_entropys_picks(variant, pseudo):
    """sq:entropy filters entropy's own picks u3, u4, u2 with CB+SQ's thresholds: official
    tau_0 = mean max-probability (.9, .7) = .8 pseudo-labels u2 (.86); eq. 11's tau_0 = mean
    p(0|x) (.9, .3) = .6 also u3 (.6); u4 is predicted class 1, which has no labeled image."""
    pool = sq_case()
    base = make_strategy("entropy").select(pool, 3, seed=0).query
    assert base.tolist() == [3, 4, 2]
    sel = make_strategy("sq:entropy", variant=variant).select(pool, 3, seed=0)
    assert sel.pseudo.tolist() == pseudo and sel.pseudo_labels.tolist() == [0] * len(pseudo)
    assert sel.query.tolist() == [i for i in base.tolist() if i not in pseudo]
    # a pseudo-label's score is its confidence max_k p(k|x); a query keeps entropy's score
    np.testing.assert_allclose(sel.pseudo_scores, pool.probs[pseudo].max(1), rtol=1e-6)
    p = pool.probs[sel.query].astype(np.float64)
    np.testing.assert_allclose(sel.query_scores, -(p * np.log(p)).sum(1), rtol=1e-6)


def test_selective_querying_keeps_the_base_strategys_own_options_and_draws():
    """sq:coreset with the base's cold start given through base_options: with nothing labeled its
    picks are coreset's own (uniform, seeded), and nothing is pseudo-labeled."""
    rng = np.random.default_rng(0)
    pool = Pool(rng.standard_normal((30, 4)).astype(np.float32), rng.dirichlet(np.ones(3), 30),
                np.zeros(30, bool), np.full(30, -1))
    for options in ({}, {"cold_start": "prior"}):
        sel = make_strategy("sq:coreset", base_options=options).select(pool, 5, seed=4)
        assert sel.query.tolist() == make_strategy("coreset", **options).select(pool, 5, seed=4).query.tolist()
        assert len(sel.pseudo) == 0
