"""Figures of active-learning results (PNG, matplotlib's Agg canvas, no pyplot state).

Every function takes results (a destination, a records DataFrame or the output of
:func:`analysis.tables.aggregate`), an output path and optional filters (``learner=``,
``backbone=``, ...), and returns a :class:`FigureResult`: the PNG's path, the number of
curves drawn per panel (panel title -> count) and the matplotlib Figure itself, so a
caller can check what was drawn (``len(ax.get_lines())`` per axes equals the count:
every curve is exactly one Line2D; std bands are PolyCollections, legends live on the
figure, not on an axes).

One curve per configuration (strategy plus any other configuration key that varies),
with the same colour for a configuration in every panel. Bands are mean ± std over
seeds and are left out where std is undefined (one seed).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.tables import AVERAGE, METRIC_LABELS, _as_aggregate, is_accuracy, row_keys, select

NO_DATA = "no selective querying"


@dataclasses.dataclass
class FigureResult:
    path: Path
    curves: dict[str, int]  # panel title -> curves (Line2D) drawn on it
    figure: Figure

    @property
    def panels(self) -> list[str]:
        return list(self.curves)


def _label(key) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return " / ".join(str(p) if str(p) != "" else "-" for p in parts)


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


def _curve(ax, x, y, s, colour, label, band: bool = True) -> None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ax.plot(x, y, marker="o", markersize=3, color=colour, label=label)
    if band and s is not None:
        s = np.asarray(s, float)
        ok = np.isfinite(s) & np.isfinite(y)
        if ok.any():
            ax.fill_between(x, y - np.where(ok, s, 0), y + np.where(ok, s, 0), where=ok, color=colour, alpha=0.18,
                            linewidth=0, interpolate=True)


def _finish(fig: Figure, axes: list, out_path, colours: dict) -> Path:
    handles, labels, seen = [], [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen:
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    order = [labels.index(lab) for lab in colours if lab in labels]
    if handles:
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center",
                   ncols=min(4, len(order)), fontsize="small")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _configs(sel: pd.DataFrame) -> tuple[list[str], dict[str, pd.DataFrame], dict]:
    keys = row_keys(sel)
    groups = {}
    for key, part in sel.groupby(keys, sort=True, dropna=False):
        groups[_label(key)] = part
    labels = list(groups)
    return keys, groups, _colours(labels)


def accuracy_vs_round(data, out_path, metric: str = "test_acc", average: bool = True, **filters) -> FigureResult:
    """``metric`` vs round, mean ± std band; one panel per dataset plus an Average panel.

    The Average panel (drawn when there are two or more datasets) shows, per
    configuration, the mean over datasets at each round every dataset reached; a
    configuration missing from a dataset is not drawn there. It has no band.
    """
    sel = select(_as_aggregate(data), **filters)
    _, groups, colours = _configs(sel)
    datasets = sorted(sel["dataset"].unique())
    panels = datasets + ([AVERAGE] if average and len(datasets) > 1 else [])
    label = METRIC_LABELS.get(metric, metric)
    fig, axes = _grid(len(panels), f"{label} by round")
    scale = 100.0 if is_accuracy(metric) else 1.0
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
                _curve(ax, p["round"], p[f"{metric}_mean"] * scale, p[f"{metric}_std"] * scale, colours[lab], lab)
            n += 1
        curves[panel] = n
        ax.set_title(panel if panel != AVERAGE else f"{AVERAGE} over {len(datasets)} datasets")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return FigureResult(_finish(fig, axes, out_path, colours), curves, fig)


def accuracy_vs_queries(data, out_path, metric: str = "test_acc", **filters) -> FigureResult:
    """``metric`` vs oracle queries spent (mean over seeds), one panel per dataset, std band in y."""
    sel = select(_as_aggregate(data), **filters)
    _, groups, colours = _configs(sel)
    datasets = sorted(sel["dataset"].unique())
    label = METRIC_LABELS.get(metric, metric)
    fig, axes = _grid(len(datasets), f"{label} vs oracle queries spent")
    scale = 100.0 if is_accuracy(metric) else 1.0
    curves = {}
    for ax, panel in zip(axes, datasets):
        n = 0
        for lab, part in groups.items():
            p = part[part["dataset"] == panel].sort_values("round")
            if p.empty:
                continue
            _curve(ax, p["n_queried_mean"], p[f"{metric}_mean"] * scale, p[f"{metric}_std"] * scale, colours[lab], lab)
            n += 1
        curves[panel] = n
        ax.set_title(panel)
        ax.set_xlabel("oracle queries (cumulative)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return FigureResult(_finish(fig, axes, out_path, colours), curves, fig)


def queries_saved(data, out_path, **filters) -> FigureResult:
    """Oracle queries saved by selective querying (labeled - queried, cumulative) per round.

    One panel per dataset; only configurations that saved a query somewhere on that
    dataset are drawn (a panel without any says so and counts 0 curves).
    """
    sel = select(_as_aggregate(data), **filters)
    _, groups, colours = _configs(sel)
    datasets = sorted(sel["dataset"].unique())
    fig, axes = _grid(len(datasets), "oracle queries saved by selective querying")
    curves = {}
    for ax, panel in zip(axes, datasets):
        n = 0
        for lab, part in groups.items():
            p = part[part["dataset"] == panel].sort_values("round")
            if p.empty or not (p["saved_mean"].fillna(0) > 0).any():
                continue
            _curve(ax, p["round"], p["saved_mean"], p["saved_std"], colours[lab], lab)
            n += 1
        if n == 0:
            ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", transform=ax.transAxes, color="grey")
        curves[panel] = n
        ax.set_title(panel)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("queries saved (cumulative)")
        ax.grid(alpha=0.3)
    return FigureResult(_finish(fig, axes, out_path, colours), curves, fig)


__all__ = ["FigureResult", "accuracy_vs_queries", "accuracy_vs_round", "queries_saved"]
