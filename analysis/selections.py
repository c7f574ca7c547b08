"""What each round selected, summarised from a run's stored selections.

:func:`round_summary` turns the rows of :func:`analysis.load.load_selections` (one per
selected image) into one row per (run, round): how many images the oracle labelled and
how many got a pseudo-label, how many classes the picks cover, how evenly (the
normalised entropy of the picks' true classes: 1 when every class is picked equally
often, 0 when all picks are one class), and how accurate the pseudo-labels were. It is
what ``make demo`` and ``raysvc runs SOURCE --run ID`` print: on a small test split the
accuracy differences between strategies are noise, the choices are not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = ("queried", "pseudo", "classes", "balance", "pseudo_acc")


def class_balance(true_labels: np.ndarray, n_classes: int) -> float:
    """Normalised entropy H(p) / log C of the classes in ``true_labels`` (NaN for no pick, 0 for one class)."""
    if len(true_labels) == 0 or n_classes < 2:
        return float("nan")
    p = np.bincount(np.asarray(true_labels, dtype=np.int64), minlength=n_classes) / len(true_labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(n_classes))


def round_summary(selections: pd.DataFrame, n_classes: dict[str, int] | int) -> pd.DataFrame:
    """One row per (run_id, round) with :data:`SUMMARY_COLUMNS`; ``n_classes``: the classes of
    each run's dataset (by run_id), or one number for all."""
    rows = []
    for (run_id, round_), picks in selections.groupby(["run_id", "round"], sort=True):
        c = n_classes if isinstance(n_classes, int) else n_classes[run_id]
        pseudo = picks[picks["kind"] == "pseudo"]
        rows.append({
            "run_id": run_id, "round": int(round_), "queried": int((picks["kind"] == "query").sum()),
            "pseudo": len(pseudo), "classes": int(picks["true_label"].nunique()),
            "balance": class_balance(picks["true_label"].to_numpy(), c),
            "pseudo_acc": float((pseudo["label"] == pseudo["true_label"]).mean()) if len(pseudo) else float("nan"),
        })
    return pd.DataFrame(rows, columns=["run_id", "round", *SUMMARY_COLUMNS])
