"""analysis/: the statistics researchers report, on a hand-made results set.

95% confidence intervals, AULC, paired differences against a baseline, labels needed to
reach an accuracy, ``--spread``, and the budget per class that makes B = |C| one
configuration across datasets with different class counts. Every expected number is
worked out by hand from ``RANDOM`` and ``DIFF`` below; the Student t quantiles are the
printed table's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # analysis/ lives beside raysvc/ and is not installed
    sys.path.insert(0, str(ROOT))

from analysis import figures, report, tables  # noqa: E402
from raysvc import storage  # noqa: E402
from raysvc.errors import AnalysisError  # noqa: E402
from raysvc.records import SCHEMA_VERSION, to_table  # noqa: E402

NAN = float("nan")
T1, T2 = 12.706205, 4.302653  # t_{0.975, n-1} for n = 2 and n = 3 seeds (a t-table)
S3 = math.sqrt(3.0)

# two datasets with different class counts, each run at the papers' default B = |C|
CLASSES = {"alpha": 10, "gamma": 18}
# random's test accuracy per seed in rounds 1, 2, 3
RANDOM = {
    "alpha": {0: [0.50, 0.60, 0.70], 1: [0.52, 0.62, 0.72], 2: [0.54, 0.64, 0.74]},
    "gamma": {0: [0.30, 0.40, 0.50], 1: [0.32, 0.42, 0.52], 2: [0.34, 0.44, 0.54]},
}
# the other strategies: random's accuracy plus a per-seed difference, the same in every round
DIFF = {
    "cb": {"alpha": (0.11, 0.12, 0.13), "gamma": (0.01, 0.00, -0.04)},
    "margin": {"alpha": (-0.10, -0.11, -0.12), "gamma": (0.01, 0.02, 0.03)},
}


def rows_for(dataset, strategy, seed, accs, budget=None, n_classes=None, queried=None, run_id=None):
    n_classes = n_classes or CLASSES[dataset]
    budget = budget or n_classes
    queried = queried or [budget * r for r in range(1, len(accs) + 1)]
    return [dict(
        run_id=run_id or f"{dataset}-{strategy}-b{budget}-s{seed}", dataset=dataset, strategy=strategy,
        learner="coop", backbone="b1", student="", teacher="", seed=seed, budget=budget, pool_size=500,
        n_classes=n_classes, schema_version=SCHEMA_VERSION, round=r, n_labeled=budget * r, n_queried=q,
        n_pseudo=budget * r - q, pseudo_acc=NAN if budget * r == q else 1.0, test_acc=acc, zeroshot_acc=0.3,
        teacher_acc=NAN, select_seconds=1.0, train_seconds=2.0, encode_seconds=0.0, test_acc_base=NAN,
        test_acc_novel=NAN, test_acc_hm=NAN,
    ) for r, (acc, q) in enumerate(zip(accs, queried), start=1)]  # fmt: skip


def frame(rows) -> pd.DataFrame:
    return to_table(rows).to_pandas()


def all_rows() -> list[dict]:
    rows = []
    for dataset, seeds in RANDOM.items():
        for seed, accs in seeds.items():
            rows += rows_for(dataset, "random", seed, accs)
            for strategy, diff in DIFF.items():
                rows += rows_for(dataset, strategy, seed, [a + diff[dataset][seed] for a in accs])
    return rows


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return frame(all_rows())


@pytest.fixture(scope="module")
def agg(records) -> pd.DataFrame:
    return tables.aggregate(records)


# ------------------------------------------------------------- 95% CI
def test_ci95_is_student_t_over_the_seeds(agg):
    assert tables.ci95(0.02, 3) == pytest.approx(T2 * 0.02 / S3, rel=1e-6)
    assert tables.ci95(0.02, 2) == pytest.approx(T1 * 0.02 / math.sqrt(2), rel=1e-6)
    assert math.isnan(tables.ci95(NAN, 1)) and math.isnan(tables.ci95(0.0, 1))  # one seed: undefined, not 0
    row = agg[(agg.dataset == "alpha") & (agg.strategy == "random") & (agg["round"] == 3)].iloc[0]
    assert row.test_acc_mean == pytest.approx(0.72) and row.test_acc_std == pytest.approx(0.02)
    assert row.test_acc_ci95 == pytest.approx(T2 * 0.02 / S3, rel=1e-6)  # 0.04968
    # n is the seeds with a value: pseudo_acc is NaN everywhere here
    assert math.isnan(row.pseudo_acc_ci95)


def test_ci95_with_two_seeds_and_one(records):
    two = tables.aggregate(records[records.seed < 2])
    r = two[(two.dataset == "gamma") & (two.strategy == "cb") & (two["round"] == 3)].iloc[0]
    # gamma cb round 3: 0.51 and 0.52 -> std 0.01 / sqrt(2)
    assert r.test_acc_std == pytest.approx(0.01 / math.sqrt(2))
    assert r.test_acc_ci95 == pytest.approx(T1 * (0.01 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)  # = T1 * 0.005
    one = tables.aggregate(records[records.seed == 0])
    assert one["test_acc_ci95"].isna().all() and one["test_acc_std"].isna().all()


# ----------------------------------------------- cross-dataset Average, budget per class
MAIN_STD = [
    "| strategy | alpha | gamma | Average |",
    "|:---|---:|---:|---:|",
    "| zero-shot | 30.00 ± 0.00 | 30.00 ± 0.00 | 30.00 |",
    "| cb | **84.00 ± 3.00** | 51.00 ± 1.00 | **67.50** |",
    "| margin | 61.00 ± 1.00 | **54.00 ± 3.00** | 57.50 |",
    "| random | 72.00 ± 2.00 | 52.00 ± 2.00 | 62.00 |",
]
# the same with 95% CIs: T2 * std / sqrt(3) for std 0.03, 0.01, 0.02 -> 7.45, 2.48, 4.97 points
MAIN_CI = [
    "| strategy | alpha | gamma | Average |",
    "|:---|---:|---:|---:|",
    "| zero-shot | 30.00 ± 0.00 | 30.00 ± 0.00 | 30.00 |",
    "| cb | **84.00 ± 7.45** | 51.00 ± 2.48 | **67.50** |",
    "| margin | 61.00 ± 2.48 | **54.00 ± 7.45** | 57.50 |",
    "| random | 72.00 ± 4.97 | 52.00 ± 4.97 | 62.00 |",
]


def test_default_budget_on_different_class_counts_is_one_row_with_an_average(agg):
    # B = 10 on alpha (10 classes) and B = 18 on gamma (18 classes): one per class on both
    assert set(agg["budget_per_class"]) == {1.0}
    main = tables.paper_tables(agg)["main"]
    assert main.to_markdown().splitlines() == MAIN_STD
    ci = tables.paper_tables(agg, spread="ci95")["main"]
    assert ci.to_markdown().splitlines() == MAIN_CI
    assert ci.spread.loc["cb", "alpha"] == pytest.approx(T2 * 0.03 / S3, rel=1e-6)
    assert "(mean ± 95% CI over seeds)" in ci.title and "mean ± 95% CI over every run" in ci.title
    assert list(ci.to_frame().columns) == ["strategy", "alpha", "alpha ci95", "gamma", "gamma ci95", "Average"]


def test_an_absolute_budget_on_different_class_counts_stays_two_configurations(records):
    # B = 10 on gamma's 18 classes is another configuration than B = 18 there (and than B = 10 on alpha)
    extra = frame(rows_for("gamma", "random", 0, [0.2, 0.3, 0.4], budget=10))
    t = tables.dataset_table(pd.concat([records, extra]), strategy="random")
    assert t.mean.index.names == ["strategy", "budget_per_class"]
    assert t.mean.loc[("random", 1.0), "Average"] == pytest.approx(0.62)
    assert math.isnan(t.mean.loc[("random", 10 / 18), "Average"])  # gamma only: no average
    assert t.mean.loc[("random", 10 / 18), "gamma"] == pytest.approx(0.4)
    lines = t.to_markdown().splitlines()
    assert lines[0] == "| strategy | budget | alpha | gamma | Average |"
    assert lines[2:] == [
        "| random | 0.556/class | – | 40.00 | – |",
        "| random | 1/class | 72.00 ± 2.00 | **52.00 ± 2.00** | 62.00 |",
    ]
    assert tables.key_text("budget_per_class", 2.0) == "2/class"
    assert tables.key_text("budget_per_class", 0.5) == "0.5/class"


# ----------------------------------------------------------------------- AULC
def test_trapezoid_mean_by_hand():
    # (10 * (0.5 + 0.6) / 2 + 10 * (0.6 + 0.8) / 2) / (30 - 10)
    assert tables.trapezoid_mean([10, 20, 30], [0.5, 0.6, 0.8]) == pytest.approx(0.625)
    # an uneven grid weighs each segment by its width: (2 * 1.1 / 2 + 8 * 1.4 / 2) / 10
    assert tables.trapezoid_mean([10, 12, 20], [0.5, 0.6, 0.8]) == pytest.approx(0.67)
    assert tables.trapezoid_mean([5, 9, 40], [0.37] * 3) == pytest.approx(0.37)  # a constant accuracy a gives a
    assert math.isnan(tables.trapezoid_mean([10], [0.5]))  # one point: no area
    assert math.isnan(tables.trapezoid_mean([10, 10], [0.5, 0.6]))  # x never grows


def test_aulc_per_run_and_over_seeds(records):
    per_run = tables.run_aulc(records).set_index("run_id")
    # equal steps: (a1 + 2 a2 + a3) / 4, whatever B is
    assert per_run.loc["alpha-random-b10-s0", "aulc"] == pytest.approx((0.50 + 1.20 + 0.70) / 4)  # 0.60
    assert per_run.loc["gamma-random-b18-s0", "aulc"] == pytest.approx((0.30 + 0.80 + 0.50) / 4)  # 0.40
    assert per_run.loc["gamma-random-b18-s0", "last_round"] == 3
    upto = tables.run_aulc(records, up_to_round=2).set_index("run_id")
    assert upto.loc["alpha-random-b10-s0", "aulc"] == pytest.approx(0.55)
    t = tables.aulc_table(records)
    assert list(t.mean.columns) == ["alpha", "gamma", "Average"]
    # random: alpha 0.60 0.62 0.64, gamma 0.40 0.42 0.44; cb adds its per-seed difference
    assert t.mean.loc["random", "alpha"] == pytest.approx(0.62)
    assert t.spread.loc["random", "alpha"] == pytest.approx(0.02)
    assert t.mean.loc["random", "Average"] == pytest.approx(0.52)
    assert t.mean.loc["cb", "Average"] == pytest.approx((0.74 + 0.41) / 2)
    assert t.baseline_mean.loc["zero-shot", "alpha"] == pytest.approx(0.3)  # a constant curve
    ci = tables.aulc_table(records, spread="ci95")
    assert ci.spread.loc["random", "gamma"] == pytest.approx(T2 * 0.02 / S3, rel=1e-6)


def test_aulc_against_oracle_queries_on_uneven_grids():
    # selective querying: each seed spent its own queries; each run is integrated on its grid
    rows = rows_for("alpha", "cbsq", 0, [0.5, 0.6, 0.8], queried=[10, 12, 20])
    rows += rows_for("alpha", "cbsq", 1, [0.5, 0.6, 0.8], queried=[10, 18, 20])
    records = frame(rows)
    per_run = tables.run_aulc(records, x="n_queried").set_index("seed")["aulc"]
    assert per_run[0] == pytest.approx(0.67)  # (2 * 1.1 / 2 + 8 * 1.4 / 2) / 10
    assert per_run[1] == pytest.approx(0.58)  # (8 * 1.1 / 2 + 2 * 1.4 / 2) / 10
    assert tables.run_aulc(records)["aulc"].tolist() == pytest.approx([0.625, 0.625])  # labeled: 10, 20, 30
    t = tables.aulc_table(records, x="n_queried", spread="ci95")
    assert t.mean.loc["cbsq", "alpha"] == pytest.approx(0.625)
    assert t.spread.loc["cbsq", "alpha"] == pytest.approx(T1 * (0.09 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)
    assert "vs oracle queries" in t.title
    with pytest.raises(AnalysisError, match="n_labeled, n_queried"):
        tables.run_aulc(records, x="round")


# ---------------------------------------------------------- paired differences
def test_paired_differences_against_random(records):
    paired = tables.paired_differences(records)
    assert set(paired["strategy"]) == {"cb", "margin"} and set(paired["baseline"]) == {"random"}
    at = paired[paired.quantity == "test_acc"].set_index(["strategy", "dataset"])
    # alpha cb - random per seed: 0.11 0.12 0.13 -> mean 0.12, std 0.01: CI above 0
    a = at.loc[("cb", "alpha")]
    assert a["round"] == 3 and a["n_pairs"] == 3
    assert a["mean"] == pytest.approx(0.12) and a["std"] == pytest.approx(0.01)
    assert a["ci95"] == pytest.approx(T2 * 0.01 / S3, rel=1e-6) and a["low"] == pytest.approx(0.12 - T2 * 0.01 / S3)
    assert a["outcome"] == "win"
    # gamma cb: 0.01 0.00 -0.04 -> mean -0.01, deviations .02 .01 -.03: std sqrt(0.0014 / 2)
    g = at.loc[("cb", "gamma")]
    assert g["mean"] == pytest.approx(-0.01) and g["std"] == pytest.approx(math.sqrt(0.0007))
    assert g["outcome"] == "tie"  # -0.01 ± 0.066 contains 0
    assert at.loc[("margin", "alpha"), "outcome"] == "loss"  # -0.11 ± 0.025
    assert at.loc[("margin", "gamma"), "outcome"] == "tie"  # 0.02 ± 0.025
    # the difference is the same in every round, so AULC differs by the same amounts
    au = paired[paired.quantity == "aulc"].set_index(["strategy", "dataset"])
    assert au.loc[("cb", "alpha"), "mean"] == pytest.approx(0.12) and au.loc[("cb", "alpha"), "outcome"] == "win"
    assert list(au["outcome"]) == list(at["outcome"])

    t = tables.paired_table(paired, "test_acc")
    assert list(t.mean.columns) == ["alpha", "gamma", "wins", "ties", "losses"]
    lines = t.to_markdown().splitlines()
    assert lines[2] == "| cb | **+12.00 ± 2.48** | -1.00 ± 6.57 | 1 | 1 | 0 |"
    assert lines[3] == "| margin | -11.00 ± 2.48 | **+2.00 ± 2.48** | 0 | 1 | 1 |"
    assert "95% CI" in t.title and "containing 0" in t.title


def test_paired_differences_pair_seeds_and_one_pair_is_a_tie(records):
    # cb lacks seed 2 on alpha: two pairs; margin has seed 0 only there: one pair, an undefined CI
    kept = records[~((records.strategy == "cb") & (records.seed == 2)) & ~((records.strategy == "margin") &
                                                                           (records.seed > 0))]
    at = tables.paired_differences(kept, dataset="alpha").set_index(["strategy", "quantity"])
    cb = at.loc[("cb", "test_acc")]
    assert cb["n_pairs"] == 2 and cb["mean"] == pytest.approx(0.115)
    assert cb["ci95"] == pytest.approx(T1 * (0.01 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)
    one = at.loc[("margin", "test_acc")]
    assert one["n_pairs"] == 1 and math.isnan(one["ci95"]) and one["outcome"] == "tie"
    other = tables.paired_differences(records, baseline="margin", at_round=1).set_index(["strategy", "dataset",
                                                                                         "quantity"])
    assert other.loc[("random", "alpha", "test_acc"), "mean"] == pytest.approx(0.11)
    assert other.loc[("random", "alpha", "test_acc"), "round"] == 1
    with pytest.raises(AnalysisError, match="baseline strategy 'entropy'"):
        tables.paired_differences(records, baseline="entropy")


# ------------------------------------------------------------- reaching an accuracy
def test_labels_to_reach_the_baselines_final_accuracy(agg):
    t = tables.reach_table(agg)
    m = t.mean
    # targets: random's mean at the last round, alpha 0.72 and gamma 0.52
    assert m.loc[("alpha", "cb"), "target (%)"] == pytest.approx(0.72)
    assert m.loc[("gamma", "margin"), "target (%)"] == pytest.approx(0.52)
    # alpha cb means by round 0.64 0.74 0.84: round 2, 20 labeled images and queries
    assert list(m.loc[("alpha", "cb"), ["round", "labeled", "queried"]]) == [2.0, 20.0, 20.0]
    assert list(m.loc[("alpha", "random"), ["round", "labeled", "queried"]]) == [3.0, 30.0, 30.0]  # its own
    assert list(m.loc[("gamma", "margin"), ["round", "labeled", "queried"]]) == [3.0, 54.0, 54.0]
    assert m.loc[("alpha", "margin")][["round", "labeled", "queried"]].isna().all()
    lines = t.to_markdown().splitlines()
    assert lines[0] == "| dataset | strategy | target (%) | round | labeled | queried |"
    assert lines[2] == "| alpha | cb | 72.00 | 2 | 20.0 ± 0.0 | 20.0 ± 0.0 |"
    assert lines[3] == "| alpha | margin | 72.00 | not reached | not reached | not reached |"
    assert "random's mean test accuracy (%) at its last round (alpha: 3, gamma: 3)" in t.title
    assert "no interpolation" in t.title


def test_labels_to_reach_a_fixed_target(agg):
    m = tables.reach_table(agg, target=0.60).mean
    assert m.loc[("alpha", "random"), "round"] == 2 and m.loc[("alpha", "cb"), "round"] == 1
    assert math.isnan(m.loc[("gamma", "random"), "round"])  # 0.52 at best
    assert set(m["target (%)"]) == {0.60}
    with pytest.raises(AnalysisError, match="baseline strategy 'entropy'"):
        tables.reach_table(agg, baseline="entropy")


# ------------------------------------------------------------------ figures
def test_figure_bands_follow_the_spread(agg, tmp_path):
    def band_top(result) -> float:
        (band,) = [c for c in result.figure.axes[0].collections if isinstance(c, PolyCollection)]
        return float(np.max(band.get_paths()[0].vertices[:, 1]))

    std = figures.accuracy_vs_round(agg, tmp_path / "std.png", dataset="alpha", strategy="random")
    assert band_top(std) == pytest.approx(100 * (0.72 + 0.02))
    ci = figures.accuracy_vs_round(agg, tmp_path / "ci.png", dataset="alpha", strategy="random", spread="ci95")
    assert band_top(ci) == pytest.approx(100 * (0.72 + T2 * 0.02 / S3), rel=1e-6)
    assert ci.figure.legends[0].get_title().get_text() == "mean ± 95% CI over n = 3 seeds"
    q = figures.accuracy_vs_queries(agg, tmp_path / "q.png", dataset="alpha", strategy="random", spread="ci95")
    assert band_top(q) == pytest.approx(100 * (0.72 + T2 * 0.02 / S3), rel=1e-6)
    with pytest.raises(AnalysisError, match="spread must be one of std, ci95"):
        figures.accuracy_vs_round(agg, tmp_path / "x.png", spread="sem")


# ------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("stats-results")
    rows = all_rows()
    for run_id in sorted({r["run_id"] for r in rows}):
        run = [r for r in rows if r["run_id"] == run_id]
        storage.write_run(dest, run_id, to_table(run), {})
    return dest


def test_report_with_ci95_paired_and_reach(results, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report.main([str(results), "--out", str(out), "--spread", "ci95"]) == 0
    printed = capsys.readouterr().out
    assert "\n".join(MAIN_CI) in printed
    md = (out / "report.md").read_text()
    assert "\n".join(MAIN_CI) in md and "Cells are mean ± the 95% confidence interval of the mean" in md
    assert md.count("shaded bands are ± the 95% confidence interval of the mean over seeds (Student t)") == 2
    for heading in ("## Area under the learning curve", "## Paired differences against random",
                    "## Labels needed to reach an accuracy"):
        assert heading in md
    assert "| cb | **+12.00 ± 2.48** | -1.00 ± 6.57 | 1 | 1 | 0 |" in md
    assert "| alpha | margin | 72.00 | not reached | not reached | not reached |" in md
    assert "| random | 62.00 ± 4.97 | 42.00 ± 4.97 | 52.00 |" in md  # AULC vs labeled images
    paired = pd.read_csv(out / "paired.csv")
    assert len(paired) == 2 * 2 * 2  # (cb, margin) x (alpha, gamma) x (accuracy at the round, AULC)
    row = paired[(paired.strategy == "cb") & (paired.dataset == "alpha") & (paired.quantity == "test_acc")].iloc[0]
    assert row["mean"] == pytest.approx(0.12) and row["outcome"] == "win" and row["budget_per_class"] == 1.0
    assert pd.read_csv(out / "aulc.csv").set_index("strategy").loc["random", "alpha ci95"] == pytest.approx(
        T2 * 0.02 / S3, rel=1e-6)
    reach = pd.read_csv(out / "reach.csv").set_index(["dataset", "strategy"])
    assert reach.loc[("alpha", "cb"), "labeled"] == 20.0 and math.isnan(reach.loc[("alpha", "margin"), "round"])


def test_report_baseline_and_target_flags(results, tmp_path, capsys):
    out = tmp_path / "rep"
    rep = report.build_report(results, out, baseline="margin", target_acc=0.6)
    assert "## Paired differences against margin" in rep.markdown
    assert rep.tables["paired/test_acc"].mean.loc["random", "alpha"] == pytest.approx(0.11)
    assert rep.tables["reach"].mean.loc[("alpha", "cb"), "round"] == 1
    # no random runs and no target: the sections say why they are empty
    no_random = report.build_report(results, tmp_path / "nr", filters={"strategy": ["cb", "margin"]})
    assert "No run of 'random' to pair with" in no_random.markdown
    assert "No run of 'random' to take the target from: `--target-acc` sets one." in no_random.markdown
    assert not (tmp_path / "nr" / "paired.csv").exists() and not (tmp_path / "nr" / "reach.csv").exists()
    # bad input: one line, exit 2, nothing written
    for argv, message in (
        (["--baseline", "entropy"], "no runs of the baseline strategy 'entropy'; the results hold cb, margin, random"),
        (["--target-acc", "150"], "argument --target-acc: a percentage in (0, 100], got 150"),
        (["--target-acc", "high"], "argument --target-acc: not a number: 'high'"),
        (["--spread", "sem"], "argument --spread: invalid choice: 'sem'"),
    ):
        bad = tmp_path / f"bad{len(argv[0])}{argv[1]}"
        try:
            code = report.main([str(results), "--out", str(bad), *argv])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not bad.exists()
