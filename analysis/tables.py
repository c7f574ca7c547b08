"""Mean and spread over seeds, and the tables a paper reports.

Aggregation (:func:`aggregate`): runs are grouped by configuration,
:data:`CONFIG_KEYS` = dataset x strategy x learner x backbone x student x budget, and
round; seeds are what the mean and standard deviation run over. ``student`` and
``budget`` are part of the configuration because runs that differ in them are different
experiments (a KD learner with two students, two budgets) and must never be averaged
together as if they were seeds. Two runs of one configuration with the same seed are an
error (one seed would count twice).

Conventions, decided once for every table and figure:

* ``std`` is the sample standard deviation (``ddof=1``) over seeds. With a single seed
  it is undefined and stays NaN (never 0, which would claim certainty): tables then
  print the mean alone, figures draw no band. ``n_seeds`` says how many seeds each
  cell averages; a round some seeds did not reach averages the seeds that did.
* Means and stds skip NaN values (``pseudo_acc`` is NaN while a run has no
  pseudo-label; ``teacher_acc`` without a teacher); a cell with no value is NaN and
  prints as ``–``.
* ``saved = n_labeled - n_queried`` (labels obtained without asking the oracle, i.e.
  selective querying's pseudo-labels) is computed per run and round, then aggregated.
* Accuracies print in percent with two decimals. The best cell of a column is the
  highest (lowest for seconds) *printed* value, so printed ties are all bold.
* An ``Average`` over datasets is given only for rows present in every dataset (NaN
  otherwise: an average over fewer datasets is not comparable).
* The zero-shot accuracy (the backbone with no labels at all; every round of a run
  records the same value) is a baseline per dataset and backbone: mean ± std over all
  runs of that dataset and backbone (:func:`zeroshot_baseline`). The paper tables show
  it as a ``zero-shot`` row first, never bold.
* Feature encoding is a one-time cost per dataset and backbone, charged to the first
  round of whichever run encoded first (the others hit the cache and record 0). It is
  summed over runs per dataset and backbone (:func:`encoding_table`), not averaged per
  strategy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.load import load_runs
from raysvc.errors import AnalysisError

CONFIG_KEYS = ("dataset", "strategy", "learner", "backbone", "student", "budget")
GROUP_KEYS = (*CONFIG_KEYS, "round")
METRICS = (
    "test_acc", "zeroshot_acc", "teacher_acc", "pseudo_acc", "n_labeled", "n_queried", "n_pseudo", "saved",
    "select_seconds", "train_seconds", "encode_seconds",
)  # fmt: skip
AVERAGE = "Average"
ZEROSHOT = "zero-shot"

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


# ----------------------------------------------------------------- aggregation
def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """The records plus derived columns (``saved``)."""
    out = df.copy()
    out["saved"] = out["n_labeled"] - out["n_queried"]
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


def aggregate(source) -> pd.DataFrame:
    """Mean and std over seeds per configuration and round.

    ``source`` is anything :func:`analysis.load.load_runs` accepts (a destination or a
    records DataFrame). Returns one row per :data:`GROUP_KEYS` with ``n_seeds`` and, per
    metric of :data:`METRICS`, ``<metric>_mean`` and ``<metric>_std`` (ddof=1; NaN for
    one seed), sorted by the group keys.
    """
    df = with_derived(load_runs(source))
    check_seeds(df)
    groups = df.groupby(list(GROUP_KEYS), sort=True, dropna=False)
    spec = {"n_seeds": ("seed", "nunique")}
    for m in METRICS:
        spec[f"{m}_mean"] = (m, "mean")
        spec[f"{m}_std"] = (m, "std")  # pandas: ddof=1, skips NaN, NaN for one value
    out = groups.agg(**spec).reset_index()
    return out


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
        values = [value] if isinstance(value, (str, int, np.integer)) else list(value)
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
    """A table of means (and stds) with its printing rules.

    ``mean`` and ``std`` have the same index (row labels) and columns; ``std`` is None
    where no spread applies. Columns listed in ``no_best`` are never marked; otherwise
    a column's best printed value is bold when ``higher_is_better`` is not None.
    ``scale``/``digits`` apply to every column unless ``styles`` names the column.
    ``baseline_mean``/``baseline_std`` (same index names and columns, or None) are
    reference rows such as ``zero-shot``: printed first, never bold, not compared.
    """

    title: str
    mean: pd.DataFrame
    std: pd.DataFrame | None = None
    higher_is_better: bool | None = True
    scale: float = 1.0
    digits: int = 2
    styles: dict = dataclasses.field(default_factory=dict)  # column -> (scale, digits, higher_is_better)
    no_best: tuple = ()
    baseline_mean: pd.DataFrame | None = None
    baseline_std: pd.DataFrame | None = None

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
        mean, std = (self.baseline_mean, self.baseline_std) if baseline else (self.mean, self.std)
        scale, digits, _ = self._style(col)
        m = mean.loc[row, col] if col in mean.columns else float("nan")
        if pd.isna(m):
            return "–"
        text = f"{float(m) * scale:.{digits}f}"
        if std is not None and col in std.columns:
            s = std.loc[row, col]
            if not pd.isna(s):
                text += f" ± {float(s) * scale:.{digits}f}"
        return f"**{text}**" if bold else text

    def to_markdown(self) -> str:
        best = self.best()
        names = [str(n) for n in self.mean.index.names]
        header = names + [str(c) for c in self.mean.columns]
        rows = []
        if self.baseline_mean is not None:
            for row in self.baseline_mean.index:
                labels = list(row) if isinstance(row, tuple) else [row]
                rows.append([str(v) for v in labels] + [self.cell(row, c, baseline=True) for c in self.mean.columns])
        for row in self.mean.index:
            labels = list(row) if isinstance(row, tuple) else [row]
            cells = [self.cell(row, c, bool(best.loc[row, c])) for c in self.mean.columns]
            rows.append([str(v) for v in labels] + cells)
        return markdown_table(header, rows, n_left=len(names))

    def to_frame(self) -> pd.DataFrame:
        """Flat, unscaled numbers for CSV: ``<column>`` means and ``<column> std``; baseline rows first."""
        parts = []
        if self.baseline_mean is not None:
            parts.append((self.baseline_mean, self.baseline_std))
        parts.append((self.mean, self.std))
        frames = []
        for mean, std in parts:
            out = pd.DataFrame(index=mean.index)
            for c in self.mean.columns:
                out[str(c)] = mean[c] if c in mean.columns else float("nan")
                if self.std is not None and c in self.std.columns:
                    out[f"{c} std"] = std[c] if std is not None and c in std.columns else float("nan")
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
    data, metric: str = "test_acc", dataset: str | None = None, rounds=None, zeroshot: bool = False, **filters
) -> Table:
    """Strategies as rows, rounds as columns: ``metric`` mean ± std over seeds on one dataset.

    ``dataset`` may be omitted when the results hold one; ``rounds`` limits the columns;
    other ``filters`` (learner=, backbone=, ...) narrow the rows. Rows are labelled by
    strategy plus every other configuration key that still varies. ``zeroshot`` adds
    the zero-shot baseline as reference rows (the same value in every round; see
    :func:`zeroshot_baseline`), for accuracy metrics other than ``zeroshot_acc``.
    """
    agg = _as_aggregate(data)
    if dataset is None:
        names = sorted(agg["dataset"].unique())
        if len(names) != 1:
            raise AnalysisError(f"results hold several datasets ({', '.join(names)}): name one")
        dataset = names[0]
    sel = select(agg, dataset=dataset, round=rounds, **filters)
    keys = row_keys(sel)
    mean, std = _pivot(sel, keys, "round", metric)
    scale, digits, higher = _style(metric)
    title = f"{METRIC_LABELS.get(metric, metric)} on {dataset} by round (mean ± std over seeds)"
    table = Table(title, mean, std, higher, scale, digits)
    if zeroshot and _wants_zeroshot(metric):
        base = zeroshot_baseline(select(agg, dataset=dataset, **filters))
        _add_baseline(table, base, keys, {c: dataset for c in mean.columns})
    return table


def _wants_zeroshot(metric: str) -> bool:
    return is_accuracy(metric) and metric != "zeroshot_acc"


def zeroshot_baseline(data, **filters) -> pd.DataFrame:
    """Zero-shot accuracy per (dataset, backbone): ``mean``, ``std`` (ddof=1) and ``n_runs`` over runs.

    Every round of a run records the same ``zeroshot_acc``; each run counts once. From an
    aggregate, each configuration contributes the round where most of its seeds are
    present, and the configurations' means and stds are pooled exactly over their runs.
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
        rows.append({"dataset": dataset, "backbone": backbone, "mean": mean, "std": std, "n_runs": int(total)})
    return pd.DataFrame(rows, columns=["dataset", "backbone", "mean", "std", "n_runs"])


