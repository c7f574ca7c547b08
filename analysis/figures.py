"""Figures of active-learning results (PNG, matplotlib's Agg canvas, no pyplot state).

Every function takes results (a destination, a records DataFrame or the output of
:func:`analysis.tables.aggregate`), an output path and optional filters (``learner=``,
``backbone=``, ...), and returns a :class:`FigureResult`: the PNG's path, the number of
curves drawn per panel (panel title -> count) and the matplotlib Figure itself, so a
caller can check what was drawn (``len(ax.get_lines())`` per axes equals the count:
every curve is exactly one Line2D; bands are PolyCollections, the zero-shot
baseline is a dashed LineCollection, legends live on the figure, not on an axes).

One curve per configuration (strategy plus any other configuration key that varies),
with the same colour for a configuration in every panel. Lines are means over seeds;
bands are ± the ``spread`` over seeds: one std (ddof=1, the default) or the 95%
confidence interval of the mean (``spread="ci95"``, Student t; see
:mod:`analysis.tables`), left out where it is undefined (one seed). The legend says
which, and over how many seeds: its title gives n when every curve has the same n,
otherwise each curve's entry does ("random (n = 2)").

The accuracy figures draw the zero-shot accuracy (the backbone with no labels; mean
over the runs of that dataset and backbone, see
:func:`analysis.tables.zeroshot_baseline`) as a dashed horizontal line per backbone.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.sections import save_figure
from analysis.tables import (
    AVERAGE,
    METRIC_LABELS,
    SPREADS,
    ZEROSHOT,
    _as_aggregate,
    _wants_zeroshot,
    check_spread,
    is_accuracy,
    key_text,
    row_keys,
    select,
    zeroshot_baseline,
)

NO_DATA = "no selective querying"
BAND_ALPHA = 0.18
ZEROSHOT_STYLE = {"linestyles": "--", "linewidth": 1.4, "zorder": 1.5}
ZEROSHOT_COLOURS = ("0.25", "0.5", "0.65", "0.8")


@dataclasses.dataclass
class FigureResult:
    path: Path
    curves: dict[str, int]  # panel title -> curves (Line2D) drawn on it
    figure: Figure

    @property
    def panels(self) -> list[str]:
        return list(self.curves)


def _label(keys: list[str], key) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return " / ".join(key_text(k, p) if str(p) != "" else "-" for k, p in zip(keys, parts))


def _grid(n: int, title: str) -> tuple[Figure, list]:
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    fig.suptitle(title)
    return fig, axes[:n]


def _colours(labels: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _curve(ax, x, y, s, colour, label, band: bool = True) -> bool:
    """One mean curve (a Line2D) and its ± ``s`` band where defined; True when a band was drawn."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ax.plot(x, y, marker="o", markersize=3, color=colour, label=label)
    if band and s is not None:
        s = np.asarray(s, float)
        ok = np.isfinite(s) & np.isfinite(y)
        if ok.any():
            ax.fill_between(x, y - np.where(ok, s, 0), y + np.where(ok, s, 0), where=ok, color=colour,
                            alpha=BAND_ALPHA, linewidth=0, interpolate=True)
            return True
    return False


class _Seeds:
    """Seeds per curve (from ``n_seeds`` of what was drawn) and which curves got a band (of ``spread``)."""

    def __init__(self, spread: str = "std"):
        self.n: dict[str, set] = {}
        self.banded: set[str] = set()
        self.spread = SPREADS[check_spread(spread)]

    def add(self, label: str, part: pd.DataFrame, banded: bool) -> None:
        self.n.setdefault(label, set()).update(int(v) for v in part["n_seeds"])
        if banded:
            self.banded.add(label)

    @staticmethod
    def _n(values: set) -> str:
        lo, hi = min(values), max(values)
        return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"

    def legend(self) -> tuple[dict[str, str], str]:
        """(legend text per curve label, legend title): what the lines and bands are, with n."""
        if not self.n:
            return {}, ""
        kinds = {frozenset(v) for v in self.n.values()}
        if len(kinds) == 1 and len(next(iter(kinds))) == 1:
            (n,) = next(iter(kinds))
            if n > 1:
                return {}, f"mean ± {self.spread} over n = {n} seeds"
            return {}, f"one seed per curve (n = 1): no {self.spread} band"
        texts = {}
        for label, values in self.n.items():
            note = self._n(values) + ("" if label in self.banded else ", no band")
            texts[label] = f"{label} ({note})"
        return texts, f"mean ± {self.spread} over n seeds (n per curve)"


