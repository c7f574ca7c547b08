"""What the demo's strategies picked, round by round, read from the stored selections.

    python -m jobs.demo_selections s3://raysvc/demo

On the demo's small test split the accuracy differences between strategies are within
noise (emoji's 218 test images: one standard error is about 4.6 points at 40%); what the
strategies pick is not. Per strategy and round, means over seeds of
:func:`analysis.selections.round_summary`: oracle queries, pseudo-labels (the queries
selective querying saved), the classes the picks cover, their class-balance entropy (1:
every class picked equally often) and the pseudo-labels' accuracy, beside test accuracy.
"""

from __future__ import annotations

import sys

import pandas as pd

from analysis.load import load_results, load_selections
from analysis.selections import SUMMARY_COLUMNS, round_summary
from raysvc.entry import Parser, entry_point
from raysvc.errors import AnalysisError


def selection_table(records: pd.DataFrame, selections: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, strategy, learner, round): seeds, test accuracy and the selection
    summary, each the mean over seeds."""
    runs = records.drop_duplicates("run_id").set_index("run_id")
    summary = round_summary(selections, {run_id: int(n) for run_id, n in runs["n_classes"].items()})
    keys = ["dataset", "strategy", "learner"]
    summary = summary.join(runs[keys], on="run_id")
    acc = records[["run_id", "round", "test_acc"]]
    summary = summary.merge(acc, on=["run_id", "round"], how="left")
    grouped = summary.groupby([*keys, "round"], sort=True)
    out = grouped[["test_acc", *SUMMARY_COLUMNS]].mean()
    out.insert(0, "seeds", grouped["run_id"].nunique())
    return out.reset_index()


def format_selection_table(table: pd.DataFrame) -> str:
    """The table as text: accuracies and pseudo-label accuracy in percent."""
    shown = table.assign(test_acc=table["test_acc"] * 100, pseudo_acc=table["pseudo_acc"] * 100).rename(columns={
        "test_acc": "test acc %", "queried": "queried", "pseudo": "saved (pseudo)", "classes": "classes",
        "balance": "balance", "pseudo_acc": "pseudo acc %"})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-")


@entry_point("jobs.demo_selections")
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m jobs.demo_selections", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="results destination: local folder or s3://bucket/prefix")
    args = parser.parse_args(argv)
    loaded = load_results(args.source)
    selections = load_selections(args.source, sorted(loaded.manifests))
    if selections.empty:
        raise AnalysisError(f"no stored selections under {args.source} (runs stored before selections were)")
    print("What each strategy selected, per round (mean over seeds; saved = pseudo-labels, queries not asked):")
    print(format_selection_table(selection_table(loaded.records, selections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
