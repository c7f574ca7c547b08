"""analysis/: zero-shot baseline, labelled bands, one-time encoding, --skip-bad and ``raysvc runs``.

Every expected number is worked out by hand from ``RUNS`` below (two rounds per run).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # analysis/ lives beside raysvc/ and is not installed
    sys.path.insert(0, str(ROOT))

from ports import free_port  # noqa: E402

from analysis import figures, report, runs, tables  # noqa: E402
from analysis.load import (  # noqa: E402
    BadRunError,
    EmptySourceError,
    SchemaMismatchError,
    SkippedRun,
    load_results,
    load_runs,
)
from raysvc import storage  # noqa: E402
from raysvc.errors import RaysvcError, StorageError  # noqa: E402
from raysvc.records import READABLE_VERSIONS, SCHEMA_VERSION, to_table  # noqa: E402

NAN = float("nan")
CHECKSUM = "records.parquet does not match the checksum in its manifest (the file was changed or is corrupt)"

# (dataset, strategy, seed) -> (test_acc in rounds 1 and 2, zeroshot_acc, encode seconds in round 1)
RUNS = {
    ("alpha", "random", 0): ([0.50, 0.60], 0.30, 12.5),  # encoded alpha first
    ("alpha", "random", 1): ([0.52, 0.62], 0.32, 0.0),
    ("alpha", "random", 2): ([0.54, 0.64], 0.34, 0.0),
    ("alpha", "cbsq", 0): ([0.55, 0.70], 0.40, 0.0),
    ("alpha", "cbsq", 1): ([0.55, 0.72], 0.40, 2.5),  # encoded again elsewhere
    ("alpha", "cbsq", 2): ([0.55, 0.74], 0.40, 0.0),
    ("beta", "random", 0): ([0.40, 0.45], 0.50, 0.0),  # beta: every run hit the feature cache
    ("beta", "random", 1): ([0.42, 0.47], 0.60, 0.0),
    ("beta", "cbsq", 0): ([0.41, 0.50], 0.50, 0.0),
    ("beta", "cbsq", 1): ([0.43, 0.52], 0.60, 0.0),
}
# zero-shot over runs: alpha [.30 .32 .34 .40 .40 .40] -> mean .36, squares .0036+.0016+.0004+3*.0016 = .0104
ZS_ALPHA, ZS_ALPHA_STD = 0.36, math.sqrt(0.0104 / 5)
ZS_BETA, ZS_BETA_STD = 0.55, math.sqrt(0.01 / 3)  # [.5 .6 .5 .6]
SELECT_S, TRAIN_S = 1.0, 3.0  # per round: 8 s per run


def rows_for(dataset, strategy, seed, accs, zeroshot=0.3, encode=0.0, run_id=None, backbone="b1", rounds=None,
             version=SCHEMA_VERSION):
    run_id = run_id or f"{dataset}-{strategy}-s{seed}"
    rounds = rounds or list(range(1, len(accs) + 1))
    return [dict(
        run_id=run_id, dataset=dataset, strategy=strategy, learner="coop", backbone=backbone, student="",
        teacher="", seed=seed, budget=10, pool_size=100, n_classes=10, schema_version=version,
        round=r, n_labeled=10 * (i + 1), n_queried=10 * (i + 1), n_pseudo=0, pseudo_acc=NAN,
        test_acc=acc, zeroshot_acc=zeroshot, teacher_acc=NAN, select_seconds=SELECT_S, train_seconds=TRAIN_S,
        encode_seconds=encode if i == 0 else 0.0, test_acc_base=NAN, test_acc_novel=NAN, test_acc_hm=NAN,
    ) for i, (r, acc) in enumerate(zip(rounds, accs))]  # fmt: skip


def write(dest, rows, **manifest):
    return storage.write_run(dest, rows[0]["run_id"], to_table(rows), manifest)


def finished(i: int) -> str:
    return f"2025-01-{i + 1:02d}T10:00:00+00:00"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("zs-results")
    for i, ((dataset, strategy, seed), (accs, zs, enc)) in enumerate(RUNS.items()):
        write(dest, rows_for(dataset, strategy, seed, accs, zs, enc), finished_at=finished(i))
    return dest


@pytest.fixture(scope="module")
def agg(results) -> pd.DataFrame:
    return tables.aggregate(results)


# ------------------------------------------------------------ zero-shot rows
def test_zeroshot_baseline_over_runs_of_dataset_and_backbone(agg, results):
    base = tables.zeroshot_baseline(agg).set_index("dataset")
    assert base.loc["alpha", "mean"] == pytest.approx(ZS_ALPHA) and base.loc["alpha", "n_runs"] == 6
    assert base.loc["alpha", "std"] == pytest.approx(ZS_ALPHA_STD)  # pooled over random and cbsq runs
    assert base.loc["beta", "mean"] == pytest.approx(ZS_BETA) and base.loc["beta", "std"] == pytest.approx(ZS_BETA_STD)
    # the pooled aggregate agrees with the runs themselves
    per_run = load_runs(results).groupby(["dataset", "run_id"])["zeroshot_acc"].first().groupby("dataset")
    assert list(base["std"]) == pytest.approx(list(per_run.std()))


def test_main_table_has_a_zeroshot_row_never_bold(agg):
    t = tables.paper_tables(agg)["main"]
    assert list(t.mean.index) == ["cbsq", "random"]  # strategies only: the baseline is apart
    assert t.baseline_mean.loc["zero-shot", "alpha"] == pytest.approx(ZS_ALPHA)
    assert t.baseline_spread.loc["zero-shot", "beta"] == pytest.approx(ZS_BETA_STD)
    assert t.baseline_mean.loc["zero-shot", "Average"] == pytest.approx((ZS_ALPHA + ZS_BETA) / 2)
    # 55.00 beats every strategy on beta, yet only strategies are compared
    assert t.to_markdown().splitlines() == [
        "| strategy | alpha | beta | Average |",
        "|:---|---:|---:|---:|",
        "| zero-shot | 36.00 ± 4.56 | 55.00 ± 5.77 | 45.50 |",
        "| cbsq | **72.00 ± 2.00** | **51.00 ± 1.41** | **61.50** |",
        "| random | 62.00 ± 2.00 | 46.00 ± 1.41 | 54.00 |",
    ]
    assert "zero-shot" in t.title and "n = 4–6 per dataset" in t.title
    frame = t.to_frame()
    assert list(frame["strategy"]) == ["zero-shot", "cbsq", "random"]
    assert list(frame.columns) == ["strategy", "alpha", "alpha std", "beta", "beta std", "Average"]
    assert frame.loc[0, "alpha std"] == pytest.approx(ZS_ALPHA_STD)
    assert frame.loc[0, "Average"] == pytest.approx((ZS_ALPHA + ZS_BETA) / 2)
    # opt-in outside the paper tables, and never for the zero-shot metric itself
    assert tables.dataset_table(agg).baseline_mean is None
    assert tables.paper_tables(agg, metric="zeroshot_acc")["main"].baseline_mean is None
    assert "zero-shot" not in tables.paper_tables(agg, zeroshot=False)["main"].to_markdown()


def test_round_table_zeroshot_row_per_backbone(agg, tmp_path):
    t = tables.paper_tables(agg)["rounds/beta"]
    assert t.to_markdown().splitlines()[2] == "| zero-shot | 55.00 ± 5.77 | 55.00 ± 5.77 |"
    # two backbones: one zero-shot row each, labelled by backbone
    write(tmp_path, rows_for("alpha", "random", 0, [0.5, 0.6], zeroshot=0.2, backbone="b1"))
    write(tmp_path, rows_for("alpha", "random", 0, [0.6, 0.7], zeroshot=0.5, backbone="b2", run_id="b2-run"))
    two = tables.paper_tables(tmp_path)["rounds/alpha"]
    lines = two.to_markdown().splitlines()
    assert lines[0] == "| strategy | backbone | 1 | 2 |"
    assert lines[2:4] == ["| zero-shot | b1 | 20.00 | 20.00 |", "| zero-shot | b2 | 50.00 | 50.00 |"]


# ------------------------------------------------------------------ figures
def _zeroshot_collections(ax):
    return [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label().startswith("zero-shot")]


def _is_dashed(collection) -> bool:
    (offset, dashes), *_ = collection.get_linestyle()
    return dashes is not None and len(dashes) > 0


def test_accuracy_figures_draw_a_dashed_zeroshot_line(agg, tmp_path):
    res = figures.accuracy_vs_round(agg, tmp_path / "round.png")
    by_title = {ax.get_title(): ax for ax in res.figure.axes}
    for title, y in (("alpha", ZS_ALPHA), ("beta", ZS_BETA), ("Average over 2 datasets", (ZS_ALPHA + ZS_BETA) / 2)):
        ax = by_title[title]
        (zs,) = _zeroshot_collections(ax)
        assert _is_dashed(zs)
        (segment,) = zs.get_segments()
        assert list(segment[:, 1]) == pytest.approx([100 * y, 100 * y]) and list(segment[:, 0]) == [1.0, 2.0]
        assert len(ax.get_lines()) == 2  # still one Line2D per curve
        assert all(line.get_linestyle() == "-" for line in ax.get_lines())
    q = figures.accuracy_vs_queries(agg, tmp_path / "queries.png")
    (zs,) = _zeroshot_collections(q.figure.axes[0])
    assert _is_dashed(zs) and list(zs.get_segments()[0][:, 0]) == [10.0, 20.0]
    assert list(zs.get_segments()[0][:, 1]) == pytest.approx([100 * ZS_ALPHA] * 2)
    assert "zero-shot" in [t.get_text() for t in q.figure.legends[0].get_texts()]
    none = figures.accuracy_vs_round(agg, tmp_path / "zs.png", metric="zeroshot_acc")
    assert not any(_zeroshot_collections(ax) for ax in none.figure.axes)


def _legend(result):
    (legend,) = result.figure.legends
    return legend.get_title().get_text(), [t.get_text() for t in legend.get_texts()]


def test_band_legend_says_mean_std_over_n_seeds(agg, tmp_path):
    # alpha alone: every curve averages 3 seeds -> n in the legend title
    title, texts = _legend(figures.accuracy_vs_round(agg, tmp_path / "a.png", dataset="alpha"))
    assert title == "mean ± std over n = 3 seeds" and texts == ["cbsq", "random", "zero-shot"]
    # alpha (3 seeds) and beta (2 seeds): n per curve
    title, texts = _legend(figures.accuracy_vs_queries(agg, tmp_path / "b.png"))
    assert title == "mean ± std over n seeds (n per curve)"
    assert texts == ["cbsq (n = 2–3)", "random (n = 2–3)", "zero-shot"]


def test_single_seed_curve_is_labelled_without_band(results, tmp_path):
    df = load_runs(results)
    df = df[~((df.strategy == "cbsq") & (df.seed > 0))]  # alpha cbsq: seed 0 only
    res = figures.accuracy_vs_round(tables.aggregate(df), tmp_path / "one.png", dataset="alpha")
    title, texts = _legend(res)
    assert title == "mean ± std over n seeds (n per curve)"
    assert texts == ["cbsq (n = 1, no band)", "random (n = 3)", "zero-shot"]
    bands = [c for c in res.figure.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # random's band only
    all_one = figures.accuracy_vs_round(tables.aggregate(df[df.seed == 0]), tmp_path / "s0.png", dataset="alpha")
    assert _legend(all_one)[0] == "one seed per curve (n = 1): no std band"


# ----------------------------------------------------------------- encoding
def test_encoding_per_dataset_and_backbone_and_timing_without_it(results, tmp_path):
    enc = tables.encoding_table(results)
    assert list(enc.mean.index) == [("alpha", "b1"), ("beta", "b1")]
    assert enc.mean.loc[("alpha", "b1"), "encode s (one-time)"] == pytest.approx(15.0)  # 12.5 + 2.5: summed
    assert enc.mean.loc[("beta", "b1"), "encode s (one-time)"] == 0.0
    assert list(enc.mean["runs"]) == [6, 4] and list(enc.mean["runs that encoded"]) == [2, 0]
    assert "one-time" in enc.title.lower()
    assert enc.to_markdown().splitlines()[2] == "| alpha | b1 | 15.0 | 6 | 2 |"
    # two backbones on one dataset are two encodings
    write(tmp_path, rows_for("alpha", "random", 0, [0.5, 0.6], encode=10.0, backbone="b1"))
    write(tmp_path, rows_for("alpha", "cbsq", 0, [0.5, 0.6], encode=0.0, backbone="b1"))
    write(tmp_path, rows_for("alpha", "random", 0, [0.5, 0.6], encode=7.0, backbone="b2", run_id="b2-s0"))
    write(tmp_path, rows_for("alpha", "random", 1, [0.5, 0.6], encode=0.0, backbone="b2", run_id="b2-s1"))
    two = tables.encoding_table(tmp_path).mean
    assert two["encode s (one-time)"].to_dict() == {("alpha", "b1"): 10.0, ("alpha", "b2"): 7.0}

    t = tables.timing_table(results)
    assert list(t.mean.columns) == ["select s/round", "train s/round", "total s/run"]
    random = t.mean.loc[("alpha", "random")]
    assert random["total s/run"] == pytest.approx(2 * (SELECT_S + TRAIN_S))  # no encode seconds in it
    assert t.spread.loc[("alpha", "random"), "total s/run"] == pytest.approx(0.0)
    old = tables.timing_table(results, encode=True).mean.loc[("alpha", "random")]
    assert old["encode s/run"] == pytest.approx(12.5 / 3) and old["total s/run"] == pytest.approx(8 + 12.5 / 3)


def test_report_has_zeroshot_encoding_and_band_captions(results, tmp_path):
    rep = report.build_report(results, tmp_path / "r")
    md = rep.markdown
    assert "| zero-shot | 36.00 ± 4.56 | 55.00 ± 5.77 | 45.50 |" in md
    assert "## One-time feature encoding" in md and "| alpha | b1 | 15.0 | 6 | 2 |" in md
    timing = md[md.index("## Seconds per stage"):md.index("## One-time feature encoding")]
    assert "encode s/run" not in timing
    assert "| alpha | random | 1.000 ± 0.000 | 3.000 ± 0.000 | 8.000 ± 0.000 |" in timing
    assert md.count("shaded bands are ± one standard deviation over seeds") == 2
    assert md.count("dashed line is the zero-shot accuracy") == 2
    main_csv = pd.read_csv(tmp_path / "r" / "main.csv")
    assert main_csv.loc[0, "strategy"] == "zero-shot" and main_csv.loc[0, "alpha"] == pytest.approx(ZS_ALPHA)
    assert "encode s/run" not in pd.read_csv(tmp_path / "r" / "timing.csv").columns
    assert rep.skipped == [] and "## Skipped runs" not in md
    printed = str(rep)  # what the CLI and `make demo` print: main table, then each dataset by round
    assert printed.index(rep.main.title) < printed.index(rep.tables["rounds/alpha"].title)
    assert rep.tables["rounds/beta"].to_markdown() in printed and printed.endswith(f"{rep.n_runs} runs)")


# ----------------------------------------------------------- bad runs, --skip-bad
def _good(dest) -> None:
    for seed in (0, 1, 2):
        write(dest, rows_for("alpha", "random", seed, [0.5 + seed / 100, 0.6]))


def _corrupt(dest, kind: str) -> None:
    write(dest, rows_for("alpha", "cbsq", 0, [0.5, 0.7], run_id="bad"))
    folder = Path(dest) / "runs" / "bad"
    manifest = folder / "manifest.json"
    records = folder / json.loads(manifest.read_text())["files"]["records.parquet"]["path"]
    if kind == "truncated":
        records.write_bytes(records.read_bytes()[:200])
    elif kind == "checksum":
        m = json.loads(manifest.read_text())
        m["files"]["records.parquet"]["sha256"] = "0" * 64
        manifest.write_text(json.dumps(m))
    elif kind == "json":
        manifest.write_text(manifest.read_text()[:40])
    elif kind == "not-object":
        manifest.write_text("[1, 2]")
    elif kind == "missing":
        records.unlink()
    elif kind == "garbage":  # no checksum to compare with: the bytes are read as Parquet and fail
        m = json.loads(manifest.read_text())
        del m["files"]["records.parquet"]["sha256"]
        manifest.write_text(json.dumps(m))
        records.write_bytes(b"not parquet at all")


REASONS = {
    "truncated": CHECKSUM,
    "checksum": CHECKSUM,
    "json": "manifest.json is not valid JSON: it is truncated or was edited (",
    "not-object": "manifest.json is not a JSON object (it holds a list)",
    "missing": "records.parquet is missing (its manifest.json is there)",
    "garbage": "records.parquet is not a readable Parquet file (",
}


@pytest.mark.parametrize("kind", list(REASONS))
def test_bad_run_is_named_in_plain_words_or_skipped(tmp_path, kind):
    _good(tmp_path)
    _corrupt(tmp_path, kind)
    with pytest.raises(BadRunError) as e:
        load_runs(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"run 'bad' in {tmp_path} cannot be read: {REASONS[kind]}")
    assert msg.endswith(f"rerun it, delete {tmp_path}/runs/bad, or pass --skip-bad to go on without it")
    assert "kept changing" not in msg and "\n" not in msg
    assert isinstance(e.value, StorageError) and isinstance(e.value, RaysvcError)
    assert [b.run_id for b in e.value.bad] == ["bad"]

    loaded = load_results(tmp_path, skip_bad=True)
    assert sorted(loaded.records["run_id"].unique()) == ["alpha-random-s0", "alpha-random-s1", "alpha-random-s2"]
    (skipped,) = loaded.skipped
    assert skipped.run_id == "bad" and skipped.reason.startswith(REASONS[kind])
    assert str(skipped).startswith(f"run 'bad': {REASONS[kind]}")


def test_several_bad_runs_are_named_together(tmp_path):
    _good(tmp_path)
    _corrupt(tmp_path, "checksum")
    write(tmp_path, rows_for("alpha", "cbsq", 1, [0.5, 0.7], run_id="bad2"))
    folder = tmp_path / "runs" / "bad2"
    (folder / json.loads((folder / "manifest.json").read_text())["files"]["records.parquet"]["path"]).unlink()
    with pytest.raises(BadRunError) as e:
        load_runs(tmp_path)
    assert str(e.value) == (
        f"2 of 5 runs in {tmp_path} cannot be read: 'bad': {CHECKSUM}; 'bad2': records.parquet is missing (its "
        f"manifest.json is there); rerun them, delete their folders under {tmp_path}/runs/, or pass --skip-bad "
        "to go on without them"
    )


def test_skip_bad_also_leaves_out_runs_of_another_schema(tmp_path):
    _good(tmp_path)
    write(tmp_path, rows_for("alpha", "cbsq", 0, [0.5, 0.7], run_id="new-schema", version=SCHEMA_VERSION + 1))
    table = to_table(rows_for("alpha", "cbsq", 1, [0.5, 0.7], run_id="short")).drop_columns(["n_pseudo"])
    storage.write_run(tmp_path, "short", table, {})
    with pytest.raises(SchemaMismatchError, match="--skip-bad"):
        load_runs(tmp_path)
    loaded = load_results(tmp_path, skip_bad=True)
    assert loaded.records["run_id"].nunique() == 3
    assert loaded.skipped == [
        SkippedRun("new-schema", f"written with record schema version {SCHEMA_VERSION + 1} "
                                 f"(this raysvc reads versions {', '.join(map(str, READABLE_VERSIONS))})"),
        SkippedRun("short", "does not match the record schema (missing n_pseudo)"),
    ]


def test_skip_bad_with_nothing_readable_is_an_empty_source(tmp_path):
    _corrupt(tmp_path, "missing")
    with pytest.raises(EmptySourceError, match=r"no readable runs .* all 1 were skipped: 'bad': records.parquet is"):
        load_results(tmp_path, skip_bad=True)


def test_store_failures_are_not_skipped(s3_gateway, monkeypatch):
    """An unreachable store is not a bad run: --skip-bad must not hide it."""
    for k, v in s3_gateway.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(StorageError, match="still unavailable") as e:
        load_results(f"{s3_gateway.dest}/anything", skip_bad=True, retry_seconds=1)
    assert not isinstance(e.value, BadRunError)


def test_report_skip_bad_reports_the_rest_and_names_the_skipped(tmp_path, capsys):
    _good(tmp_path / "src")
    _corrupt(tmp_path / "src", "truncated")
    src, out = str(tmp_path / "src"), tmp_path / "rep"
    assert report.main([src, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"raysvc report: error: run 'bad' in {src} cannot be read: {CHECKSUM}; rerun it, delete {src}/runs/bad, "
        "or pass --skip-bad to go on without it\n"
    )
    assert not (out / "report.md").exists()

    assert report.main([src, "--out", str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"raysvc report: skipped run 'bad': {CHECKSUM}\n"
    assert "files, 3 runs, 1 skipped)" in captured.out
    md = (out / "report.md").read_text()
    assert "— 3 runs," in md and "1 run could not be analysed and was left out" in md
    assert "## Skipped runs" in md and f"| `bad` | {CHECKSUM} |" in md
    assert "cbsq" not in md.split("## Skipped runs")[0]  # the bad run's strategy is nowhere in the tables
    assert set(pd.read_csv(out / "records.csv")["run_id"]) == {"alpha-random-s0", "alpha-random-s1", "alpha-random-s2"}


def test_raysvc_cli_report_has_skip_bad(tmp_path, capsys):
    from raysvc import cli

    _good(tmp_path / "src")
    _corrupt(tmp_path / "src", "missing")
    assert cli.main(["report", str(tmp_path / "src"), "--out", str(tmp_path / "r"), "--skip-bad"]) == 0
    assert "skipped run 'bad': records.parquet is missing" in capsys.readouterr().err


# --------------------------------------------------------------------- runs
def test_runs_table_lists_every_run(results, tmp_path):
    df = runs.runs_table(results)
    assert tuple(df.columns) == runs.COLUMNS and len(df) == len(RUNS)
    assert list(df["run_id"][:4]) == ["alpha-cbsq-s0", "alpha-cbsq-s1", "alpha-cbsq-s2", "alpha-random-s0"]
    assert list(df["dataset"]) == ["alpha"] * 6 + ["beta"] * 4
    row = df.set_index("run_id").loc["alpha-random-s1"]
    assert row["rounds"] == 2 and row["test_acc"] == pytest.approx(0.62) and row["n_queried"] == 20
    assert row["finished_at"] == finished(1) and row["seed"] == 1 and row["backbone"] == "b1"
    assert df.attrs["skipped"] == []
    # rounds counts the rounds recorded (an initial round 0 included); the last round gives the numbers
    write(tmp_path, rows_for("gamma", "random", 0, [0.3, 0.4, 0.5], rounds=[0, 1, 2], run_id="zz"))
    # sorted by configuration and seed, not by run id
    write(tmp_path, rows_for("gamma", "random", 1, [0.3, 0.4], run_id="aa"))
    write(tmp_path, rows_for("delta", "cbsq", 0, [0.3, 0.4], run_id="mm"))
    listed = runs.runs_table(tmp_path)
    assert list(listed["run_id"]) == ["mm", "zz", "aa"]
    one = listed.iloc[1]
    assert one["rounds"] == 3 and one["test_acc"] == pytest.approx(0.5) and one["n_queried"] == 30


def test_format_runs(results):
    text = runs.format_runs(runs.runs_table(results)).splitlines()
    assert text[0].split() == ["run_id", "dataset", "strategy", "learner", "backbone", "budget", "seed", "rounds",
                               "test", "acc", "(%)", "queried", "finished", "at"]  # no student: none has one
    assert set(text[1]) == {"-", " "}
    line = next(t for t in text if t.startswith("alpha-random-s1 "))
    assert line.split() == ["alpha-random-s1", "alpha", "random", "coop", "b1", "10", "1", "2", "62.00", "20",
                            finished(1)]
    assert len({len(t) for t in text[:-1]}) <= 2 and text[-1] == f"{len(RUNS)} runs"


def test_runs_main_local(results, tmp_path, capsys):
    assert runs.main([str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == len(RUNS) + 3 and "beta-cbsq-s1" in out
    assert runs.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("raysvc runs: error: no runs found")


def test_runs_on_s3_with_a_corrupt_run(s3_gateway, monkeypatch, capsys):
    import boto3
    from botocore.config import Config

    for k, v in s3_gateway.env.items():
        monkeypatch.setenv(k, v)
    prefix = f"runs-listing-{np.random.default_rng().integers(1 << 30)}"
    dest = f"{s3_gateway.dest}/{prefix}"
    for seed in (0, 1):
        write(dest, rows_for("alpha", "random", seed, [0.5, 0.6 + seed / 100]), finished_at=finished(seed))
    write(dest, rows_for("alpha", "cbsq", 0, [0.5, 0.7], run_id="bad"))
    client = boto3.client(
        "s3", endpoint_url=s3_gateway.endpoint_url, aws_access_key_id=s3_gateway.access_key,
        aws_secret_access_key=s3_gateway.secret_key, region_name="us-east-1",
        config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                      s3={"addressing_style": "path"}),
    )  # fmt: skip
    manifest = json.loads(client.get_object(Bucket=s3_gateway.bucket, Key=f"{prefix}/runs/bad/manifest.json")["Body"].read())
    key = f"{prefix}/runs/bad/{manifest['files']['records.parquet']['path']}"
    body = client.get_object(Bucket=s3_gateway.bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_gateway.bucket, Key=key, Body=body[:150])

    assert runs.main([dest]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raysvc runs: error: run 'bad' in {dest} cannot be read: records.parquet "
                          "does not match the checksum in its manifest")
    assert f"delete {dest}/runs/bad, or pass --skip-bad" in err and err.count("\n") == 1

    assert runs.main([dest, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("raysvc runs: skipped run 'bad': records.parquet does not match")
    assert captured.err.count("\n") == 1
    lines = captured.out.splitlines()
    assert [ln.split()[0] for ln in lines[2:-1]] == ["alpha-random-s0", "alpha-random-s1"]
    assert lines[3].split()[-3:] == ["61.00", "20", finished(1)] and lines[-1] == "2 runs"
    df = runs.runs_table(dest, skip_bad=True)
    assert [s.run_id for s in df.attrs["skipped"]] == ["bad"]