def _add_baseline(table: Table, base: pd.DataFrame, keys: list[str], column_dataset: dict) -> None:
    """Put zero-shot rows (one per backbone) into ``table``; ``column_dataset`` maps its columns to datasets."""
    if base.empty:
        return
    index, means, stds = [], [], []
    for backbone, part in base.groupby("backbone", sort=True):
        by_dataset = part.set_index("dataset")
        label = tuple(ZEROSHOT if k == "strategy" else backbone if k == "backbone" else "" for k in keys)
        index.append(label if len(keys) > 1 else label[0])
        means.append({c: by_dataset["mean"].get(d, np.nan) for c, d in column_dataset.items()})
        stds.append({c: by_dataset["std"].get(d, np.nan) for c, d in column_dataset.items()})
    if len(keys) > 1:
        idx = pd.MultiIndex.from_tuples(index, names=table.mean.index.names)
    else:
        idx = pd.Index(index, name=table.mean.index.name)
    table.baseline_mean = pd.DataFrame(means, index=idx, columns=list(column_dataset)).astype(float)
    table.baseline_std = pd.DataFrame(stds, index=idx, columns=list(column_dataset)).astype(float)
    lo, hi = int(base["n_runs"].min()), int(base["n_runs"].max())
    n = f"n = {lo}" if lo == hi else f"n = {lo}–{hi} per dataset"
    table.title += (
        f"; zero-shot: the backbone with no labels, mean ± std over every run of the dataset and backbone ({n})"
    )



