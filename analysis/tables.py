"""Mean and spread over seeds, and the tables a paper reports.

Aggregation (:func:`aggregate`): runs are grouped by configuration,
:data:`CONFIG_KEYS` = dataset x strategy x learner x backbone x student x budget per
class, and round; seeds are what the mean and spread run over. ``student`` and the
budget are part of the configuration because runs that differ in them are different
experiments (a KD learner with two students, two budgets) and must never be averaged
together as if they were seeds. Two runs of one configuration with the same seed are an
error (one seed would count twice).

The budget enters the configuration as labels per class per round,
``budget_per_class = budget / n_classes`` (printed ``1/class``, headed ``budget``), not as
the absolute per-round budget: the papers' default, B = |C| on every dataset, is one
configuration across datasets with different class counts (so it gets one row and an
Average), a run that left the budget at its default and one that set it to the class
count explicitly are the same configuration, and B = 10 on a 10-class and on an
18-class dataset stay two (1/class and 0.556/class).

Conventions, decided once for every table and figure:

* ``std`` is the sample standard deviation (``ddof=1``) over seeds. With a single seed
  it is undefined and stays NaN (never 0, which would claim certainty): tables then
  print the mean alone, figures draw no band. ``n_seeds`` says how many seeds each
  cell averages; a round some seeds did not reach averages the seeds that did.
* ``ci95`` is the half-width of the 95% confidence interval of the mean over seeds,
  Student t: ``t_{0.975, n-1} * std / sqrt(n)`` with ``n`` the seeds that have a value
  (the interval is mean ± ci95). Like ``std`` it is NaN for one seed. ``spread="std"``
  (the default) or ``spread="ci95"`` chooses which one every table's ± and every
  figure's band shows; titles and captions say which.
* Means and spreads skip NaN values (``pseudo_acc`` is NaN while a run has no
  pseudo-label; ``teacher_acc`` without a teacher); a cell with no value is NaN and
  prints as ``–``.
* ``saved = n_labeled - n_queried`` (labels obtained without asking the oracle, i.e.
  selective querying's pseudo-labels) is computed per run and round, then aggregated.
* Accuracies print in percent with two decimals. The best cell of a column is the
  highest (lowest for seconds) *printed* value, so printed ties are all bold.
* An ``Average`` over datasets is given only for rows present in every dataset (NaN
  otherwise: an average over fewer datasets is not comparable). Rows are
  configurations that differ only in the dataset (the budget per class included).
* The zero-shot accuracy (the backbone with no labels at all; every round of a run
  records the same value) is a baseline per dataset and backbone: mean ± spread over all
  runs of that dataset and backbone (:func:`zeroshot_baseline`). The paper tables show
  it as a ``zero-shot`` row first, never bold.
* Feature encoding is a one-time cost per dataset and backbone, charged to the first
  round of whichever run encoded first (the others hit the cache and record 0). It is
  summed over runs per dataset and backbone (:func:`encoding_table`), not averaged per
  strategy.

Statistics of the learning curve:

* AULC (:func:`run_aulc`), per run: the area under its accuracy curve by the trapezoid
  rule, x = labeled images (``n_labeled``: oracle and pseudo-labels) or, for the view
  against the oracle, x = oracle queries (``n_queried``), over the run's recorded rounds
  (from its first, round 0 where a k-shot start is recorded, to its last, or to
  ``up_to_round``), divided by the run's own x-range (last x - first x). So a constant
  accuracy a gives AULC a, and AULC is the mean accuracy over the labels (or queries)
  the run spent. Each run is integrated on its own grid: runs whose x values differ
  (selective querying saves a different number of queries per seed) need no common
  grid or interpolation; runs over different ranges average different ranges. A run
  with fewer than two rounds, or whose x never grows, has no area: NaN. Then mean and
  spread over seeds as for any metric.
* Paired differences (:func:`paired_differences`): each configuration against the
  baseline strategy (default ``random``) of the same dataset, learner, backbone, student
  and budget per class, seed by seed (only seeds both have): the per-seed difference of
  the metric at the chosen round (default each dataset's last) and of AULC, then its
  mean and 95% CI (Student t, as above) over the paired seeds. Across datasets a
  configuration *wins* where the CI lies above 0, *loses* where it lies below 0, and
  *ties* where the CI contains 0, including where it is undefined (one paired seed).
* Reaching an accuracy (:func:`reach_table`): the first round whose *mean* accuracy over
  seeds is at least the target, reported with that round's mean labeled images and
  oracle queries; no interpolation between rounds, so the answer is resolved to one
  round's budget. A configuration that never reaches it prints ``not reached``. The
  default target, per dataset, learner, backbone, student and budget per class, is the
  baseline strategy's mean accuracy at the chosen round, by default the baseline's last
  round (the labels the others need to match what the baseline ends with); a fixed
  target applies to every dataset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import load_runs
from raysvc.errors import AnalysisError

CONFIG_KEYS = ("dataset", "strategy", "learner", "backbone", "student", "budget_per_class")
GROUP_KEYS = (*CONFIG_KEYS, "round")
METRICS = (
    "test_acc", "zeroshot_acc", "teacher_acc", "pseudo_acc", "n_labeled", "n_queried", "n_pseudo", "saved",
    "select_seconds", "train_seconds", "encode_seconds",
)  # fmt: skip
AVERAGE = "Average"
ZEROSHOT = "zero-shot"
SPREADS = {"std": "std", "ci95": "95% CI"}  # spread -> how titles and captions name it
BASELINE = "random"
AULC_X = {"n_labeled": "labeled images", "n_queried": "oracle queries"}
OUTCOMES = ("wins", "ties", "losses")
NOT_REACHED = "not reached"
KEY_HEADERS = {"budget_per_class": "budget"}  # configuration key -> table header

METRIC_LABELS = {
    "test_acc": "test accuracy (%)", "zeroshot_acc": "zero-shot accuracy (%)", "teacher_acc": "teacher accuracy (%)",
    "pseudo_acc": "pseudo-label accuracy (%)", "n_labeled": "labeled images", "n_queried": "oracle queries",
    "n_pseudo": "pseudo-labels", "saved": "queries saved", "select_seconds": "select (s)",
    "train_seconds": "train (s)", "encode_seconds": "encode (s)",
}  # fmt: skip


def is_accuracy(metric: str) -> bool:
    return metric.endswith("_acc")


def _style(metric: str) -> tuple[float, int, bool | None]:
    """(scale, digits, higher_is_better) for printing a metric."""
    if is_accuracy(metric):
        return 100.0, 2, True
    if metric.endswith("_seconds") or metric.endswith("s/round") or metric.endswith("s/run"):
        return 1.0, 3, False
    return 1.0, 1, None


def key_text(key: str, value) -> str:
    """A configuration key's value as tables and legends print it (``1/class`` for the budget)."""
    if key == "budget_per_class" and isinstance(value, (int, float, np.number)) and not pd.isna(value):
        value = float(value)
        return f"{int(value) if value.is_integer() else round(value, 3)}/class"
    return str(value)


