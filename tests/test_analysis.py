"""analysis/: loading, tables, figures, clusters, GradFAM and the report on a hand-made results set.

Every expected number below is worked out by hand from the records in ``RUNS``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # analysis/ lives beside raysvc/ and is not installed
    sys.path.insert(0, str(ROOT))

from analysis import figures, report, tables  # noqa: E402
from analysis.load import load_runs  # noqa: E402
from raysvc import storage  # noqa: E402
from raysvc.errors import (  # noqa: E402
    AnalysisError,
    EmptySourceError,
    RaysvcError,  # noqa: E402
    SchemaMismatchError,
)
from raysvc.records import COLUMNS, SCHEMA_VERSION, to_table  # noqa: E402

S2 = math.sqrt(2.0)
NAN = float("nan")

# (dataset, strategy, seed) -> (test_acc per round, n_pseudo per round, pseudo_acc per round)
RUNS = {
    ("alpha", "random", 0): ([0.50, 0.60, 0.70], [0, 0, 0], [NAN, NAN, NAN]),
    ("alpha", "random", 1): ([0.52, 0.62, 0.74], [0, 0, 0], [NAN, NAN, NAN]),
    ("alpha", "cbsq", 0): ([0.55, 0.65, 0.80], [3, 5, 9], [1.0, 0.8, 7 / 9]),
    ("alpha", "cbsq", 1): ([0.57, 0.69, 0.78], [1, 5, 7], [1.0, 0.6, 5 / 7]),
    ("alpha", "entropy", 0): ([0.56, 0.66, 0.75], [0, 0, 0], [NAN, NAN, NAN]),  # one seed, alpha only
    ("beta", "random", 0): ([0.40, 0.45, 0.50], [0, 0, 0], [NAN, NAN, NAN]),
    ("beta", "random", 1): ([0.42, 0.47, 0.56], [0, 0, 0], [NAN, NAN, NAN]),
    ("beta", "cbsq", 0): ([0.44, 0.50, 0.60], [0, 2, 4], [NAN, 0.5, 0.75]),
    ("beta", "cbsq", 1): ([0.46, 0.52, 0.58], [0, 0, 2], [NAN, NAN, 0.5]),
}
BUDGET = 10
# per seed: select seconds per round, train seconds per round, encode seconds in round 1
TIMES = {0: (0.5, 2.0, 10.0), 1: (1.5, 2.0, 0.0)}


def run_rows(dataset, strategy, seed, accs, pseudo, pseudo_acc, run_id=None, version=SCHEMA_VERSION, budget=BUDGET):
    run_id = run_id or f"{dataset}-{strategy}-s{seed}"
    select_s, train_s, encode_s = TIMES[seed]
    rows = []
    for r, (acc, n_ps, ps_acc) in enumerate(zip(accs, pseudo, pseudo_acc), start=1):
        rows.append(dict(
            run_id=run_id, dataset=dataset, strategy=strategy, learner="coop", backbone="conse-lite0", student="",
            teacher="", seed=seed, budget=budget, pool_size=100, n_classes=10, schema_version=version,
            round=r, n_labeled=budget * r + n_ps, n_queried=budget * r, n_pseudo=n_ps, pseudo_acc=ps_acc,
            test_acc=acc, zeroshot_acc=0.3, teacher_acc=NAN, select_seconds=select_s, train_seconds=train_s,
            encode_seconds=encode_s if r == 1 else 0.0, test_acc_base=NAN, test_acc_novel=NAN, test_acc_hm=NAN,
        ))  # fmt: skip
    return rows


def write(dest, rows, manifest=None):
    manifest = manifest or {"schema_version": rows[0]["schema_version"]}
    storage.write_run(dest, rows[0]["run_id"], to_table(rows), manifest)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("results")
    for (dataset, strategy, seed), (accs, pseudo, ps_acc) in RUNS.items():
        write(dest, run_rows(dataset, strategy, seed, accs, pseudo, ps_acc))
    # an interrupted write (records, no manifest) is not a run
    orphan = dest / "runs" / "orphan"
    orphan.mkdir(parents=True)
    pq.write_table(to_table(run_rows("alpha", "random", 5 % 2, [0.1] * 3, [0] * 3, [NAN] * 3, "orphan")),
                   orphan / "records.parquet")
    return dest


@pytest.fixture(scope="module")
def agg(results) -> pd.DataFrame:
    return tables.aggregate(results)


# --------------------------------------------------------------------- load
def test_load_reads_every_complete_run_with_the_schema(results):
    df = load_runs(results)
    assert list(df.columns) == COLUMNS
    assert df["run_id"].nunique() == len(RUNS) and len(df) == 3 * len(RUNS)
    assert "orphan" not in set(df["run_id"])
    assert df["seed"].dtype == np.int64 and df["test_acc"].dtype == np.float64
    assert df["pseudo_acc"].isna().sum() == 5 * 3 + 1 + 2  # NaN survives the round trip
    assert list(df["round"][:3]) == [1, 2, 3]


def test_empty_source_is_one_clear_line(tmp_path):
    for source in (tmp_path / "never-written", tmp_path):
        with pytest.raises(EmptySourceError) as e:
            load_runs(source)
        assert "no runs found" in str(e.value) and str(source) in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, RaysvcError)


def test_mixed_schema_versions_name_the_runs(tmp_path):
    write(tmp_path, run_rows("alpha", "random", 0, [0.5] * 3, [0] * 3, [NAN] * 3))
    write(tmp_path, run_rows("alpha", "random", 1, [0.5] * 3, [0] * 3, [NAN] * 3, run_id="old-run",
                             version=SCHEMA_VERSION + 1))
    with pytest.raises(SchemaMismatchError) as e:
        load_runs(tmp_path)
    msg = str(e.value)
    assert f"'old-run' (version {SCHEMA_VERSION + 1})" in msg and "1 of 2 runs" in msg and "alpha-random-s0" not in msg
    assert "\n" not in msg


def test_wrong_columns_name_the_run_and_column(tmp_path):
    write(tmp_path, run_rows("alpha", "random", 0, [0.5] * 3, [0] * 3, [NAN] * 3))
    rows = run_rows("alpha", "random", 1, [0.5] * 3, [0] * 3, [NAN] * 3, run_id="short")
    table = to_table(rows).drop_columns(["n_pseudo"])
    storage.write_run(tmp_path, "short", table, {})
    with pytest.raises(SchemaMismatchError, match=r"'short' \(missing n_pseudo\)"):
        load_runs(tmp_path)


def test_duplicate_seed_of_one_configuration_is_refused(tmp_path):
    write(tmp_path, run_rows("alpha", "random", 0, [0.5] * 3, [0] * 3, [NAN] * 3, run_id="a"))
    write(tmp_path, run_rows("alpha", "random", 0, [0.6] * 3, [0] * 3, [NAN] * 3, run_id="b"))
    with pytest.raises(AnalysisError, match="'a'/'b'"):
        tables.aggregate(tmp_path)


def test_load_from_s3(s3_gateway, monkeypatch):
    for k, v in s3_gateway.env.items():
        monkeypatch.setenv(k, v)
    dest = f"{s3_gateway.dest}/analysis-{np.random.default_rng().integers(1 << 30)}"
    write(dest, run_rows("alpha", "cbsq", 0, *RUNS[("alpha", "cbsq", 0)]))
    df = load_runs(dest)
    assert list(df["n_labeled"]) == [13, 25, 39]
    with pytest.raises(EmptySourceError):
        load_runs(dest + "-empty")


# ------------------------------------------------------------------- tables
def test_aggregate_mean_and_sample_std_over_seeds(agg):
    row = agg[(agg.dataset == "alpha") & (agg.strategy == "random") & (agg["round"] == 3)].iloc[0]
    assert row.n_seeds == 2
    assert row.test_acc_mean == pytest.approx(0.72, abs=1e-12)
    assert row.test_acc_std == pytest.approx(0.04 / S2, abs=1e-12)  # ddof=1
    one = agg[(agg.strategy == "entropy") & (agg["round"] == 2)].iloc[0]
    assert one.n_seeds == 1 and one.test_acc_mean == pytest.approx(0.66) and math.isnan(one.test_acc_std)
    # NaN-safe: beta/cbsq round 2 has one pseudo_acc (0.5) and one NaN
    b2 = agg[(agg.dataset == "beta") & (agg.strategy == "cbsq") & (agg["round"] == 2)].iloc[0]
    assert b2.pseudo_acc_mean == pytest.approx(0.5) and math.isnan(b2.pseudo_acc_std)
    assert b2.saved_mean == pytest.approx(1.0) and b2.saved_std == pytest.approx(S2)
    assert len(agg) == 5 * 3  # 5 configurations x 3 rounds


def test_main_table_datasets_at_last_round_with_average(agg):
    t = tables.dataset_table(agg)
    assert list(t.mean.columns) == ["alpha", "beta", "Average"]
    assert list(t.mean.index) == ["cbsq", "entropy", "random"]
    expected_mean = pd.DataFrame(
        {"alpha": [0.79, 0.75, 0.72], "beta": [0.59, NAN, 0.53], "Average": [0.69, NAN, 0.625]},
        index=t.mean.index,
    )
    pd.testing.assert_frame_equal(t.mean, expected_mean, check_exact=False, atol=1e-12, check_names=False)
    assert t.spread.loc["random", "beta"] == pytest.approx(0.06 / S2)
    assert t.to_markdown().splitlines() == [
        "| strategy | alpha | beta | Average |",
        "|:---|---:|---:|---:|",
        "| cbsq | **79.00 ± 1.41** | **59.00 ± 1.41** | **69.00** |",
        "| entropy | 75.00 | – | – |",
        "| random | 72.00 ± 2.83 | 53.00 ± 4.24 | 62.50 |",
    ]
    short = tables.dataset_table(agg[~((agg.dataset == "beta") & (agg["round"] == 3))], at_round=3)
    assert list(short.mean.columns) == ["alpha", "beta", "Average"]  # beta has no round 3: NaN, no average
    assert short.mean["beta"].isna().all() and short.mean["Average"].isna().all()
    at1 = tables.dataset_table(agg, at_round=1)
    assert at1.mean.loc["random", "Average"] == pytest.approx((0.51 + 0.41) / 2)


def test_round_table_marks_printed_ties(agg):
    t = tables.round_table(agg, dataset="alpha")
    assert list(t.mean.columns) == [1, 2, 3]
    assert t.mean.loc["cbsq", 2] == pytest.approx(0.67) and t.spread.loc["cbsq", 2] == pytest.approx(0.04 / S2)
    lines = t.to_markdown().splitlines()
    assert lines[0] == "| strategy | 1 | 2 | 3 |"
    assert lines[2] == "| cbsq | **56.00 ± 1.41** | **67.00 ± 2.83** | **79.00 ± 1.41** |"
    assert lines[3] == "| entropy | **56.00** | 66.00 | 75.00 |"  # a printed tie: both bold
    assert lines[4] == "| random | 51.00 ± 1.41 | 61.00 ± 1.41 | 72.00 ± 2.83 |"
    with pytest.raises(AnalysisError, match="several datasets"):
        tables.round_table(agg)


def test_queries_table_saving_and_pseudo_accuracy(agg):
    t = tables.queries_table(agg, only_selective=True)
    assert set(t.mean.index.get_level_values("strategy")) == {"cbsq"}
    a = t.mean.loc[("alpha", "cbsq")]
    assert list(a["labeled"]) == [12.0, 25.0, 38.0]
    assert list(a["queried"]) == [10.0, 20.0, 30.0]
    assert list(a["saved"]) == [2.0, 5.0, 8.0]
    assert list(t.spread.loc[("alpha", "cbsq")]["saved"]) == pytest.approx([S2, 0.0, S2])
    assert list(a["pseudo-label acc (%)"]) == pytest.approx([1.0, 0.7, (7 / 9 + 5 / 7) / 2])
    b = t.mean.loc[("beta", "cbsq")]
    assert math.isnan(b["pseudo-label acc (%)"].iloc[0]) and list(b["saved"]) == [0.0, 1.0, 3.0]
    md = t.to_markdown().splitlines()
    assert md[0] == "| dataset | strategy | round | labeled | queried | saved | pseudo-labels | pseudo-label acc (%) |"
    assert md[2] == "| alpha | cbsq | 1 | 12.0 ± 1.4 | 10.0 ± 0.0 | 2.0 ± 1.4 | 2.0 ± 1.4 | 100.00 ± 0.00 |"
    assert md[5] == "| beta | cbsq | 1 | 10.0 ± 0.0 | 10.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | – |"
    assert len(tables.queries_table(agg).mean) == 5 * 3


def test_timing_table(results):
    t = tables.timing_table(results, encode=True)  # the former view, with encoding
    row = t.mean.loc[("alpha", "random")]
    assert row["select s/round"] == pytest.approx(1.0) and row["train s/round"] == pytest.approx(2.0)
    assert row["encode s/run"] == pytest.approx(5.0) and row["total s/run"] == pytest.approx(14.0)
    assert t.spread.loc[("alpha", "random"), "encode s/run"] == pytest.approx(10 / S2)
    assert t.spread.loc[("alpha", "random"), "total s/run"] == pytest.approx(7 / S2)
    assert math.isnan(t.spread.loc[("alpha", "entropy"), "total s/run"])


def test_other_configuration_keys_label_rows_not_averaged(results, tmp_path):
    df = load_runs(results)
    other = df[df.run_id == "alpha-random-s0"].assign(run_id="alpha-random-b20-s0", budget=20)
    agg = tables.aggregate(pd.concat([df, other]))
    t = tables.round_table(agg, dataset="alpha")
    # the budget is a key as labels per class per round: 20 and 10 on 10 classes
    assert t.mean.index.names == ["strategy", "budget_per_class"]
    assert t.mean.loc[("random", 2.0), 3] == pytest.approx(0.70)
    assert t.mean.loc[("random", 1.0), 3] == pytest.approx(0.72)
    lines = t.to_markdown().splitlines()
    assert lines[0] == "| strategy | budget | 1 | 2 | 3 |"
    assert [line.split(" | ")[:2] for line in lines[2:]] == [
        ["| cbsq", "1/class"], ["| entropy", "1/class"], ["| random", "1/class"], ["| random", "2/class"]]


# ------------------------------------------------------------------ figures
def _lines_per_axes(result):
    return {ax.get_title(): len(ax.get_lines()) for ax in result.figure.axes}


def test_accuracy_vs_round_curves(agg, tmp_path):
    res = figures.accuracy_vs_round(agg, tmp_path / "acc.png")
    assert res.path.is_file() and res.path.stat().st_size > 1000
    assert res.curves == {"alpha": 3, "beta": 2, "Average": 2}  # entropy has no beta run: no average
    assert _lines_per_axes(res) == {"alpha": 3, "beta": 2, "Average over 2 datasets": 2}
    avg = [ln for ln in res.figure.axes[2].get_lines() if ln.get_label() == "random"][0]
    assert list(avg.get_ydata()) == pytest.approx([46.0, 53.5, 62.5])
    one = figures.accuracy_vs_round(agg, tmp_path / "one.png", dataset="beta")
    assert one.curves == {"beta": 2} and len(one.figure.axes) == 1


def test_accuracy_vs_queries_and_saved_curves(agg, tmp_path):
    q = figures.accuracy_vs_queries(agg, tmp_path / "q.png")
    assert q.curves == {"alpha": 3, "beta": 2} and _lines_per_axes(q) == {"alpha": 3, "beta": 2}
    line = q.figure.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [10.0, 20.0, 30.0]
    s = figures.queries_saved(agg, tmp_path / "s.png")
    assert s.curves == {"alpha": 1, "beta": 1} and _lines_per_axes(s) == {"alpha": 1, "beta": 1}
    assert list(s.figure.axes[0].get_lines()[0].get_ydata()) == [2.0, 5.0, 8.0]
    none = figures.queries_saved(agg, tmp_path / "n.png", strategy="random")
    assert none.curves == {"alpha": 0, "beta": 0} and none.path.is_file()


# ------------------------------------------------------------------- report
def test_report_builds_every_table_and_figure(results, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report.main([str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| cbsq | **79.00 ± 1.41** | **59.00 ± 1.41** | **69.00** |" in printed
    names = {p.name for p in out.iterdir()}
    assert names == {
        "report.md", "records.csv", "aggregate.csv", "main.csv", "rounds_alpha.csv", "rounds_beta.csv",
        "queries.csv", "timing.csv", "accuracy_vs_round.png", "accuracy_vs_queries.png", "queries_saved.png",
        "aulc.csv", "aulc_queries.csv", "paired.csv", "reach.csv",
    }  # fmt: skip
    md = (out / "report.md").read_text()
    for heading in ("## Runs", "## Main table", "## alpha by round", "## beta by round",
                    "## Oracle queries and selective querying", "## Seconds per stage",
                    "## Area under the learning curve", "## Paired differences against random",
                    "## Labels needed to reach an accuracy"):
        assert heading in md
    for png in ("accuracy_vs_round.png", "accuracy_vs_queries.png", "queries_saved.png"):
        assert f"]({png})" in md
    main_csv = pd.read_csv(out / "main.csv")
    assert list(main_csv.columns) == ["strategy", "alpha", "alpha std", "beta", "beta std", "Average"]
    assert main_csv.set_index("strategy").loc["random", "Average"] == pytest.approx(0.625)
    assert len(pd.read_csv(out / "records.csv")) == 3 * len(RUNS)


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raysvc report: error: no runs found") and err.count("\n") == 1


def test_report_filters_and_round(results, tmp_path):
    rep = report.build_report(results, tmp_path / "r", at_round=2, filters={"strategy": ["random"]})
    assert list(rep.main.mean.index) == ["random"]
    assert rep.main.mean.loc["random", "alpha"] == pytest.approx(0.61)
    assert "queries" not in rep.tables and "No run used selective querying" in rep.markdown
    assert rep.figures["queries_saved"].curves == {"alpha": 0, "beta": 0}
    assert "| random | 61.00 ± 1.41 | 46.00 ± 1.41 | 53.50 |" in str(rep)  # print(build_report(...)) in the CLI


# ----------------------------------------------------------------- clusters
def test_cluster_analysis_aris(tmp_path):
    from analysis.clusters import cluster_analysis, kmeans_ari

    rng = np.random.default_rng(0)
    n_per, c, d = 20, 3, 8
    labels = np.repeat(np.arange(c), n_per)
    text = np.eye(c, d, dtype=np.float32)
    # images barely separable on their own; the model's probabilities are right
    image = rng.normal(size=(len(labels), d)).astype(np.float32) + 0.3 * text[labels]
    probs = np.full((len(labels), c), 0.05)
    probs[np.arange(len(labels)), labels] = 0.9
    res = cluster_analysis(image, text, labels, tmp_path / "clusters.png", probs=probs, seed=0)
    assert res.path.is_file() and res.n_points == 60
    assert -1.0 <= res.ari_image <= 1.0 and res.ari_guided > res.ari_image
    assert res.ari_guided > 0.9
    assert kmeans_ari(image, labels, seed=0) == res.ari_image  # seeded: the same clustering again


# ------------------------------------------------------------------ GradFAM
@pytest.fixture(scope="module")
def conse():
    import torch

    try:
        from raysvc.backbones import load_backbone
        from raysvc.datasets import load_dataset

        loaded = load_backbone("conse-lite0", 112), load_dataset("animal-mnist")
    except (ImportError, RaysvcError) as e:  # weights or dataset package missing
        pytest.skip(f"ConSE backbone or Animal-MNIST unavailable: {e}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two images: spinning threads on a shared machine cost more than they give
    yield loaded
    torch.set_num_threads(threads)


def test_gradfam_on_conse(conse, tmp_path):
    from analysis.gradfam import gradfam, gradfam_figure
    from raysvc.encoded import encode_class_prompts

    backbone, data = conse
    idx = [0, int(np.flatnonzero(data.labels == 3)[0])]
    images, labels = [data.load(i) for i in idx], data.labels[idx]
    text, _ = encode_class_prompts(backbone, data.prompts())
    res = gradfam_figure(backbone, images, text, tmp_path / "gradfam.png", labels=labels, classnames=data.classnames)
    assert res.path.is_file()
    assert set(res.heatmaps) == {"text", "image", "guided"}
    for heat in res.heatmaps.values():
        assert heat.shape == (2, 112, 112)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        # each map peaks at 1, or is all 0 where no region aligns positively
        assert all(p == pytest.approx(1.0) or p == 0.0 for p in heat.max(axis=(1, 2)))
    assert res.heatmaps["image"].max(axis=(1, 2)) == pytest.approx([1.0, 1.0])
    h = res.heatmaps
    assert not np.allclose(h["text"], h["image"]) and not np.allclose(h["guided"], h["image"])
    assert not np.allclose(h["text"], h["guided"])
    # another class's text embedding looks elsewhere
    other = gradfam(backbone, backbone.preprocess(images), "text", text_features=text, class_index=(labels + 5) % 10)
    assert other.shape == (2, 112, 112) and not np.allclose(other, h["text"])
    with pytest.raises(AnalysisError, match="needs the class text features"):
        gradfam(backbone, backbone.preprocess(images), "guided")
