"""``raysvc report SOURCE --out DIR``: every table and figure of a results destination.

:func:`build_report` loads the runs under ``SOURCE`` (local path, ``file://`` or
``s3://``; see :mod:`analysis.load`), and writes to ``DIR``:

``report.md``             runs overview, main table, AULC, paired differences against a
                          baseline, labels to reach an accuracy, by-round tables, queries,
                          timing, one-time encoding, figures, skipped runs (``--skip-bad``)
``main.csv``              the main table: strategies x datasets at the chosen round (+ Average)
``aulc.csv``              AULC vs labeled images: strategies x datasets (+ Average)
``aulc_queries.csv``      AULC vs oracle queries: strategies x datasets (+ Average)
``paired.csv``            per configuration, dataset and quantity (accuracy at the round, AULC):
                          the paired difference against the baseline, its 95% CI and outcome
``reach.csv``             labeled images and oracle queries to reach the target accuracy
``rounds_<dataset>.csv``  strategies x rounds per dataset
``queries.csv``           oracle queries vs labeled-set size, saved, pseudo-label accuracy
``timing.csv``            seconds per stage (select, train; the one-time encoding is in report.md)
``aggregate.csv``         mean/std/ci95/n_seeds of every metric per configuration and round
``records.csv``           the raw rows that were analysed
``accuracy_vs_round.png``, ``accuracy_vs_queries.png``, ``queries_saved.png``

CSV numbers are unscaled (accuracies as fractions); markdown prints accuracies in
percent. ``--spread std|ci95`` chooses what every table's ± and every figure's band is
(one std over seeds, or the 95% CI of the mean; the paired differences always show
their 95% CI). ``--baseline`` names the strategy the paired differences and the default
target accuracy refer to (default ``random``, left out with a note when there is no
such run); ``--target-acc`` sets one target accuracy (percent) for every dataset instead
of the baseline's final accuracy. The definitions are in :mod:`analysis.tables`. The
main and by-round tables start with a ``zero-shot`` row (the backbone with no labels).
A run that cannot be read stops the report with an error naming it and what is wrong;
``--skip-bad`` reports the other runs instead and names each skipped run on stderr and
in report.md. Clusters (t-SNE/ARI) and GradFAM need features and a backbone, not
results: see :mod:`analysis.clusters` and :mod:`analysis.gradfam`. ``--analysis NAME``
(repeatable) appends a paper figure's section, its PNGs and CSVs (:mod:`analysis.sections`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path

import pandas as pd

from analysis import figures as figs
from analysis.load import SkippedRun, load_results
from analysis.sections import ANALYSES, Section
from analysis.tables import (
    BASELINE,
    CONFIG_KEYS,
    KEY_HEADERS,
    SPREADS,
    Table,
    aggregate,
    aulc_table,
    check_spread,
    encoding_table,
    key_text,
    markdown_table,
    paired_differences,
    paired_table,
    paper_tables,
    queries_table,
    reach_table,
    timing_table,
    with_derived,
)
from raysvc import storage
from raysvc.entry import Parser, entry_point
from raysvc.errors import AnalysisError
from raysvc.records import SCHEMA_VERSION

ACCURACY_METRICS = ("test_acc", "zeroshot_acc", "teacher_acc", "pseudo_acc")
FILTER_KEYS = ("dataset", "strategy", "learner", "backbone")
BANDS = {
    "std": "± one standard deviation over seeds",
    "ci95": "± the 95% confidence interval of the mean over seeds (Student t)",
}
CELLS = {
    "std": "Cells are mean ± std over seeds (sample std, ddof=1; the ± is left out for a single seed)",
    "ci95": "Cells are mean ± the 95% confidence interval of the mean over seeds (Student t: t_{0.975, n-1} · "
            "std / √n, std with ddof=1; the ± is left out for a single seed)",
}  # fmt: skip


def figure_caption(spread: str = "std", average: bool = True) -> str:
    """The caption under an accuracy figure: what lines, bands and the dashed line are."""
    parts = [f"Lines are means over seeds; shaded bands are {BANDS[spread]} (n seeds as the legend says; no band "
             "for a single seed)."]
    if average:
        parts.append("The Average panel shows the mean of the dataset means, without a band.")
    parts.append("The dashed line is the zero-shot accuracy (the backbone with no labels).")
    return " ".join(parts)


@dataclasses.dataclass
class Report:
    out_dir: Path
    markdown: str
    main: Table
    # "main", "aulc", "aulc_queries", "paired/<quantity>" and "reach" (with a baseline or a target),
    # "rounds/<dataset>", "queries" (when any pseudo-label), "timing", "encoding"
    tables: dict[str, Table]
    figures: dict[str, figs.FigureResult]  # "accuracy_vs_round", "accuracy_vs_queries", "queries_saved"
    files: list[Path]
    n_runs: int
    skipped: list[SkippedRun] = dataclasses.field(default_factory=list)  # runs left out by skip_bad
    run_ids: tuple[str, ...] = ()  # the runs reported (after filters and skip_bad)

    def __str__(self) -> str:
        """What the CLI prints: the main table, accuracy by round per dataset and the oracle
        queries (where a strategy pseudo-labels), then where the report went."""
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        shown = [self.main] + [t for name, t in self.tables.items() if name.startswith("rounds/") or name == "queries"]
        return (
            "".join(f"{t.title}\n\n{t.to_markdown()}\n\n" for t in shown)
            + f"wrote {self.out_dir / 'report.md'} ({len(self.files)} files, {self.n_runs} runs{skipped})"
        )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


def _filter_records(df: pd.DataFrame, filters: dict) -> pd.DataFrame:
    for key, values in filters.items():
        if values:
            values = [values] if isinstance(values, str) else list(values)
            df = df[df[key].isin(values)]
    if df.empty:
        shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v)
        raise AnalysisError(f"no runs match {shown}")
    return df


def runs_overview(df: pd.DataFrame) -> str:
    """Markdown: one row per configuration with its seeds and rounds."""
    rows = []
    for key, part in with_derived(df).groupby(list(CONFIG_KEYS), sort=True, dropna=False):
        seeds = sorted(set(part["seed"].tolist()))
        rounds = part.groupby("run_id")["round"].max()
        span = str(rounds.min()) if rounds.min() == rounds.max() else f"{rounds.min()}-{rounds.max()}"
        labels = (key_text(k, v) if str(v) else "-" for k, v in zip(CONFIG_KEYS, key))
        rows.append([*labels, str(len(seeds)), ", ".join(map(str, seeds)), span])
    header = [KEY_HEADERS.get(k, k) for k in CONFIG_KEYS]
    return markdown_table([*header, "runs", "seeds", "rounds"], rows, n_left=len(CONFIG_KEYS))


def _curve_sections(tables: dict, baseline: str, has_baseline: bool, paired, no_reach: str) -> list[str]:
    """report.md's AULC, paired-difference and reach sections (or a line saying why one is missing)."""
    lines = [
        "## Area under the learning curve",
        "",
        tables["aulc"].title + ". Per run, the area under accuracy vs labeled images (trapezoid rule over its "
        "rounds) divided by the run's range of labeled images: the mean accuracy over the labels it spent, so a "
        "constant accuracy a gives a. The zero-shot row is such a constant curve. The Average is over datasets, "
        "only for rows present in all of them.",
        "",
        tables["aulc"].to_markdown(),
        "",
        tables["aulc_queries"].title + ": the same against oracle queries, each run over the queries it spent "
        "(selective querying spends fewer, so its range is shorter).",
        "",
        tables["aulc_queries"].to_markdown(),
        "",
        f"## Paired differences against {baseline}",
        "",
    ]
    if not has_baseline:
        lines += [f"No run of {baseline!r} to pair with (`--baseline` names another strategy).", ""]
    elif paired.empty:
        lines += [f"No configuration shares a dataset, learner, backbone, student, budget and seed with {baseline}.",
                  ""]
    for key, table in tables.items():
        if key.startswith("paired/"):
            lines += [table.title + ".", "", table.to_markdown(), ""]
    lines += ["## Labels needed to reach an accuracy", ""]
    if "reach" in tables:
        lines += [tables["reach"].title + ".", "", tables["reach"].to_markdown(), ""]
    else:
        lines += [no_reach, ""]
    return lines