def check_spread(spread: str) -> str:
    if spread not in SPREADS:
        raise AnalysisError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}")
    return spread


def over_seeds_text(spread: str) -> str:
    return f"mean ± {SPREADS[check_spread(spread)]} over seeds"


def ci95(std, n):
    """Half-width of the 95% confidence interval of a mean: ``t_{0.975, n-1} * std / sqrt(n)``; NaN for n < 2."""
    std, n = np.asarray(std, float), np.asarray(n, float)
    df = np.where(n >= 2, n - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return stats.t.ppf(0.975, df) * std / np.sqrt(n)


# ----------------------------------------------------------------- aggregation
def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """The records plus derived columns: ``saved`` and the configuration's ``budget_per_class``."""
    out = df.copy()
    out["saved"] = out["n_labeled"] - out["n_queried"]
    out["budget_per_class"] = out["budget"] / out["n_classes"]
    return out


def check_seeds(df: pd.DataFrame) -> None:
    """Raise when two runs share a configuration and a seed."""
    per = df.groupby([*CONFIG_KEYS, "seed"], sort=True, dropna=False)["run_id"].nunique()
    dup = per[per > 1]
    if len(dup):
        names = []
        for key in dup.index[:5]:
            mask = np.logical_and.reduce([df[k] == v for k, v in zip((*CONFIG_KEYS, "seed"), key)])
            names.append("/".join(sorted(map(repr, set(df.loc[mask, "run_id"])))))
        more = f" and {len(dup) - 5} more" if len(dup) > 5 else ""
        raise AnalysisError(
            f"runs that repeat a configuration and seed would count that seed twice: {'; '.join(names)}{more}; "
            f"delete the duplicates or analyse them separately"
        )


def _records(source) -> pd.DataFrame:
    """Checked records with the derived columns, no configuration repeating a seed."""
    df = with_derived(load_runs(source))
    check_seeds(df)
    return df


def aggregate(source) -> pd.DataFrame:
    """Mean, std and 95% CI over seeds per configuration and round.

    ``source`` is anything :func:`analysis.load.load_runs` accepts (a destination or a
    records DataFrame). Returns one row per :data:`GROUP_KEYS` with ``n_seeds`` and, per
    metric of :data:`METRICS`, ``<metric>_mean``, ``<metric>_std`` (ddof=1) and
    ``<metric>_ci95`` (the CI's half-width over the seeds with a value), the last two
    NaN for one seed, sorted by the group keys.
    """
    df = _records(source)
    groups = df.groupby(list(GROUP_KEYS), sort=True, dropna=False)
    spec = {"n_seeds": ("seed", "nunique")}
    for m in METRICS:
        spec[f"{m}_mean"] = (m, "mean")
        spec[f"{m}_std"] = (m, "std")  # pandas: ddof=1, skips NaN, NaN for one value
        spec[f"{m}_n"] = (m, "count")  # seeds with a value: the CI's n
    out = groups.agg(**spec).reset_index()
    for m in METRICS:
        out.insert(out.columns.get_loc(f"{m}_n"), f"{m}_ci95", ci95(out[f"{m}_std"], out[f"{m}_n"]))
    return out.drop(columns=[f"{m}_n" for m in METRICS])


def over_seeds(per_seed: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], spread: str = "std"):
    """(mean, spread) frames over the rows (one per seed) of each ``keys`` group, per column; NaN skipped."""
    groups = per_seed.groupby(list(keys), dropna=False, sort=True)[list(columns)]
    mean, std = groups.mean(), groups.std()
    if check_spread(spread) == "std":
        return mean, std
    return mean, pd.DataFrame(ci95(std, groups.count()), index=std.index, columns=std.columns)


def _as_aggregate(data) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame) and "n_seeds" in data.columns:
        return data
    return aggregate(data)


