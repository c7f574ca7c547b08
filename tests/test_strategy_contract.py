"""The contract every registered strategy keeps, for each of its variants and cold starts.

Modelled on scikit-activeml's template test for query strategies: one parametrised set of
checks run over every name ``raysvc strategies`` lists, so a strategy added later is
checked without a line written for it.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

from raysvc.errors import PoolExhaustedError
from raysvc.strategies import STRATEGIES, Pool, make_strategy

N, D, C, E = 60, 8, 4, 6
# options whose every value is a way of running the strategy (the others are tuning knobs)
MODE_OPTIONS = ("variant", "cold_start", "features", "centres", "reverse")
# options a mode needs alongside: the label-guided features read the true labels only with oracle
MODE_NEEDS = {("features", "label"): {"oracle": True}}
# members of each family, checked in its place: selective querying on strategies of each kind
FAMILY_MEMBERS = {"sq:<strategy>": ["sq:coreset", "sq:entropy", "sq:pcb", "sq:random", "sq:typiclust", "sq:cb"]}


def _modes(name: str) -> list[dict]:
    """{} and, for each mode option the strategy has, one params dict per value."""
    options = STRATEGIES.resolve(name).cls.Options
    hints = typing.get_type_hints(options)
    modes = [{}]
    for field in dataclasses.fields(options):
        if field.name in MODE_OPTIONS:
            values = (False, True) if hints[field.name] is bool else typing.get_args(hints[field.name])
            modes += [{field.name: value, **MODE_NEEDS.get((field.name, value), {})}
                      for value in values if value != field.default]
    return modes


NAMES = [member for name in STRATEGIES.names() for member in FAMILY_MEMBERS.get(name, [name])]
CASES = [(name, params) for name in NAMES for params in _modes(name)]


def _case_id(case) -> str:
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def _arrays(seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((C, D))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    features = text[rng.integers(C, size=N)] + 0.7 * rng.standard_normal((N, D))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    logits = 8.0 * features @ text.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    embeddings = np.abs(rng.standard_normal((N, E))) * rng.uniform(0.5, 3.0, (N, 1))
    return {
        "features": features.astype(dtype), "probs": probs.astype(np.float32),
        "text_features": text.astype(np.float32), "embeddings": embeddings.astype(dtype),
        "true_labels": rng.integers(C, size=N),
    }, probs.argmax(1)


def make_pool(strategy, n_labeled: int = 8, fields: str = "requires", dtype=np.float32, round_: int = 2) -> Pool:
    """A pool with only the strategy's ``requires`` fields (or also its ``optional`` ones) set."""
    arrays, predicted = _arrays(dtype=dtype)
    wanted = set(strategy.requires) | (set(strategy.optional) if fields == "optional" else set())
    labeled = np.zeros(N, dtype=bool)
    labeled[np.random.default_rng(1).choice(N, n_labeled, replace=False)] = True
    labels = np.where(labeled, predicted, -1)
    values = {name: (arrays[name] if name in wanted else None) for name in arrays}
    return Pool(labeled=labeled, labels=labels, round=round_, n_classes=C, **values)


def _fields(name: str) -> list[str]:
    return ["requires", "optional"] if make_strategy(name).optional else ["requires"]


CASES_WITH_FIELDS = [(name, params, fields) for name, params in CASES for fields in _fields(name)]


def test_every_listed_strategy_is_checked():
    checked = {name for name, _ in CASES}
    assert {e.name for e in STRATEGIES.entries()} <= checked
    assert all(set(FAMILY_MEMBERS[f.name]) <= checked for f in STRATEGIES.families())


@pytest.mark.parametrize("name, params, fields", CASES_WITH_FIELDS,
                         ids=[_case_id((n, p)) + f"-{f}" for n, p, f in CASES_WITH_FIELDS])
def test_distinct_unlabeled_picks_fill_the_budget(name, params, fields):
    strategy = make_strategy(name, **params)
    pool = make_pool(strategy, fields=fields)
    for budget in (1, 7):
        sel = strategy.select(pool, budget, seed=3)
        chosen = np.concatenate([sel.query, sel.pseudo])
        assert len(chosen) == budget  # a pseudo-label takes the place of a query
        assert len(np.unique(chosen)) == budget
        assert ((chosen >= 0) & (chosen < N)).all() and not pool.labeled[chosen].any()
        assert ((sel.pseudo_labels >= 0) & (sel.pseudo_labels < C)).all()


@pytest.mark.parametrize("name, params, fields", CASES_WITH_FIELDS,
                         ids=[_case_id((n, p)) + f"-{f}" for n, p, f in CASES_WITH_FIELDS])
def test_the_same_seed_gives_the_same_selection(name, params, fields):
    strategy = make_strategy(name, **params)
    pool = make_pool(strategy, fields=fields)
    first, again = strategy.select(pool, 6, seed=11), make_strategy(name, **params).select(pool, 6, seed=11)
    for part in ("query", "pseudo", "pseudo_labels"):
        np.testing.assert_array_equal(getattr(first, part), getattr(again, part))


@pytest.mark.parametrize("name, params", CASES, ids=[_case_id(c) for c in CASES])
def test_round_one_with_nothing_labeled(name, params):
    strategy = make_strategy(name, **params)
    pool = make_pool(strategy, n_labeled=0, round_=1)
    sel = strategy.select(pool, 5, seed=0)
    assert len(sel.query) == 5 and len(sel.pseudo) == 0  # no labeled image: nothing to be sure of
    assert len(np.unique(sel.query)) == 5


@pytest.mark.parametrize("name, params", CASES, ids=[_case_id(c) for c in CASES])
def test_a_budget_beyond_the_unlabeled_pool_is_refused(name, params):
    strategy = make_strategy(name, **params)
    pool = make_pool(strategy, n_labeled=8)
    with pytest.raises(PoolExhaustedError):
        strategy.select(pool, N - 8 + 1, seed=0)
    sel = strategy.select(pool, N - 8, seed=0)  # the whole unlabeled pool is fine
    assert sorted(np.concatenate([sel.query, sel.pseudo]).tolist()) == np.flatnonzero(~pool.labeled).tolist()


@pytest.mark.parametrize("name, params, fields", CASES_WITH_FIELDS,
                         ids=[_case_id((n, p)) + f"-{f}" for n, p, f in CASES_WITH_FIELDS])
def test_float16_features_are_accepted(name, params, fields):
    strategy = make_strategy(name, **params)
    pool = make_pool(strategy, fields=fields, dtype=np.float16)
    sel = strategy.select(pool, 6, seed=2)
    chosen = np.concatenate([sel.query, sel.pseudo])
    assert len(np.unique(chosen)) == 6 and not pool.labeled[chosen].any()