def _zeroshot(ax, values: dict[str, float], x_lo: float, x_hi: float) -> int:
    """Dashed horizontal zero-shot lines (one LineCollection per backbone); how many were drawn."""
    drawn = 0
    for i, (backbone, y) in enumerate(sorted(values.items())):
        if not np.isfinite(y):
            continue
        label = ZEROSHOT if len(values) == 1 else f"{ZEROSHOT} {backbone}"
        ax.hlines(y, x_lo, x_hi, colors=ZEROSHOT_COLOURS[i % len(ZEROSHOT_COLOURS)], label=label, **ZEROSHOT_STYLE)
        drawn += 1
    return drawn


def _x_range(ax) -> tuple[float, float] | None:
    xs = [x for line in ax.get_lines() for x in np.asarray(line.get_xdata(), float) if np.isfinite(x)]
    return (min(xs), max(xs)) if xs else None


def _finish(fig: Figure, axes: list, out_path, colours: dict, seeds: _Seeds | None = None) -> Path:
    handles, labels, seen = {}, [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen:
                seen.add(lab)
                handles[lab] = h
                labels.append(lab)
    texts, title = seeds.legend() if seeds is not None else ({}, "")
    banded = seeds.banded if seeds is not None else set()
    order = [lab for lab in colours if lab in handles] + [lab for lab in labels if lab not in colours]
    if order:
        entries = []
        for lab in order:
            if lab in banded:  # the band's colour behind the line: the entry shows both
                entries.append((Patch(color=colours[lab], alpha=BAND_ALPHA, linewidth=0), handles[lab]))
            else:
                entries.append(handles[lab])
        shown = [texts.get(lab, lab) for lab in order]
        # as many columns as fit the figure's width (about 7 points per character at this size)
        width = max(len(t) for t in shown) * 7 + 40
        ncols = max(1, min(4, len(order), int(fig.get_figwidth() * 72 // width)))
        fig.legend(entries, shown, loc="outside lower center", ncols=ncols, fontsize="small", title=title or None,
                   title_fontsize="small")
    return save_figure(fig, Path(out_path))


def _configs(sel: pd.DataFrame) -> tuple[list[str], dict[str, pd.DataFrame], dict]:
    keys = row_keys(sel)
    groups = {}
    for key, part in sel.groupby(keys, sort=True, dropna=False):
        groups[_label(keys, key)] = part
    labels = list(groups)
    return keys, groups, _colours(labels)


def accuracy_vs_round(
    data, out_path, metric: str = "test_acc", average: bool = True, spread: str = "std", **filters
) -> FigureResult:
    """``metric`` vs round, mean ± ``spread`` band; one panel per dataset plus an Average panel.

    The Average panel (drawn when there are two or more datasets) shows, per
    configuration, the mean over datasets at each round every dataset reached; a
    configuration missing from a dataset is not drawn there. It has no band. The
    zero-shot line there is the mean of the datasets' zero-shot accuracies.
    """
    sel = select(_as_aggregate(data), **filters)
    _, groups, colours = _configs(sel)
    datasets = sorted(sel["dataset"].unique())
    panels = datasets + ([AVERAGE] if average and len(datasets) > 1 else [])
    label = METRIC_LABELS.get(metric, metric)
    fig, axes = _grid(len(panels), f"{label} by round")
    scale = 100.0 if is_accuracy(metric) else 1.0
    zeroshot = _zeroshot_by_panel(sel, datasets, scale) if _wants_zeroshot(metric) else {}
    seeds = _Seeds(spread)
    curves = {}
    for ax, panel in zip(axes, panels):
        n = 0
        for lab, part in groups.items():
            if panel == AVERAGE:
                wide = part.pivot_table(index="round", columns="dataset", values=f"{metric}_mean", aggfunc="first")
                wide = wide.reindex(columns=datasets).dropna()
                if wide.empty:
                    continue
                _curve(ax, wide.index, wide.mean(axis=1) * scale, None, colours[lab], lab, band=False)
            else:
                p = part[part["dataset"] == panel].sort_values("round")
                if p.empty:
                    continue
                banded = _curve(ax, p["round"], p[f"{metric}_mean"] * scale, p[f"{metric}_{spread}"] * scale,
                                colours[lab], lab)
                seeds.add(lab, p, banded)
            n += 1
        curves[panel] = n
        span = _x_range(ax)
        if span is not None:
            _zeroshot(ax, zeroshot.get(panel, {}), *span)
        ax.set_title(panel if panel != AVERAGE else f"{AVERAGE} over {len(datasets)} datasets")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return FigureResult(_finish(fig, axes, out_path, colours, seeds), curves, fig)


def _zeroshot_by_panel(sel: pd.DataFrame, datasets: list[str], scale: float) -> dict[str, dict[str, float]]:
    """panel -> backbone -> zero-shot accuracy (scaled); the Average panel: mean over all datasets."""
    base = zeroshot_baseline(sel)
    out: dict[str, dict[str, float]] = {}
    for row in base.itertuples(index=False):
        out.setdefault(row.dataset, {})[row.backbone] = row.mean * scale
    wide = base.pivot(index="backbone", columns="dataset", values="mean").reindex(columns=datasets)
    out[AVERAGE] = {b: float(v) * scale for b, v in wide.mean(axis=1, skipna=False).items() if np.isfinite(v)}
    return out


def accuracy_vs_queries(data, out_path, metric: str = "test_acc", spread: str = "std", **filters) -> FigureResult:
    """``metric`` vs oracle queries spent (mean over seeds), one panel per dataset, ``spread`` band in y.

    Accuracy metrics get the dashed zero-shot line (zero queries spent) per backbone.
    """
    sel = select(_as_aggregate(data), **filters)
    _, groups, colours = _configs(sel)
    datasets = sorted(sel["dataset"].unique())
    label = METRIC_LABELS.get(metric, metric)
    fig, axes = _grid(len(datasets), f"{label} vs oracle queries spent")
    scale = 100.0 if is_accuracy(metric) else 1.0
    zeroshot = _zeroshot_by_panel(sel, datasets, scale) if _wants_zeroshot(metric) else {}
    seeds = _Seeds(spread)
    curves = {}
    for ax, panel in zip(axes, datasets):
        n = 0
        for lab, part in groups.items():
            p = part[part["dataset"] == panel].sort_values("round")
            if p.empty:
                continue
            banded = _curve(ax, p["n_queried_mean"], p[f"{metric}_mean"] * scale, p[f"{metric}_{spread}"] * scale,
                            colours[lab], lab)
            seeds.add(lab, p, banded)
            n += 1
        curves[panel] = n
        span = _x_range(ax)
        if span is not None:
            _zeroshot(ax, zeroshot.get(panel, {}), *span)
        ax.set_title(panel)
        ax.set_xlabel("oracle queries (cumulative)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return FigureResult(_finish(fig, axes, out_path, colours, seeds), curves, fig)


def queries_saved(data, out_path, spread: str = "std", **filters) -> FigureResult:
    """Oracle queries saved by selective querying (labeled - queried, cumulative) per round.

    One panel per dataset; only configurations that saved a query somewhere on that
    dataset are drawn (a panel without any says so and counts 0 curves).
    """
    sel = select(_as_aggregate(data), **filters)
    _, groups, colours = _configs(sel)
    datasets = sorted(sel["dataset"].unique())
    fig, axes = _grid(len(datasets), "oracle queries saved by selective querying")
    seeds = _Seeds(spread)
    curves = {}
    for ax, panel in zip(axes, datasets):
        n = 0
        for lab, part in groups.items():
            p = part[part["dataset"] == panel].sort_values("round")
            if p.empty or not (p["saved_mean"].fillna(0) > 0).any():
                continue
            seeds.add(lab, p, _curve(ax, p["round"], p["saved_mean"], p[f"saved_{spread}"], colours[lab], lab))
            n += 1
        if n == 0:
            ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", transform=ax.transAxes, color="grey")
        curves[panel] = n
        ax.set_title(panel)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("queries saved (cumulative)")
        ax.grid(alpha=0.3)
    return FigureResult(_finish(fig, axes, out_path, colours, seeds), curves, fig)


__all__ = ["FigureResult", "accuracy_vs_queries", "accuracy_vs_round", "queries_saved"]