def _pivot(sel: pd.DataFrame, keys: list[str], column: str, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, std) frames: rows ``keys``, columns the values of ``column``; only combinations that exist."""
    frame = sel.set_index([*keys, column])[[f"{metric}_mean", f"{metric}_std"]]
    if frame.index.has_duplicates:
        raise AnalysisError(f"rows are not unique by {', '.join(keys)} and {column}: filter the results first")
    out = []
    for part in ("mean", "std"):
        wide = frame[f"{metric}_{part}"].unstack(column).sort_index()
        wide.columns = list(wide.columns)
        wide.columns.name = column
        out.append(wide)
    return out[0], out[1]


def final_rounds(agg: pd.DataFrame) -> dict[str, int]:
    """Each dataset's last round in ``agg``."""
    return {str(k): int(v) for k, v in agg.groupby("dataset")["round"].max().items()}


def dataset_table(
    data, metric: str = "test_acc", at_round: int | None = None, average: bool = True, zeroshot: bool = False,
    **filters,
) -> Table:
    """Strategies as rows, datasets as columns at one round, plus an ``Average`` column.

    ``at_round`` None takes each dataset's last round. The Average is the mean of a
    row's dataset means, NaN unless the row has a value on every dataset; it has no ±.
    ``zeroshot`` adds the zero-shot baseline rows (:func:`zeroshot_baseline`; it does
    not depend on the round), for accuracy metrics other than ``zeroshot_acc``.
    """
    agg = _as_aggregate(data)
    sel = select(agg, **filters)
    base = zeroshot_baseline(sel) if zeroshot and _wants_zeroshot(metric) else None
    datasets = sorted(sel["dataset"].unique())  # before picking the round: a dataset without it stays, as NaN
    last = final_rounds(sel)
    wanted = {d: (at_round if at_round is not None else r) for d, r in last.items()}
    sel = sel[[r == wanted[d] for d, r in zip(sel["dataset"], sel["round"])]]
    if sel.empty:
        raise AnalysisError(f"no results at round {at_round}")
    keys = row_keys(sel)
    mean, std = _pivot(sel, keys, "dataset", metric)
    mean, std = mean.reindex(columns=datasets), std.reindex(columns=datasets)
    if average and len(datasets) > 1:
        mean[AVERAGE] = mean[datasets].mean(axis=1, skipna=False)
    scale, digits, higher = _style(metric)
    where = f"round {at_round}" if at_round is not None else "each dataset's last round (" + ", ".join(
        f"{d}: {wanted[d]}" for d in datasets) + ")"
    title = f"{METRIC_LABELS.get(metric, metric)} at {where} (mean ± std over seeds)"
    table = Table(title, mean, std, higher, scale, digits)
    if base is not None:
        _add_baseline(table, base, keys, {d: d for d in datasets})
        if table.baseline_mean is not None and AVERAGE in mean.columns:
            table.baseline_mean[AVERAGE] = table.baseline_mean[datasets].mean(axis=1, skipna=False)
    return table


