"""The papers' analysis figures (analysis.kd_figures, analysis.cb_figures): every formula on a case
known by hand, then every section from real runs made by `raysvc run --store-probs`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.cb_figures import built_set_accuracy, confidence_histogram, confidence_scores
from analysis.kd_figures import (
    active_centroids,
    cluster_purity,
    distance_to_propagated,
    knn_loss,
    mean_min_distance,
    normalised_entropy,
    prediction_alpha,
    propagated_centroids,
)
from analysis.sections import ANALYSES, Section, section
from analysis.stored import StoredRun
from raysvc import storage
from raysvc.cli import main as raysvc
from raysvc.errors import AnalysisError


# ------------------------------------------------------------------ formulas by hand
def test_normalised_entropy_is_one_for_uniform_and_zero_for_one_hot():
    p = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(normalised_entropy(p), [0.0, 1.0, 0.5])  # log 2 / log 4


def test_mean_min_distance_takes_each_pick_to_its_nearest_labeled_or_picked_neighbour():
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    # pick 3.0: nearest of {0, 6} is 0 -> 3; pick 6.0: nearest of {0, 3} is 3 -> 3; mean 3, over scale 2
    assert mean_min_distance(x, np.array([2, 3]), np.array([0]), 2.0) == pytest.approx(1.5)
    # alone, 1.0 is 1 from the labeled 0.0
    assert mean_min_distance(x, np.array([1]), np.array([0]), 1.0) == pytest.approx(1.0)
    assert math.isnan(mean_min_distance(x, np.array([1]), np.array([], np.int64), 1.0))  # nothing to compare


def test_propagated_centroids_mix_the_label_and_the_teacher_centroid():
    centres = propagated_centroids(np.array([[0.6, 0.4]]), alpha=0.5)
    np.testing.assert_allclose(centres[0, 0], [0.8, 0.2])
    np.testing.assert_allclose(centres[0, 1], [0.3, 0.7])


def test_distance_to_propagated_and_knn_loss():
    mu = np.array([[0.6, 0.4]])
    student = np.array([[0.8, 0.2], [0.3, 0.7], [1.0, 0.0]])
    d = distance_to_propagated(student, np.array([0, 0, 0]), np.array([0, 1, 0]), mu, 0.5)
    np.testing.assert_allclose(d, [0.0, 0.0, math.sqrt(0.08)])
    # without labels: [1, 0]'s nearest centre is [0.8, 0.2]; [0.3, 0.7] sits on one
    assert knn_loss(student[1:], mu, 0.5) == pytest.approx(math.sqrt(0.08) / 2)


def test_cluster_purity_counts_each_clusters_largest_reference_group():
    assert cluster_purity(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 1])) == pytest.approx(4 / 5)
    assert cluster_purity(np.array([5, 5, 7]), np.array([1, 1, 2])) == 1.0


def test_active_centroids_count_centres_with_a_row_within_tau():
    d, ids = np.array([0.1, 0.3, 0.05]), np.array([0, 1, 1])
    assert active_centroids(d, ids, 0.2) == 2
    assert active_centroids(d, ids, 0.08) == 1
    assert active_centroids(d, ids, 0.01) == 0


def test_confidence_scores_are_eq_15_per_class_means():
    probs = np.array([[0.9, 0.1, 0.0], [0.7, 0.3, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.0]])
    s = confidence_scores(probs, np.array([0, 1, 2]), np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(s[:2], [0.8, 0.8])
    assert math.isnan(s[2])  # no image of class 2


def test_confidence_histogram_has_fifty_equal_bins_over_the_unit_interval():
    counts, edges = confidence_histogram(np.array([0.0, 0.01, 0.5, 1.0, np.nan]))
    assert len(counts) == 50 and edges[0] == 0.0 and edges[-1] == 1.0
    assert counts[0] == 2 and counts[25] == 1 and counts[49] == 1 and counts.sum() == 4  # NaN left out


def test_built_set_accuracy_counts_every_label_given_so_far():
    picks = pd.DataFrame({"round": [1, 1, 2, 2], "kind": ["query", "query", "pseudo", "pseudo"],
                          "label": [0, 1, 2, 0], "true_label": [0, 1, 2, 1]})
    table = built_set_accuracy(picks)
    assert table["label_accuracy"].tolist() == [1.0, 0.75]
    assert table["labeled"].tolist() == [2, 4] and table["pseudo"].tolist() == [0, 2]


def test_a_section_writes_its_tables_and_shows_its_figures(tmp_path):
    made = section(tmp_path, "T", "text", [tmp_path / "a.png"], {"t": pd.DataFrame({"x": [1]})})
    assert isinstance(made, Section) and (tmp_path / "t.csv").read_text().splitlines() == ["x", "1"]
    assert made.to_markdown(tmp_path) == "## T\n\ntext\n\n![a](a.png)\n"


@pytest.mark.parametrize(("learner", "params", "alpha"), [
    ("kd-zeroshot", {}, 0.5),                                   # official: train_active_others.py 0.5 / 0.5
    ("kd-zeroshot", {"variant": "imagenet", "epochs": 1}, 0.4),  # train_active_imgnet.py
    ("kd-fewshot", {"variant": "imagenet", "epochs": 1}, 0.2),   # ... with the CLAP teacher
    ("kd-zeroshot", {"alpha": 0.7}, 0.7),                       # as given
    ("no-distill", {}, 0.5),                                    # no KD head: DEFAULT_ALPHA
])
def test_the_propagation_alpha_is_the_one_the_run_predicted_with(learner, params, alpha):
    manifest = {"config": {"learner": learner, "learner_params": params}}
    run = StoredRun("nowhere", storage.Run("r", None, manifest))
    assert prediction_alpha(run) == alpha


# ------------------------------------------------------------------ from real runs
@pytest.fixture(scope="module")
def stored(tmp_path_factory, feature_cache):
    """Three tiny runs: PCoreSet (unified prompt) and CB+SQ (class-wise prompts) from a 1-shot start
    with --store-probs, and a random run without stored probabilities."""
    out = tmp_path_factory.mktemp("figures") / "res"
    common = ["--per-class", "6", "--epochs", "1", "--cache", str(feature_cache), "--out", str(out)]
    start = ["--rounds", "2", "--initial-per-class", "1", "--store-probs"]
    assert raysvc(["run", "--strategy", "pcoreset", "--learner-opt", "prompt=unified", *start, *common]) == 0
    assert raysvc(["run", "--strategy", "cbsq", "--learner-opt", "prompt=classwise", *start, *common]) == 0
    assert raysvc(["run", "--strategy", "random", "--rounds", "1", *common]) == 0
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAYSVC_CACHE", str(feature_cache))
        yield out


def test_every_section_from_stored_runs(stored, tmp_path):
    with_probs = [r for r in storage.list_runs(stored) if "-random-" not in r]
    for name, analysis in ANALYSES.items():
        made = analysis(stored, tmp_path, run_ids=with_probs)
        assert made.markdown.strip() and made.figures, name
        for path in made.figures:
            assert path.is_file() and path.stat().st_size > 0, (name, path)
        for table in made.tables:
            assert (tmp_path / f"{table}.csv").is_file(), (name, table)
    fig10 = pd.read_csv(tmp_path / "akd_fig10.csv")
    assert set(fig10["label"]) == {"pcoreset", "cbsq"} and fig10["round"].tolist() == [1, 2, 1, 2]
    assert fig10[["uncertainty", "class_balance", "probability_diversity"]].apply(lambda c: c.between(0, 1)).all().all()
    fig6 = pd.read_csv(tmp_path / "cb_fig6_runs.csv")
    assert set(fig6["prompt"]) == {"unified", "classwise"}


def test_a_run_without_probabilities_is_named_with_the_flag_to_rerun(stored, tmp_path):
    (plain,) = [r for r in storage.list_runs(stored) if "-random-" in r]
    with pytest.raises(AnalysisError, match=f"{plain}.*--store-probs"):
        ANALYSES["akd-fig9"](stored, tmp_path, run_ids=[plain])
    assert ANALYSES["cb-fig7b"](stored, tmp_path, run_ids=[plain]).figures  # selections suffice


def test_report_appends_the_sections_it_is_asked_for(stored, tmp_path, capsys):
    out = tmp_path / "report"
    assert raysvc(["report", str(stored), "--out", str(out), "--strategy", "pcoreset", "--strategy", "cbsq",
                   "--analysis", "cb-fig7b", "--analysis", "akd-fig11"]) == 0
    text = (out / "report.md").read_text()
    assert "## CB Fig. 7b" in text and "## ActiveKD Fig. 11" in text and (out / "akd_fig11.png").is_file()
    assert raysvc(["report", str(stored), "--out", str(tmp_path / "all"), "--analysis", "akd-fig9"]) == 2
    assert "--store-probs" in capsys.readouterr().err
