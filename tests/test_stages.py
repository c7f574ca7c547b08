"""A run goes entry -> plan -> experiment -> loop -> store, each stage taking one typed value
validated once: every options object is parsed and built exactly once for one CLI run and
for one grid cell (its plan made by the grid, shipped as a trial's, executed)."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from raysvc.options import Options


@pytest.fixture
def validations(monkeypatch):
    """Counts the parses (``Options.parse``) per owner (``"strategy 'cb'"``, ``"run"``) and the
    builds per options class (each construction validates every field in ``__post_init__``;
    the parts without options share ``NoOptions``, built once for each of them)."""
    parses, builds = Counter(), Counter()
    parse = Options.parse.__func__
    post_init = Options.__post_init__

    def counting_parse(cls, values, owner):
        parses[owner] += 1
        return parse(cls, values, owner)

    def counting_post_init(self):
        builds[type(self).__qualname__] += 1
        post_init(self)

    monkeypatch.setattr(Options, "parse", classmethod(counting_parse))
    monkeypatch.setattr(Options, "__post_init__", counting_post_init)
    return parses, builds


def test_one_cli_run_parses_every_options_object_once(validations, feature_cache, tmp_path, capsys):
    from raysvc.cli import main

    parses, builds = validations
    args = ["run", "--per-class", "4", "--rounds", "1", "--epochs", "1", "--strategy", "cbsq",
            "--cache", str(feature_cache), "--out", str(tmp_path / "res")]
    assert main(args) == 0, capsys.readouterr().err
    # the spec, the features, and each part (dataset, strategy, learner, backbone)
    assert {"run", "run features", "dataset 'animal-mnist'", "strategy 'cbsq'", "learner 'coop'",
            "backbone 'conse-lite0'"} <= set(parses)
    assert set(parses.values()) == {1}, parses
    assert set(builds.values()) == {1}, builds
    assert {"RunSpec", "FeatureSettings", "RayDataOptions", "ServiceOptions", "NoOptions", "CoOpOptions"} <= set(builds)


def test_one_grid_cell_is_parsed_once_by_the_grid_and_never_again(validations, feature_cache, tmp_path):
    from raysvc.featurecache import FeatureCache
    from raysvc.run import execute
    from raysvc.service.gridspec import load_grid

    parses, builds = validations
    grid = load_grid({"name": "once", "out": str(tmp_path / "res"), "features": {"cache_dir": str(feature_cache)},
                      "fixed": {"dataset": "animal-mnist", "per_class": 4, "rounds": 1,
                                "learner_params": {"epochs": 1}},
                      "grid": {"strategy": ["random"]}})
    (plan,) = grid.plans
    assert set(parses.values()) == {1}, parses
    assert builds.pop("NoOptions") == 2  # the dataset's and random's
    assert set(builds.values()) == {1}, builds
    before = (Counter(parses), Counter(builds))
    shipped = pickle.loads(pickle.dumps(plan))  # as Tune hands it to the trial
    execute(shipped, encode=FeatureCache(grid.settings.features, progress="off").encode)
    assert (parses, builds) == before  # the trial's run parsed nothing again