def queries_table(data, only_selective: bool = False, **filters) -> Table:
    """Oracle queries spent vs labeled-set size built, per configuration and round.

    Columns: labeled (oracle + pseudo), queried (oracle), saved = labeled - queried,
    pseudo-labels, pseudo-label accuracy (%), each mean ± std over seeds.
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
    std = pd.DataFrame({v: frame[f"{k}_std"] for k, v in cols.items()})
    styles = {v: (1.0, 1, None) for v in cols.values()}
    styles["pseudo-label acc (%)"] = (100.0, 2, None)
    return Table("Oracle queries spent vs labeled-set size (mean ± std over seeds)", mean, std, None,
                 styles=styles)


def timing_table(source, encode: bool = False, **filters) -> Table:
    """Seconds per stage per configuration: select and train per round, and their total per run.

    Per run: mean select/train seconds over its rounds and its total (select + train over
    all rounds); then mean ± std over seeds. The one-time feature encoding is left out:
    it is charged to whichever run encoded first, so averaging it per strategy misleads;
    see :func:`encoding_table`. ``encode=True`` gives the former view: an ``encode s/run``
    column and the encoding counted in the total.
    """
    df = load_runs(source)
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
    groups = per_run.groupby(keys, dropna=False, sort=True)
    mean = groups[list(names)].mean().rename(columns=names)
    std = groups[list(names)].std().rename(columns=names)
    title = "Seconds per stage (mean ± std over seeds)" + ("" if encode else "; feature encoding not included")
    return Table(title, mean, std, None, 1.0, 3)  # rows span datasets: no "best"


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


def paper_tables(
    data, metric: str = "test_acc", at_round: int | None = None, zeroshot: bool = True, **filters
) -> dict[str, Table]:
    """The main table (datasets at ``at_round`` + Average) and one by-round table per dataset.

    Keys: ``"main"`` and ``"rounds/<dataset>"``. With ``zeroshot`` (the default) each
    table starts with the zero-shot baseline rows (see :func:`zeroshot_baseline`).
    """
    agg = _as_aggregate(data)
    sel = select(agg, **filters)
    out = {"main": dataset_table(sel, metric, at_round, zeroshot=zeroshot)}
    for d in sorted(sel["dataset"].unique()):
        out[f"rounds/{d}"] = round_table(sel, metric, dataset=d, zeroshot=zeroshot)
    return out


__all__ = [
    "AVERAGE", "CONFIG_KEYS", "GROUP_KEYS", "METRICS", "ZEROSHOT", "Table", "aggregate", "check_seeds",
    "dataset_table", "encoding_table", "final_rounds", "markdown_table", "paper_tables", "queries_table",
    "round_table", "row_keys", "select", "timing_table", "with_derived", "zeroshot_baseline",
]  # fmt: skip