def build_report(
    source,
    out_dir,
    *,
    metric: str = "test_acc",
    at_round: int | None = None,
    filters: dict | None = None,
    retry_seconds: float | None = None,
    skip_bad: bool = False,
    spread: str = "std",
    baseline: str | None = None,
    target_acc: float | None = None,
) -> Report:
    """Write report.md, CSVs and PNGs for the runs under ``source`` into ``out_dir``.

    ``metric`` is the accuracy the main and by-round tables and the accuracy figures
    show; ``at_round`` the main table's round (default each dataset's last);
    ``filters`` maps dataset/strategy/learner/backbone to a value or list to keep.
    ``skip_bad`` leaves out runs that cannot be read or do not match the record schema
    (see :func:`analysis.load.load_results`) and lists them in ``Report.skipped`` and
    report.md; without it such a run raises an error naming it. ``spread`` (``std`` or
    ``ci95``) is every table's ± and every figure's band. ``baseline`` is the strategy the
    paired differences and the default target refer to (None: ``random``, and the
    sections say so when there is no such run; a named baseline without runs is an
    error); ``target_acc`` (a fraction) one target accuracy for every dataset.
    """
    if metric not in ACCURACY_METRICS:
        raise AnalysisError(f"metric must be one of {', '.join(ACCURACY_METRICS)}, got {metric!r}")
    check_spread(spread)
    if target_acc is not None and not 0 < target_acc <= 1:
        raise AnalysisError(f"the target accuracy is a fraction in (0, 1], got {target_acc!r}")
    name = "a DataFrame" if isinstance(source, pd.DataFrame) else os.fspath(source)
    loaded = load_results(source, skip_bad=skip_bad, retry_seconds=retry_seconds)
    skipped = loaded.skipped
    df = _filter_records(loaded.records, filters or {})
    if baseline is not None and baseline not in set(df["strategy"]):
        raise AnalysisError(
            f"no runs of the baseline strategy {baseline!r}; the results hold {', '.join(sorted(set(df['strategy'])))}"
        )
    baseline = baseline or BASELINE
    has_baseline = baseline in set(df["strategy"])
    agg = aggregate(df)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"cannot create report folder {out}: {e.strerror or e}") from None
    files: list[Path] = []

    def csv(frame: pd.DataFrame, fname: str) -> None:
        path = out / fname
        frame.to_csv(path, index=False)
        files.append(path)

    tables = paper_tables(agg, metric, at_round, spread=spread)
    tables["aulc"] = aulc_table(df, "n_labeled", metric, at_round, spread=spread)
    tables["aulc_queries"] = aulc_table(df, "n_queried", metric, at_round, spread=spread)
    paired = paired_differences(df, baseline, metric, at_round) if has_baseline else None
    if paired is not None and not paired.empty:
        for quantity in (metric, "aulc"):
            if (paired["quantity"] == quantity).any():
                tables[f"paired/{quantity}"] = paired_table(paired, quantity, metric)
    no_reach = f"No run of {baseline!r} to take the target from: `--target-acc` sets one."
    if has_baseline or target_acc is not None:
        try:
            tables["reach"] = reach_table(agg, metric, target_acc, baseline, at_round, spread)
        except AnalysisError as e:  # the baseline lacks the chosen round: the report says so and goes on
            no_reach = f"No target accuracy: {e}."
    if (agg["n_pseudo_mean"].fillna(0) > 0).any():
        tables["queries"] = queries_table(agg, only_selective=True, spread=spread)
    tables["timing"] = timing_table(df, spread=spread)
    tables["encoding"] = encoding_table(df)

    csv(df, "records.csv")
    csv(agg, "aggregate.csv")
    csv(tables["main"].to_frame(), "main.csv")
    csv(tables["aulc"].to_frame(), "aulc.csv")
    csv(tables["aulc_queries"].to_frame(), "aulc_queries.csv")
    if paired is not None:
        csv(paired, "paired.csv")
    if "reach" in tables:
        csv(tables["reach"].to_frame(), "reach.csv")
    for key, table in tables.items():
        if key.startswith("rounds/"):
            csv(table.to_frame(), f"rounds_{_safe(key.removeprefix('rounds/'))}.csv")
    if "queries" in tables:
        csv(tables["queries"].to_frame(), "queries.csv")
    csv(tables["timing"].to_frame(), "timing.csv")

    figures = {
        "accuracy_vs_round": figs.accuracy_vs_round(agg, out / "accuracy_vs_round.png", metric, spread=spread),
        "accuracy_vs_queries": figs.accuracy_vs_queries(agg, out / "accuracy_vs_queries.png", metric, spread=spread),
        "queries_saved": figs.queries_saved(agg, out / "queries_saved.png", spread=spread),
    }
    files += [f.path for f in figures.values()]

    n_runs = df["run_id"].nunique()
    skipped_note = (
        f" {len(skipped)} run{'s' if len(skipped) != 1 else ''} could not be analysed and "
        f"{'were' if len(skipped) != 1 else 'was'} left out (see [Skipped runs](#skipped-runs))."
        if skipped else ""
    )
    lines = [
        "# Active-learning results",
        "",
        f"Source: `{name}` — {n_runs} runs, "
        f"{df['dataset'].nunique()} datasets, {df['strategy'].nunique()} strategies, record schema "
        f"version {SCHEMA_VERSION}. {CELLS[spread]}; the best value of each column is **bold**. Accuracies in "
        "percent. A budget is given per class (labels per class per round, budget / number of classes), so "
        "one per class on every dataset is one configuration." + skipped_note,
        "",
        "## Runs",
        "",
        runs_overview(df),
        "",
        "## Main table",
        "",
        tables["main"].title + ". The Average is over datasets, only for rows present in all of them."
        + (" The zero-shot row is a baseline and is never bold."
           if tables["main"].baseline_mean is not None else ""),
        "",
        tables["main"].to_markdown(),
        "",
        "![accuracy by round](accuracy_vs_round.png)",
        "",
        figure_caption(spread),
        "",
        *_curve_sections(tables, baseline, has_baseline, paired, no_reach),
    ]
    for key, table in tables.items():
        if key.startswith("rounds/"):
            lines += [f"## {key.removeprefix('rounds/')} by round", "", table.title, "", table.to_markdown(), ""]
    lines += ["## Oracle queries and selective querying", ""]
    if "queries" in tables:
        lines += [
            tables["queries"].title + ": labeled = oracle + pseudo-labeled images, saved = labeled − queried, "
            "pseudo-label accuracy over all pseudo-labels so far. Only configurations with pseudo-labels.",
            "",
            tables["queries"].to_markdown(),
            "",
        ]
    else:
        lines += ["No run used selective querying (no pseudo-labels): every label was an oracle query.", ""]
    lines += [
        "![accuracy vs oracle queries](accuracy_vs_queries.png)",
        "",
        figure_caption(spread, average=False),
        "",
        "![queries saved](queries_saved.png)",
        "",
        "## Seconds per stage",
        "",
        tables["timing"].title + ". Select and train seconds per round, and their total per run (select + train "
        "over all rounds). The feature encoding is a one-time cost per dataset and backbone, not per strategy: "
        "see below.",
        "",
        tables["timing"].to_markdown(),
        "",
        "## One-time feature encoding",
        "",
        tables["encoding"].title + ". Each dataset and backbone is encoded once and the features are shared: "
        "the run that encoded records the seconds in its first round, every other run hits the cache and "
        "records 0. The sum is the encoding work actually done (0 when every run found the features cached).",
        "",
        tables["encoding"].to_markdown(),
        "",
    ]
    if skipped:
        lines += [
            "## Skipped runs",
            "",
            f"Left out by `--skip-bad`: {len(skipped)} run{'s' if len(skipped) != 1 else ''} that could not be "
            "read or do not match the record schema. Rerun them, or delete their folders under "
            f"`{storage.runs_location(name)}/`.",
            "",
            markdown_table(["run", "reason"], [[f"`{s.run_id}`", s.reason] for s in skipped], n_left=2),
            "",
        ]
    markdown = "\n".join(lines)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    files.insert(0, out / "report.md")
    return Report(out, markdown, tables["main"], tables, figures, files, n_runs, list(skipped),
                  tuple(sorted(set(df["run_id"]))))