def select(agg: pd.DataFrame, **filters) -> pd.DataFrame:
    """Rows of ``agg`` matching every filter (a value, or a list of values; None: any)."""
    mask = pd.Series(True, index=agg.index)
    for key, value in filters.items():
        if value is None:
            continue
        if key not in agg.columns:
            raise AnalysisError(f"cannot filter on {key!r}; use one of {', '.join(GROUP_KEYS)}")
        values = [value] if isinstance(value, (str, int, float, np.integer, np.floating)) else list(value)
        mask &= agg[key].isin(values)
    out = agg[mask]
    if out.empty:
        shown = ", ".join(f"{k}={v!r}" for k, v in filters.items() if v is not None)
        raise AnalysisError(f"no results match {shown}")
    return out


def row_keys(agg: pd.DataFrame, exclude: Sequence[str] = ("dataset",)) -> list[str]:
    """The configuration keys that label rows: strategy, plus any other key that varies."""
    keys = ["strategy"]
    for k in CONFIG_KEYS:
        if k not in keys and k not in exclude and agg[k].nunique(dropna=False) > 1:
            keys.append(k)
    return keys


# ----------------------------------------------------------------- tables
@dataclasses.dataclass
class Table:
    """A table of means (and a spread) with its printing rules.

    ``mean`` and ``spread`` have the same index (row labels) and columns; ``spread`` is
    None where no spread applies, and ``spread_name`` says which one it holds (a key of
    :data:`SPREADS`; CSV columns are ``<column> <spread_name>``). Columns listed in
    ``no_best`` are never marked; otherwise a column's best printed value is bold when
    ``higher_is_better`` is not None. ``scale``/``digits`` apply to every column unless
    ``styles`` names the column. ``baseline_mean``/``baseline_spread`` (same index names
    and columns, or None) are reference rows such as ``zero-shot``: printed first, never
    bold, not compared. A cell without a value prints ``missing``; columns in ``signed``
    print a + on positive means (differences).
    """

    title: str
    mean: pd.DataFrame
    spread: pd.DataFrame | None = None
    higher_is_better: bool | None = True
    scale: float = 1.0
    digits: int = 2
    styles: dict = dataclasses.field(default_factory=dict)  # column -> (scale, digits, higher_is_better)
    no_best: tuple = ()
    baseline_mean: pd.DataFrame | None = None
    baseline_spread: pd.DataFrame | None = None
    spread_name: str = "std"
    missing: str = "–"
    signed: tuple = ()

    def _style(self, column) -> tuple[float, int, bool | None]:
        return self.styles.get(column, (self.scale, self.digits, self.higher_is_better))

    def best(self) -> pd.DataFrame:
        """Boolean frame: True where a cell is the best printed value of its column."""
        out = pd.DataFrame(False, index=self.mean.index, columns=self.mean.columns)
        for col in self.mean.columns:
            scale, digits, higher = self._style(col)
            if higher is None or col in self.no_best:
                continue
            shown = (self.mean[col].astype(float) * scale).round(digits)
            if shown.notna().sum() < 2:
                continue  # a single entry is not "best" of anything
            target = shown.max() if higher else shown.min()
            out[col] = shown == target
        return out

    def cell(self, row, col, bold: bool = False, baseline: bool = False) -> str:
        mean, spread = (self.baseline_mean, self.baseline_spread) if baseline else (self.mean, self.spread)
        scale, digits, _ = self._style(col)
        m = mean.loc[row, col] if col in mean.columns else float("nan")
        if pd.isna(m):
            return self.missing
        text = f"{float(m) * scale:{'+' if col in self.signed else ''}.{digits}f}"
        if spread is not None and col in spread.columns:
            s = spread.loc[row, col]
            if not pd.isna(s):
                text += f" ± {float(s) * scale:.{digits}f}"
        return f"**{text}**" if bold else text

    def to_markdown(self) -> str:
        best = self.best()
        names = [str(n) for n in self.mean.index.names]
        header = [KEY_HEADERS.get(n, n) for n in names] + [str(c) for c in self.mean.columns]

        def labels(row) -> list[str]:
            return [key_text(n, v) for n, v in zip(names, row if isinstance(row, tuple) else (row,))]

        rows = []
        if self.baseline_mean is not None:
            for row in self.baseline_mean.index:
                rows.append(labels(row) + [self.cell(row, c, baseline=True) for c in self.mean.columns])
        for row in self.mean.index:
            rows.append(labels(row) + [self.cell(row, c, bool(best.loc[row, c])) for c in self.mean.columns])
        return markdown_table(header, rows, n_left=len(names))

    def to_frame(self) -> pd.DataFrame:
        """Flat, unscaled numbers for CSV: ``<column>`` means and ``<column> <spread_name>``; baseline rows first."""
        parts = []
        if self.baseline_mean is not None:
            parts.append((self.baseline_mean, self.baseline_spread))
        parts.append((self.mean, self.spread))
        frames = []
        for mean, spread in parts:
            out = pd.DataFrame(index=mean.index)
            for c in self.mean.columns:
                out[str(c)] = mean[c] if c in mean.columns else float("nan")
                if self.spread is not None and c in self.spread.columns:
                    has = spread is not None and c in spread.columns
                    out[f"{c} {self.spread_name}"] = spread[c] if has else float("nan")
            frames.append(out.reset_index())
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def __str__(self) -> str:
        return f"{self.title}\n\n{self.to_markdown()}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], n_left: int = 1) -> str:
    """A GitHub-flavoured markdown table; the first ``n_left`` columns left-aligned, the rest right."""

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join(":---" if i < n_left else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def round_table(
    data, metric: str = "test_acc", dataset: str | None = None, rounds=None, zeroshot: bool = False,
    spread: str = "std", **filters,
) -> Table:
    """Strategies as rows, rounds as columns: ``metric`` mean ± spread over seeds on one dataset.

    ``dataset`` may be omitted when the results hold one; ``rounds`` limits the columns;
    other ``filters`` (learner=, backbone=, ...) narrow the rows. Rows are labelled by
    strategy plus every other configuration key that still varies. ``zeroshot`` adds
    the zero-shot baseline as reference rows (the same value in every round; see
    :func:`zeroshot_baseline`), for accuracy metrics other than ``zeroshot_acc``.
    ``spread`` is ``std`` or ``ci95`` (see the module's conventions).
    """
    agg = _as_aggregate(data)
    if dataset is None:
        names = sorted(agg["dataset"].unique())
        if len(names) != 1:
            raise AnalysisError(f"results hold several datasets ({', '.join(names)}): name one")
        dataset = names[0]
    sel = select(agg, dataset=dataset, round=rounds, **filters)
    keys = row_keys(sel)
    mean, spread_frame = _pivot(sel, keys, "round", metric, spread)
    scale, digits, higher = _style(metric)
    title = f"{METRIC_LABELS.get(metric, metric)} on {dataset} by round ({over_seeds_text(spread)})"
    table = Table(title, mean, spread_frame, higher, scale, digits, spread_name=spread)
    if zeroshot and _wants_zeroshot(metric):
        base = zeroshot_baseline(select(agg, dataset=dataset, **filters))
        _add_baseline(table, base, keys, {c: dataset for c in mean.columns})
    return table


def _wants_zeroshot(metric: str) -> bool:
    return is_accuracy(metric) and metric != "zeroshot_acc"


def zeroshot_baseline(data, **filters) -> pd.DataFrame:
    """Zero-shot accuracy per (dataset, backbone): ``mean``, ``std`` (ddof=1), ``ci95`` and ``n_runs`` over runs.

    Every round of a run records the same ``zeroshot_acc``; each run counts once. From an
    aggregate, each configuration contributes the round where most of its seeds are
    present, and the configurations' means and stds are pooled exactly over their runs.
    ``ci95`` is the 95% CI's half-width over the runs (see :func:`ci95`).
    """
    agg = select(_as_aggregate(data), **filters)
    agg = agg[agg["zeroshot_acc_mean"].notna()]
    per_config = (
        agg.sort_values(["n_seeds", "round"], ascending=[False, True], kind="stable")
        .groupby(list(CONFIG_KEYS), sort=True, dropna=False).head(1)
    )
    rows = []
    for (dataset, backbone), part in per_config.groupby(["dataset", "backbone"], sort=True, dropna=False):
        n = part["n_seeds"].to_numpy(float)
        m = part["zeroshot_acc_mean"].to_numpy(float)
        s = np.nan_to_num(part["zeroshot_acc_std"].to_numpy(float))  # NaN for one seed: no spread inside
        total = n.sum()
        mean = float((n * m).sum() / total)
        spread = float(((n - 1) * s**2).sum() + (n * (m - mean) ** 2).sum())
        std = math.sqrt(max(spread, 0.0) / (total - 1)) if total > 1 else float("nan")
        rows.append({"dataset": dataset, "backbone": backbone, "mean": mean, "std": std,
                     "ci95": float(ci95(std, total)), "n_runs": int(total)})
    return pd.DataFrame(rows, columns=["dataset", "backbone", "mean", "std", "ci95", "n_runs"])


def _add_baseline(table: Table, base: pd.DataFrame, keys: list[str], column_dataset: dict) -> None:
    """Put zero-shot rows (one per backbone) into ``table``; ``column_dataset`` maps its columns to datasets.

    The rows' ± is the table's spread (``std`` or ``ci95``) over the runs; with an
    ``Average`` column the rows get the mean of their dataset values there (no ±).
    """
    if base.empty:
        return
    spread = table.spread_name
    index, means, spreads = [], [], []
    for backbone, part in base.groupby("backbone", sort=True):
        by_dataset = part.set_index("dataset")
        label = tuple(ZEROSHOT if k == "strategy" else backbone if k == "backbone" else "" for k in keys)
        index.append(label if len(keys) > 1 else label[0])
        means.append({c: by_dataset["mean"].get(d, np.nan) for c, d in column_dataset.items()})
        spreads.append({c: by_dataset[spread].get(d, np.nan) for c, d in column_dataset.items()})
    if len(keys) > 1:
        idx = pd.MultiIndex.from_tuples(index, names=table.mean.index.names)
    else:
        idx = pd.Index(index, name=table.mean.index.name)
    table.baseline_mean = pd.DataFrame(means, index=idx, columns=list(column_dataset)).astype(float)
    table.baseline_spread = pd.DataFrame(spreads, index=idx, columns=list(column_dataset)).astype(float)
    if AVERAGE in table.mean.columns:
        table.baseline_mean[AVERAGE] = table.baseline_mean[list(column_dataset)].mean(axis=1, skipna=False)
    lo, hi = int(base["n_runs"].min()), int(base["n_runs"].max())
    n = f"n = {lo}" if lo == hi else f"n = {lo}–{hi} per dataset"
    table.title += (
        f"; zero-shot: the backbone with no labels, mean ± {SPREADS[spread]} over every run of the dataset and "
        f"backbone ({n})"
    )


def _pivot(
    sel: pd.DataFrame, keys: list[str], column: str, metric: str, spread: str = "std"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, spread) frames: rows ``keys``, columns the values of ``column``; only combinations that exist."""
    frame = sel.set_index([*keys, column])[[f"{metric}_mean", f"{metric}_{check_spread(spread)}"]]
    if frame.index.has_duplicates:
        raise AnalysisError(f"rows are not unique by {', '.join(keys)} and {column}: filter the results first")
    out = []
    for part in ("mean", spread):
        wide = frame[f"{metric}_{part}"].unstack(column).sort_index()
        wide.columns = list(wide.columns)
        wide.columns.name = column
        out.append(wide)
    return out[0], out[1]


def final_rounds(agg: pd.DataFrame) -> dict[str, int]:
    """Each dataset's last round in ``agg``."""
    return {str(k): int(v) for k, v in agg.groupby("dataset")["round"].max().items()}


def _at_rounds(sel: pd.DataFrame, at_round: int | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of ``sel`` at ``at_round`` (None: each dataset's last round) and the round per dataset."""
    wanted = {d: (at_round if at_round is not None else r) for d, r in final_rounds(sel).items()}
    return sel[[r == wanted[d] for d, r in zip(sel["dataset"], sel["round"])]], wanted


def _rounds_text(at_round: int | None, wanted: dict[str, int], last: str = "each dataset's last round") -> str:
    if at_round is not None:
        return f"round {at_round}"
    return f"{last} (" + ", ".join(f"{d}: {r}" for d, r in sorted(wanted.items())) + ")"


def _with_average(mean: pd.DataFrame, datasets: list[str], average: bool) -> pd.DataFrame:
    """``mean`` with an ``Average`` column over ``datasets`` (NaN unless a row has every dataset)."""
    if average and len(datasets) > 1:
        mean = mean.copy()
        mean[AVERAGE] = mean[datasets].mean(axis=1, skipna=False)
    return mean


def dataset_table(
    data, metric: str = "test_acc", at_round: int | None = None, average: bool = True, zeroshot: bool = False,
    spread: str = "std", **filters,
) -> Table:
    """Strategies as rows, datasets as columns at one round, plus an ``Average`` column.

    ``at_round`` None takes each dataset's last round. The Average is the mean of a
    row's dataset means, NaN unless the row has a value on every dataset; it has no ±.
    ``zeroshot`` adds the zero-shot baseline rows (:func:`zeroshot_baseline`; it does
    not depend on the round), for accuracy metrics other than ``zeroshot_acc``.
    ``spread`` is ``std`` or ``ci95`` (see the module's conventions).
    """
    agg = _as_aggregate(data)
    sel = select(agg, **filters)
    base = zeroshot_baseline(sel) if zeroshot and _wants_zeroshot(metric) else None
    datasets = sorted(sel["dataset"].unique())  # before picking the round: a dataset without it stays, as NaN
    sel, wanted = _at_rounds(sel, at_round)
    if sel.empty:
        raise AnalysisError(f"no results at round {at_round}")
    keys = row_keys(sel)
    mean, spread_frame = _pivot(sel, keys, "dataset", metric, spread)
    mean, spread_frame = mean.reindex(columns=datasets), spread_frame.reindex(columns=datasets)
    mean = _with_average(mean, datasets, average)
    scale, digits, higher = _style(metric)
    title = f"{METRIC_LABELS.get(metric, metric)} at {_rounds_text(at_round, wanted)} ({over_seeds_text(spread)})"
    table = Table(title, mean, spread_frame, higher, scale, digits, spread_name=spread)
    if base is not None:
        _add_baseline(table, base, keys, {d: d for d in datasets})
    return table


def queries_table(data, only_selective: bool = False, spread: str = "std", **filters) -> Table:
    """Oracle queries spent vs labeled-set size built, per configuration and round.

    Columns: labeled (oracle + pseudo), queried (oracle), saved = labeled - queried,
    pseudo-labels, pseudo-label accuracy (%), each mean ± spread over seeds.
    ``only_selective`` keeps configurations that obtained any pseudo-label.
    """
    agg = _as_aggregate(data)
    sel = select(agg, **filters)
    if only_selective:
        configs = sel.groupby(list(CONFIG_KEYS), dropna=False)["n_pseudo_mean"].transform("max")
        sel = sel[configs > 0]
        if sel.empty:
            raise AnalysisError("no run used selective querying (no pseudo-labels)")
    keys = ["dataset", *row_keys(sel), "round"]
    cols = {"n_labeled": "labeled", "n_queried": "queried", "saved": "saved", "n_pseudo": "pseudo-labels",
            "pseudo_acc": "pseudo-label acc (%)"}  # fmt: skip
    frame = sel.set_index(keys).sort_index()
    mean = pd.DataFrame({v: frame[f"{k}_mean"] for k, v in cols.items()})
    spread_frame = pd.DataFrame({v: frame[f"{k}_{check_spread(spread)}"] for k, v in cols.items()})
    styles = {v: (1.0, 1, None) for v in cols.values()}
    styles["pseudo-label acc (%)"] = (100.0, 2, None)
    return Table(f"Oracle queries spent vs labeled-set size ({over_seeds_text(spread)})", mean, spread_frame, None,
                 styles=styles, spread_name=spread)


def timing_table(source, encode: bool = False, spread: str = "std", **filters) -> Table:
    """Seconds per stage per configuration: select and train per round, and their total per run.

    Per run: mean select/train seconds over its rounds and its total (select + train over
    all rounds); then mean ± spread over seeds. The one-time feature encoding is left out:
    it is charged to whichever run encoded first, so averaging it per strategy misleads;
    see :func:`encoding_table`. ``encode=True`` gives the former view: an ``encode s/run``
    column and the encoding counted in the total.
    """
    df = with_derived(load_runs(source))
    per_run = df.groupby(["run_id", *CONFIG_KEYS, "seed"], dropna=False).agg(
        select=("select_seconds", "mean"), train=("train_seconds", "mean"), encode=("encode_seconds", "sum"),
        total_select=("select_seconds", "sum"), total_train=("train_seconds", "sum"),
    ).reset_index()
    per_run["total"] = per_run["total_select"] + per_run["total_train"] + (per_run["encode"] if encode else 0.0)
    per_run = select(per_run, **filters)
    keys = ["dataset", *row_keys(per_run)]
    names = {"select": "select s/round", "train": "train s/round", "encode": "encode s/run", "total": "total s/run"}
    if not encode:
        del names["encode"]
    mean, spread_frame = over_seeds(per_run, keys, list(names), spread)
    title = f"Seconds per stage ({over_seeds_text(spread)})" + ("" if encode else "; feature encoding not included")
    # rows span datasets: no "best"
    return Table(title, mean.rename(columns=names), spread_frame.rename(columns=names), None, 1.0, 3,
                 spread_name=spread)


def encoding_table(source, **filters) -> Table:
    """The one-time feature encoding per (dataset, backbone): seconds summed over runs.

    Each (dataset, backbone) is encoded once and shared; the run that encoded records the
    seconds in its first round, the others 0 (a cache hit). The sum over runs is the
    encoding work actually done (0 when every run found the features cached). Columns:
    ``encode s (one-time)``, ``runs`` sharing the features, ``runs that encoded``.
    """
    df = select(load_runs(source), **filters)
    per_run = df.groupby(["dataset", "backbone", "run_id"], sort=True)["encode_seconds"].sum().reset_index()
    groups = per_run.groupby(["dataset", "backbone"], sort=True)
    mean = pd.DataFrame({
        "encode s (one-time)": groups["encode_seconds"].sum(),
        "runs": groups["run_id"].nunique().astype(float),
        "runs that encoded": groups["encode_seconds"].apply(lambda s: float((s > 0).sum())),
    })  # fmt: skip
    styles = {"encode s (one-time)": (1.0, 1, None), "runs": (1.0, 0, None), "runs that encoded": (1.0, 0, None)}
    title = "One-time feature encoding per dataset and backbone (seconds summed over runs)"
    return Table(title, mean, None, None, 1.0, 1, styles=styles)


# ------------------------------------------------------- learning-curve statistics
def trapezoid_mean(x, y) -> float:
    """Area under the points (x, y) by the trapezoid rule divided by the x-range: the mean of y over x.

    ``sum_i (x[i+1] - x[i]) * (y[i] + y[i+1]) / 2 / (x[-1] - x[0])``; points in the given
    order (x non-decreasing). NaN for fewer than two points or a zero x-range.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or not x[-1] > x[0]:
        return float("nan")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def run_aulc(source, x: str = "n_labeled", metric: str = "test_acc", up_to_round: int | None = None) -> pd.DataFrame:
    """AULC per run: ``metric`` against ``x`` (``n_labeled`` or ``n_queried``) over the run's rounds.

    One row per run: its configuration keys, ``seed``, ``run_id``, ``last_round`` (the
    last round integrated: the run's, or ``up_to_round``) and ``aulc`` (see
    :func:`trapezoid_mean` and the module's conventions; rounds where ``metric`` is NaN
    are left out of the curve).
    """
    if x not in AULC_X:
        raise AnalysisError(f"AULC is taken against one of {', '.join(AULC_X)}, not {x!r}")
    df = _records(source)
    if up_to_round is not None:
        df = df[df["round"] <= up_to_round]
    df = df[df[metric].notna()].sort_values(["run_id", "round"], kind="stable")
    rows = []
    for run_id, part in df.groupby("run_id", sort=True):
        first = part.iloc[0]
        rows.append({**{k: first[k] for k in CONFIG_KEYS}, "seed": first["seed"], "run_id": run_id,
                     "last_round": int(part["round"].iloc[-1]), "aulc": trapezoid_mean(part[x], part[metric])})
    return pd.DataFrame(rows, columns=[*CONFIG_KEYS, "seed", "run_id", "last_round", "aulc"])


def aulc_table(
    source, x: str = "n_labeled", metric: str = "test_acc", up_to_round: int | None = None, average: bool = True,
    zeroshot: bool = True, spread: str = "std", **filters,
) -> Table:
    """AULC (:func:`run_aulc`) as strategies x datasets, mean ± spread over seeds, plus an ``Average``.

    ``zeroshot`` adds the zero-shot rows: a constant curve, whose AULC is the zero-shot
    accuracy itself.
    """
    df = select(_records(source), **filters)
    per_run = run_aulc(df, x, metric, up_to_round)
    datasets = sorted(per_run["dataset"].unique())
    keys = row_keys(per_run)
    mean, spread_frame = over_seeds(per_run, [*keys, "dataset"], ["aulc"], spread)
    mean = mean["aulc"].unstack("dataset").reindex(columns=datasets)
    spread_frame = spread_frame["aulc"].unstack("dataset").reindex(columns=datasets)
    mean = _with_average(mean, datasets, average)
    upto = f"rounds up to {up_to_round}" if up_to_round is not None else "every recorded round"
    title = f"AULC of {METRIC_LABELS.get(metric, metric)} vs {AULC_X[x]} over {upto} ({over_seeds_text(spread)})"
    table = Table(title, mean, spread_frame, True, *_style(metric)[:2], spread_name=spread)
    if zeroshot and _wants_zeroshot(metric):
        _add_baseline(table, zeroshot_baseline(aggregate(df)), keys, {d: d for d in datasets})
    return table


PAIR_KEYS = tuple(k for k in CONFIG_KEYS if k != "strategy")  # what a configuration and its baseline share


def _paired(values: pd.DataFrame, baseline: str, quantity: str, round_of: dict) -> list[dict]:
    """Rows of :func:`paired_differences` for one quantity; ``values`` has CONFIG_KEYS, seed and ``value``."""
    base = values[values["strategy"] == baseline].set_index([*PAIR_KEYS, "seed"])["value"]
    rows = []
    for key, part in values[values["strategy"] != baseline].groupby(list(CONFIG_KEYS), sort=True, dropna=False):
        config = dict(zip(CONFIG_KEYS, key))
        own = part.set_index([*PAIR_KEYS, "seed"])["value"]
        both = own.index.intersection(base.index)
        if both.empty:
            continue
        diff = (own.loc[both] - base.loc[both]).dropna()
        if diff.empty:
            continue
        n = len(diff)
        mean, std = float(diff.mean()), float(diff.std())  # ddof=1: NaN for one pair
        half = float(ci95(std, n))
        low, high = mean - half, mean + half
        outcome = "win" if low > 0 else "loss" if high < 0 else "tie"  # NaN bounds (one pair): a tie
        rows.append({**config, "baseline": baseline, "quantity": quantity, "round": round_of[config["dataset"]],
                     "n_pairs": n, "mean": mean, "std": std, "ci95": half, "low": low, "high": high,
                     "outcome": outcome})
    return rows


PAIRED_COLUMNS = (*CONFIG_KEYS, "baseline", "quantity", "round", "n_pairs", "mean", "std", "ci95", "low", "high",
                  "outcome")


def paired_differences(
    source, baseline: str = BASELINE, metric: str = "test_acc", at_round: int | None = None, **filters
) -> pd.DataFrame:
    """Per-seed differences against ``baseline``: ``metric`` at ``at_round`` and AULC vs labeled images.

    One row per configuration (other than the baseline's), dataset and quantity
    (``metric``, or ``aulc``): the baseline is the run of ``baseline`` with the same
    dataset, learner, backbone, student, budget per class and seed. ``round`` is the
    round compared (``at_round``, default each dataset's last; for ``aulc`` the round the
    curves are integrated up to), ``n_pairs`` the seeds both have, ``mean``/``std`` over those
    differences, ``ci95`` the CI's half-width, ``low``/``high`` its bounds and ``outcome``
    ``win`` (CI above 0), ``loss`` (below 0) or ``tie`` (contains 0, or undefined for
    one pair). Configurations without a baseline run are left out.
    """
    df = select(_records(source), **filters)
    if baseline not in set(df["strategy"]):
        raise AnalysisError(f"no runs of the baseline strategy {baseline!r} to pair with")
    at, wanted = _at_rounds(df, at_round)
    at = at.rename(columns={metric: "value"})
    rows = _paired(at, baseline, metric, wanted)
    per_run = run_aulc(df, "n_labeled", metric, at_round).rename(columns={"aulc": "value"})
    rows += _paired(per_run, baseline, "aulc", wanted)
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def paired_table(paired: pd.DataFrame, quantity: str, metric: str = "test_acc") -> Table:
    """One quantity of :func:`paired_differences` as configurations x datasets: mean difference ± 95% CI,
    then the configuration's ``wins``, ``ties`` and ``losses`` over the datasets it was compared on."""
    part = paired[paired["quantity"] == quantity]
    if part.empty:
        raise AnalysisError(f"no paired differences of {quantity!r}")
    datasets = sorted(part["dataset"].unique())
    keys = row_keys(part)
    wide = part.set_index([*keys, "dataset"])
    mean = wide["mean"].unstack("dataset").reindex(columns=datasets)
    spread = wide["ci95"].unstack("dataset").reindex(columns=datasets)
    counts = part.groupby(keys, sort=True, dropna=False)["outcome"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["win", "tie", "loss"], fill_value=0).astype(float)
    for column, outcome in zip(OUTCOMES, counts.columns):
        mean[column] = counts[outcome]
    baseline = part["baseline"].iloc[0]
    rounds = {str(d): int(r) for d, r in part.groupby("dataset")["round"].max().items()}
    where = ", ".join(f"{d}: {r}" for d, r in sorted(rounds.items()))
    label = METRIC_LABELS.get(metric, metric)
    what = "AULC vs labeled images up to round" if quantity == "aulc" else f"{label} at round"
    title = (
        f"Paired difference against {baseline}, {what} ({where}): mean of the per-seed differences ± its 95% CI "
        f"(Student t over the seeds both have); wins / ties / losses over datasets: CI above 0 / containing 0 "
        f"(or undefined for one seed) / below 0"
    )
    scale, digits, _ = _style(metric)
    styles = {c: (1.0, 0, None) for c in OUTCOMES}
    return Table(title, mean, spread, True, scale, digits, styles=styles, no_best=OUTCOMES, spread_name="ci95",
                 signed=tuple(datasets))


def reach_table(
    data, metric: str = "test_acc", target: float | None = None, baseline: str = BASELINE,
    at_round: int | None = None, spread: str = "std", **filters,
) -> Table:
    """Labeled images and oracle queries each configuration needs to reach a target ``metric``.

    ``target`` (a fraction) applies to every dataset; None takes, per dataset, learner,
    backbone, student and budget per class, the ``baseline`` strategy's mean ``metric``
    at ``at_round`` (default the baseline's last round there); configurations without
    such a baseline are left out. Rows: dataset and configuration; columns: the target, the
    first round whose mean ``metric`` over seeds reaches it and that round's labeled
    images and oracle queries (mean ± spread over seeds); ``not reached`` where none does.
    """
    agg = select(_as_aggregate(data), **filters)
    if target is None:
        if baseline not in set(agg["strategy"]):
            raise AnalysisError(f"no runs of the baseline strategy {baseline!r} to take the target accuracy from")
        at, wanted = _at_rounds(agg[agg["strategy"] == baseline], at_round)
        targets = at.set_index(list(PAIR_KEYS))[f"{metric}_mean"]
    keys = ["dataset", *row_keys(agg)]
    check_spread(spread)
    rows, index = [], []
    for key, part in agg.groupby(list(CONFIG_KEYS), sort=True, dropna=False):
        config = dict(zip(CONFIG_KEYS, key))
        goal = target if target is not None else targets.get(tuple(config[k] for k in PAIR_KEYS), np.nan)
        if pd.isna(goal):
            continue
        part = part.sort_values("round")
        hit = part[part[f"{metric}_mean"] >= goal].head(1)
        row = {"target (%)": goal, "round": np.nan, "labeled": np.nan, "queried": np.nan,
               "labeled ±": np.nan, "queried ±": np.nan}
        if len(hit):
            h = hit.iloc[0]
            row.update({"round": h["round"], "labeled": h["n_labeled_mean"], "queried": h["n_queried_mean"],
                        "labeled ±": h[f"n_labeled_{spread}"], "queried ±": h[f"n_queried_{spread}"]})
        rows.append(row)
        index.append(tuple(config[k] for k in keys))
    if not rows:
        raise AnalysisError(f"no configuration shares its dataset, learner, backbone and budget with {baseline!r}")
    frame = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=keys)).astype(float)
    columns = ["target (%)", "round", "labeled", "queried"]
    mean = frame[columns]
    spread_frame = frame[["labeled ±", "queried ±"]].rename(columns=lambda c: c.removesuffix(" ±"))
    if target is not None:
        goal_text = f"{METRIC_LABELS.get(metric, metric)} {100 * target:.2f}"
    else:
        where = _rounds_text(at_round, wanted, last="its last round")
        goal_text = f"{baseline}'s mean {METRIC_LABELS.get(metric, metric)} at {where}"
    title = (
        f"Labeled images and oracle queries to reach {goal_text}: the first round whose mean over seeds reaches "
        f"it, no interpolation between rounds ({over_seeds_text(spread)}; {NOT_REACHED} where no round does)"
    )
    styles = {"target (%)": (100.0, 2, None), "round": (1.0, 0, None), "labeled": (1.0, 1, None),
              "queried": (1.0, 1, None)}  # fmt: skip
    return Table(title, mean, spread_frame, None, styles=styles, spread_name=spread, missing=NOT_REACHED)


def paper_tables(
    data, metric: str = "test_acc", at_round: int | None = None, zeroshot: bool = True, spread: str = "std",
    **filters,
) -> dict[str, Table]:
    """The main table (datasets at ``at_round`` + Average) and one by-round table per dataset.

    Keys: ``"main"`` and ``"rounds/<dataset>"``. With ``zeroshot`` (the default) each
    table starts with the zero-shot baseline rows (see :func:`zeroshot_baseline`);
    ``spread`` (``std`` or ``ci95``) is every table's ±.
    """
    agg = _as_aggregate(data)
    sel = select(agg, **filters)
    out = {"main": dataset_table(sel, metric, at_round, zeroshot=zeroshot, spread=spread)}
    for d in sorted(sel["dataset"].unique()):
        out[f"rounds/{d}"] = round_table(sel, metric, dataset=d, zeroshot=zeroshot, spread=spread)
    return out


__all__ = [
    "AULC_X", "AVERAGE", "BASELINE", "CONFIG_KEYS", "GROUP_KEYS", "METRICS", "NOT_REACHED", "OUTCOMES", "SPREADS",
    "ZEROSHOT", "Table", "aggregate", "aulc_table", "check_seeds", "ci95", "dataset_table", "encoding_table",
    "final_rounds", "key_text", "markdown_table", "over_seeds", "paired_differences", "paired_table", "paper_tables",
    "queries_table", "reach_table", "round_table", "row_keys", "run_aulc", "select", "timing_table",
    "trapezoid_mean", "with_derived", "zeroshot_baseline",
]  # fmt: skip
