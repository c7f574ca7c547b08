"""What each round selected, in the run format: selections.parquet beside the records (and the
pool probabilities with --store-probs), checked against the records on runs made by the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from analysis.load import load_runs, load_selections
from analysis.selections import class_balance, round_summary
from raysvc import storage
from raysvc.cli import main as raysvc
from raysvc.records import ADDED_IN_2, SCHEMA, SELECTION_COLUMNS


def _shapes(root, classes=("circle", "square", "star"), n=8):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), (20 * i + 60 * c) % 256, np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def stored(tmp_path_factory, feature_cache):
    """Runs made by `raysvc run`: cbsq (queries and pseudo-labels), random with a 1-shot start
    (round 0), and cb on an image folder (items are file paths), one with --store-probs."""
    out = tmp_path_factory.mktemp("selections") / "res"
    common = ["--cache", str(feature_cache), "--out", str(out), "--epochs", "1"]
    assert raysvc(["run", "--per-class", "8", "--rounds", "3", "--strategy", "cbsq", "--store-probs", *common]) == 0
    assert raysvc(["run", "--per-class", "8", "--rounds", "2", "--strategy", "random", "--initial-per-class", "1",
                   *common]) == 0
    folder = _shapes(tmp_path_factory.mktemp("data") / "shapes")
    assert raysvc(["run", "--dataset", str(folder), "--rounds", "2", "--budget", "3", "--strategy", "cb",
                   *common]) == 0
    return out, folder


def test_each_round_holds_exactly_its_queries_and_pseudo_labels(stored):
    out, _ = stored
    records = load_runs(out)
    selections = load_selections(out)
    assert list(selections.columns) == ["run_id", *SELECTION_COLUMNS]
    assert records["run_id"].nunique() == selections["run_id"].nunique() == 3
    for run_id, rows in records.groupby("run_id"):
        picks = selections[selections["run_id"] == run_id]
        rows = rows.sort_values("round")
        previous = {"n_queried": 0, "n_pseudo": 0}
        for row in rows.itertuples():
            this = picks[picks["round"] == row.round]
            assert (this["kind"] == "query").sum() == row.n_queried - previous["n_queried"]
            assert (this["kind"] == "pseudo").sum() == row.n_pseudo - previous["n_pseudo"]
            previous = {"n_queried": row.n_queried, "n_pseudo": row.n_pseudo}
            so_far = picks[(picks["round"] <= row.round) & (picks["kind"] == "pseudo")]
            if len(so_far):  # the records' pseudo-label accuracy is the selections'
                assert (so_far["label"] == so_far["true_label"]).mean() == pytest.approx(row.pseudo_acc)
            else:
                assert math.isnan(row.pseudo_acc)
        assert not picks["position"].duplicated().any()
        pool_size = int(rows["pool_size"].iloc[0])
        assert picks["position"].between(0, pool_size - 1).all()
        queries = picks[picks["kind"] == "query"]
        assert (queries["label"] == queries["true_label"]).all()  # the oracle's labels
        assert len(picks) == rows["n_labeled"].iloc[-1]
    assert sorted(selections["round"].unique().tolist()) == [0, 1, 2, 3]  # the 1-shot start is round 0
    assert (selections["kind"] == "pseudo").any()


def test_items_name_the_images_in_their_source(stored):
    out, folder = stored
    selections = load_selections(out)
    folder_run = [r for r in storage.list_runs(out) if r.startswith("shapes-")]
    items = selections[selections["run_id"].isin(folder_run)]["item"]
    assert len(items) == 6 and all((folder / item).is_file() for item in items)  # relative file paths
    packaged = selections[~selections["run_id"].isin(folder_run)]["item"]
    assert packaged.str.fullmatch(r"\d+").all()  # indices into the packaged arrays


def test_stored_probabilities_are_each_selections_pool_probabilities(stored):
    out, _ = stored
    (run_id,) = [r for r in storage.list_runs(out) if "-cbsq-" in r]
    run = storage.read_run(out, run_id)
    picks = load_selections(out).query("run_id == @run_id")
    assert run.manifest["probs_rounds"] == [1, 2, 3]
    pool_size, n_classes = run.table["pool_size"][0].as_py(), run.table["n_classes"][0].as_py()
    import io

    for round_ in (1, 2, 3):
        raw = storage.read_run_file(out, run, f"probs-r{round_:03d}-s000.npy")
        probs = np.load(io.BytesIO(raw))
        assert probs.dtype == np.float16 and probs.shape == (pool_size, n_classes)
        np.testing.assert_allclose(probs.astype(np.float32).sum(1), 1.0, atol=1e-2)
        # a pseudo-label's stored score is its confidence, the max of what the selection saw
        pseudo = picks[(picks["round"] == round_) & (picks["kind"] == "pseudo")]
        np.testing.assert_allclose(pseudo["score"], probs[pseudo["position"]].astype(np.float32).max(1), atol=1e-3)
    assert (picks["kind"] == "pseudo").any() and picks.loc[picks["kind"] == "query", "score"].isna().all()
    other = storage.read_run(out, next(r for r in storage.list_runs(out) if "-random-" in r))
    assert storage.read_run_file(out, other, "probs-r001-s000.npy") is None  # only with --store-probs


def test_runs_shows_one_run_with_its_selections(stored, capsys):
    out, _ = stored
    (run_id,) = [r for r in storage.list_runs(out) if "-cbsq-" in r]
    assert raysvc(["runs", str(out), "--run", run_id, "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"run {run_id}: animal-mnist, cbsq") and "what each round selected" in printed
    assert "selected images (3 of " in printed and "pseudo_acc" in printed
    assert raysvc(["runs", str(out), "--run", "no-such-run"]) == 2


def test_runs_of_the_first_record_schema_load_without_selections(tmp_path):
    row = dict(
        run_id="old", dataset="toy", strategy="random", learner="coop", backbone="clip", student="", teacher="",
        seed=0, budget=2, pool_size=10, n_classes=2, schema_version=1, round=1, n_labeled=2, n_queried=2, n_pseudo=0,
        pseudo_acc=float("nan"), test_acc=0.5, zeroshot_acc=0.4, teacher_acc=float("nan"), select_seconds=0.1,
        train_seconds=0.1, encode_seconds=0.0,
    )  # fmt: skip
    version_1 = pa.Table.from_pylist([row], schema=pa.schema([f for f in SCHEMA if f.name not in ADDED_IN_2]))
    storage.write_run(tmp_path, "old", version_1, {"schema_version": 1})
    old = load_runs(tmp_path)
    assert old["run_id"].tolist() == ["old"] and old[list(ADDED_IN_2)].isna().all(axis=None)
    assert load_selections(tmp_path).empty


def test_class_balance_and_the_round_summary_by_hand():
    # two classes picked 2:2 of C = 4 -> entropy log 2 / log 4 = 0.5; one class only -> 0
    assert class_balance(np.array([0, 0, 1, 1]), 4) == pytest.approx(0.5)
    assert class_balance(np.array([3, 3]), 4) == 0.0
    assert class_balance(np.array([0, 1, 2, 3]), 4) == pytest.approx(1.0)
    picks = pd.DataFrame({
        "run_id": ["r"] * 5, "round": [1, 1, 1, 2, 2], "position": [0, 1, 2, 3, 4], "item": list("abcde"),
        "kind": ["query", "query", "pseudo", "query", "pseudo"], "label": [0, 1, 1, 2, 0],
        "true_label": [0, 1, 0, 2, 0], "score": [np.nan] * 5,
    })
    summary = round_summary(picks, 4).set_index("round")
    assert summary.loc[1, ["queried", "pseudo", "classes"]].tolist() == [2, 1, 2]
    assert summary.loc[1, "pseudo_acc"] == 0.0 and summary.loc[2, "pseudo_acc"] == 1.0
    assert summary.loc[1, "balance"] == pytest.approx(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(4))
