"""The papers' analysis figures as report sections, by name.

Each analysis is ``fn(source, out, *, run_ids=None) -> Section``: it reads the stored runs
under ``source`` (all, or ``run_ids``: selections, pool probabilities, the experiment's
cached features; see :mod:`analysis.stored`), writes its figures and its tables (CSV)
into ``out``, and returns them with a short markdown text for report.md.
``raysvc report SOURCE --analysis NAME`` runs them (repeatable).

========== ====================================================================
akd-fig4   ActiveKD Fig. 4: teacher class imbalance, probability violins, distance to propagated centroids
akd-fig9   ActiveKD Fig. 9: bias propagation by round (KNN loss, cluster purity, active centroids)
akd-fig10  ActiveKD Fig. 10: selection criteria by round (uncertainty, class balance, diversities)
akd-fig11  ActiveKD Fig. 11: probability heatmaps of the selected images
akd-fig12  ActiveKD Fig. 12: the selected images
cb-fig6    CB Fig. 6: confidence histograms of class-wise vs unified prompts (eq. 15)
cb-fig7b   CB Fig. 7b: label accuracy of the built set by round
cb-fig15   CB Fig. 15: K-means ARI of image vs class-guided features by round
========== ====================================================================
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.tables import markdown_table


@dataclasses.dataclass(frozen=True)
class Section:
    """One analysis's part of report.md: its heading, text, figures (PNGs in the report folder) and tables."""

    title: str
    markdown: str
    figures: tuple[Path, ...]
    tables: Mapping[str, pd.DataFrame]

    def to_markdown(self, folder: Path) -> str:
        """The section as report.md shows it: heading, text, its figures relative to ``folder``."""
        lines = [f"## {self.title}", "", self.markdown, ""]
        for path in self.figures:
            lines += [f"![{path.stem}]({Path(path).relative_to(folder) if Path(path).is_relative_to(folder) else path})",
                      ""]
        return "\n".join(lines)


def section(out: Path, title: str, markdown: str, figures, tables: Mapping[str, pd.DataFrame]) -> Section:
    """A :class:`Section`, its tables written as ``<name>.csv`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    return Section(title, markdown, tuple(figures), dict(tables))


# ------------------------------------------------------------------ what the analyses share
def figure_grid(n: int, width: float = 4.4, height: float = 3.5, ncols: int | None = None):
    """An Agg figure with ``n`` visible panels in rows of ``ncols`` (at most 4): (figure, axes)."""
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path``; the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def mean_over_seeds(rows: list[dict], keys: list[str], values: list[str]) -> pd.DataFrame:
    """Per ``keys`` the mean of ``values`` over the runs (seeds) in ``rows``, with their number as ``seeds``."""
    frame = pd.DataFrame(rows)
    agg = frame.groupby(keys, sort=True)[values].mean().reset_index()
    agg.insert(len(keys), "seeds", frame.groupby(keys, sort=True).size().to_numpy())
    return agg


def frame_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """``frame`` as a markdown table, floats with ``digits`` decimals, the first column left-aligned."""
    cells = [[f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    return markdown_table(list(frame.columns), cells, n_left=1)


def file_name(name: str) -> str:
    """``name`` with every character a file name should not hold replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _lazy(module: str, function: str) -> Callable[..., Section]:
    """``module.function``, imported on the first call (the analyses import this module for :class:`Section`)."""

    def analysis(source, out: Path, *, run_ids=None) -> Section:
        return getattr(importlib.import_module(module), function)(source, Path(out), run_ids=run_ids)

    analysis.__name__ = analysis.__qualname__ = function
    analysis.__doc__ = f"{module}.{function}"
    return analysis


ANALYSES: dict[str, Callable[..., Section]] = {
    "akd-fig4": _lazy("analysis.kd_figures", "teacher_bias"),
    "akd-fig9": _lazy("analysis.kd_figures", "bias_propagation"),
    "akd-fig10": _lazy("analysis.kd_figures", "selection_criteria"),
    "akd-fig11": _lazy("analysis.kd_figures", "probability_heatmaps"),
    "akd-fig12": _lazy("analysis.kd_figures", "selected_images"),
    "cb-fig6": _lazy("analysis.cb_figures", "confidence_histograms"),
    "cb-fig7b": _lazy("analysis.cb_figures", "label_accuracy"),
    "cb-fig15": _lazy("analysis.cb_figures", "clustering_by_round"),
}