# ----------------------------------------------------------------------- CLI
def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``raysvc report``'s arguments to ``parser`` (a subparser or a fresh one)."""
    parser.add_argument("source", help="results destination: local folder, file://DIR or s3://BUCKET[/PREFIX]")
    parser.add_argument("--out", "-o", default="report", help="folder for report.md, CSVs and PNGs (default: ./report)")
    parser.add_argument("--metric", default="test_acc", choices=ACCURACY_METRICS, help="accuracy to tabulate and plot")
    parser.add_argument("--round", type=int, default=None, dest="at_round",
                        help="round of the main table (default: each dataset's last)")
    for key in FILTER_KEYS:
        parser.add_argument(f"--{key}", action="append", default=None, metavar=key.upper(),
                            help=f"keep only this {key} (repeatable)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="report the readable runs and name each run left out (corrupt or edited files, another "
                             "record schema) on stderr and in report.md, instead of stopping at the first such run")
    parser.add_argument("--spread", default="std", choices=tuple(SPREADS),
                        help="what every table's ± and every figure's band is: one std over seeds (ddof=1, default) "
                             "or the 95%% confidence interval of the mean (Student t)")
    parser.add_argument("--baseline", default=None, metavar="STRATEGY",
                        help=f"strategy the paired differences and the default target accuracy refer to "
                             f"(default: {BASELINE}, when there are such runs)")
    parser.add_argument("--target-acc", type=_percent, default=None, metavar="PERCENT",
                        help="one target accuracy in percent (e.g. 62.5) for the labels-to-reach table on every "
                             "dataset (default: the baseline's mean accuracy at --round, else at its last round)")
    parser.add_argument("--analysis", action="append", default=None, choices=tuple(ANALYSES), metavar="NAME",
                        help="also run this paper-figure analysis on the reported runs and append its section to "
                             f"report.md (repeatable): {', '.join(ANALYSES)}")
    parser.add_argument("--study", metavar="NAME",
                        help="instead: one table or figure of a paper laid out as the paper does, its printed numbers "
                             "beside (analysis.studies; docs/studies.md), written to OUT/study-NAME.md")
    parser.add_argument("--study-size", metavar="SIZE", default=None,
                        help="with --study: the study file's size whose runs to read (default: every size)")
    return parser


def append_analyses(report: Report, source, names) -> list[Section]:
    """Run the analyses ``names`` on the report's runs into its folder and append their sections to report.md."""
    sections = [ANALYSES[name](source, report.out_dir, run_ids=report.run_ids) for name in names]
    text = report.markdown.rstrip("\n") + "\n\n"  # what build_report wrote to report.md
    (report.out_dir / "report.md").write_text(text + "\n".join(s.to_markdown(report.out_dir) for s in sections),
                                              encoding="utf-8")
    return sections


def _percent(text: str) -> float:
    """``--target-acc``: a percentage in (0, 100] as a fraction."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"a percentage in (0, 100], got {text}")
    return value / 100


def print_skipped(skipped, prog: str = "raysvc report", file=None) -> None:
    """One stderr line per run left out by --skip-bad."""
    for s in skipped:
        print(f"{prog}: skipped {s}", file=file or sys.stderr)


def run_report(args: argparse.Namespace) -> int:
    """Build the report from parsed arguments, print the main table; 0 on success.

    RaysvcError (empty source, schema mismatch, storage failure) propagates for the CLI to print.
    """
    if getattr(args, "study", None):
        from analysis.studies import study_section

        print(study_section(args.study, args.source, args.out, size=args.study_size), end="")
        return 0
    filters = {k: getattr(args, k, None) for k in FILTER_KEYS}
    report = build_report(
        args.source, args.out, metric=getattr(args, "metric", "test_acc"), at_round=getattr(args, "at_round", None),
        filters=filters, skip_bad=getattr(args, "skip_bad", False), spread=getattr(args, "spread", "std"),
        baseline=getattr(args, "baseline", None), target_acc=getattr(args, "target_acc", None),
    )
    print_skipped(report.skipped)
    if getattr(args, "analysis", None):
        append_analyses(report, args.source, args.analysis)
    print(report)
    return 0


@entry_point("raysvc report")
def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m analysis.report SOURCE --out DIR``); errors print as one line."""
    parser = add_report_arguments(Parser(prog="raysvc report", description=__doc__.splitlines()[0]))
    return run_report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
