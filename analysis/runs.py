"""``raysvc runs SOURCE``: one line per stored run, to see what a results destination holds.

:func:`runs_table` reads every run under ``SOURCE`` (local path, ``file://`` or
``s3://``; see :mod:`analysis.load`) and returns one row per run: its configuration,
how many rounds it recorded, its test accuracy and cumulative oracle queries at its last
round, and when it finished (the manifest's ``finished_at``). :func:`format_runs` prints
that as an aligned text table. Unreadable runs stop the listing with an error naming
them, unless ``--skip-bad`` (``skip_bad=True``), which lists the others and names each
skipped run on stderr.

    python -m analysis.runs results/core
    python -m analysis.runs s3://bucket/demo --skip-bad
    python -m analysis.runs results/core --run emoji-cbsq-coop-s0-1a2b3c4d5e   # one run, with its selections
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from analysis.load import load_results
from raysvc.entry import Parser, entry_point

COLUMNS = (
    "run_id", "dataset", "strategy", "learner", "backbone", "student", "budget", "seed", "rounds", "test_acc",
    "n_queried", "finished_at",
)  # fmt: skip
SORT = ("dataset", "backbone", "learner", "student", "strategy", "budget", "seed", "run_id")
HEADERS = {"test_acc": "test acc (%)", "n_queried": "queried", "finished_at": "finished at"}


def runs_table(source, *, skip_bad: bool = False, retry_seconds: float | None = None) -> pd.DataFrame:
    """One row per run under ``source``, sorted by dataset, backbone, learner, student, strategy, budget, seed.

    Columns :data:`COLUMNS`: ``rounds`` is the number of rounds recorded; ``test_acc``
    (a fraction) and ``n_queried`` are those of the run's last round; ``finished_at``
    is the manifest's (empty when it has none). With ``skip_bad`` the runs left out are
    in ``df.attrs["skipped"]`` (a list of :class:`analysis.load.SkippedRun`).
    """
    loaded = load_results(source, skip_bad=skip_bad, retry_seconds=retry_seconds)
    df = loaded.records
    last = df.sort_values(["run_id", "round"]).groupby("run_id", sort=False).tail(1).set_index("run_id")
    out = last[["dataset", "strategy", "learner", "backbone", "student", "budget", "seed"]].copy()
    out["rounds"] = df.groupby("run_id")["round"].nunique()
    out["test_acc"] = last["test_acc"]
    out["n_queried"] = last["n_queried"]
    out["finished_at"] = [str(loaded.manifests.get(rid, {}).get("finished_at") or "") for rid in out.index]
    out = out.reset_index()[list(COLUMNS)].sort_values(list(SORT), kind="stable").reset_index(drop=True)
    out.attrs["skipped"] = list(loaded.skipped)
    return out


def format_runs(df: pd.DataFrame) -> str:
    """An aligned text table of :func:`runs_table`'s rows (accuracy in percent) and a count line.

    ``student`` is left out when no run has one.
    """
    columns = [c for c in COLUMNS if c != "student" or (df["student"].astype(str) != "").any()]
    numeric = {"budget", "seed", "rounds", "test_acc", "n_queried"}

    def text(column: str, value) -> str:
        if column == "test_acc":
            return "–" if pd.isna(value) else f"{float(value) * 100:.2f}"
        return str(value) if str(value) != "" else "-"

    cells = [[text(c, v) for c, v in zip(columns, row)] for row in df[columns].itertuples(index=False)]
    header = [HEADERS.get(c, c) for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values) -> str:
        parts = [v.rjust(w) if c in numeric else v.ljust(w) for c, v, w in zip(columns, values, widths)]
        return "  ".join(parts).rstrip()

    n = len(df)
    lines = [line(header), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    lines.append(f"{n} run{'s' if n != 1 else ''}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- CLI
def add_runs_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``raysvc runs``' arguments to ``parser`` (a subparser or a fresh one)."""
    parser.add_argument("source", help="results destination: local folder, file://DIR or s3://BUCKET[/PREFIX]")
    parser.add_argument("--skip-bad", action="store_true",
                        help="list the readable runs and name each run left out (corrupt or edited files, another "
                             "record schema) on stderr, instead of stopping at the first such run")
    parser.add_argument("--run", metavar="RUN_ID", help="show this run: its rounds, what each round selected, and "
                                                         "the selected images (up to --limit)")
    parser.add_argument("--limit", type=int, default=50, metavar="N",
                        help="selected images listed with --run (default: 50; 0: all)")
    return parser


def format_run(source, run_id: str, limit: int = 50) -> str:
    """One run: its rounds (the records), each round's selection summary, and its selected images."""
    from analysis.load import load_selections
    from analysis.selections import round_summary
    from raysvc import storage
    from raysvc.errors import AnalysisError
    from raysvc.progress import format_rounds

    run = storage.read_run(source, run_id)
    if run is None:
        raise AnalysisError(f"no run {run_id!r} in {source} (raysvc runs {source} lists them)")
    rows = run.table.to_pylist()
    first = rows[0]
    lines = [f"run {run_id}: {first['dataset']}, {first['strategy']}, {first['learner']}, {first['backbone']}, "
             f"seed {first['seed']}, budget {first['budget']}, pool {first['pool_size']}", "", format_rounds(rows)]
    selections = load_selections(source, runs=[run])
    if selections.empty:
        lines += ["", "(no selections stored: the run was written before raysvc stored them)"]
        return "\n".join(lines)
    summary = round_summary(selections, int(first["n_classes"]))
    lines += ["", "what each round selected (classes: distinct true classes of its picks; balance: their "
                  "normalised entropy, 1 = even)", ""]
    lines.append(summary.drop(columns="run_id").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    shown = selections if limit <= 0 else selections.head(limit)
    lines += ["", f"selected images ({len(shown)} of {len(selections)})", ""]
    lines.append(shown.drop(columns="run_id").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)


def run_runs(args: argparse.Namespace) -> int:
    """List the runs from parsed arguments; 0 on success. RaysvcError propagates for the CLI to print."""
    from analysis.report import print_skipped

    if getattr(args, "run", None):
        print(format_run(args.source, args.run, getattr(args, "limit", 50)))
        return 0
    df = runs_table(args.source, skip_bad=getattr(args, "skip_bad", False))
    print_skipped(df.attrs.get("skipped", []), prog="raysvc runs")
    print(format_runs(df))
    return 0


@entry_point("raysvc runs")
def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m analysis.runs SOURCE [--skip-bad]``); errors print as one line."""
    parser = add_runs_arguments(Parser(prog="raysvc runs", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return run_runs(args)
    except BrokenPipeError:  # piped into head: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- Python flushes stdout again at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
