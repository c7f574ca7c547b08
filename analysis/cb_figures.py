"""The CB paper's analyses (Kim et al., active prompt learning: Fig. 6, 7b, 15) from stored runs.

Each reads the runs' selections and, for Fig. 6 and 15, the stored pool probabilities
(``--store-probs``) and the run's cached features (:mod:`analysis.stored`); none re-runs
the loop. ml-postech/active-prompt-learning holds no script for these figures, so each
docstring cites the paper and says where it had to choose. The probabilities of round r
are what round r's selection saw: the prompts trained through round r - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.clusters import cluster_analysis, kmeans_ari
from analysis.sections import Section, figure_grid, file_name, frame_markdown, mean_over_seeds, save_figure, section
from analysis.stored import StoredRun, labels, stored_runs, with_probs
from raysvc.strategies._guided import class_guided_features

BINS = 50  # "50-bin histograms" (Sec. 5.3, Fig. 6)


# ------------------------------------------------------------------ formulas
def confidence_scores(probs: np.ndarray, positions: np.ndarray, labels_: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) eq. 15: s_c = mean over the images of class c among ``positions`` of p(c | x), with
    ``labels_`` the class of each position; NaN for a class with no image there."""
    positions = np.asarray(positions, np.int64)
    labels_ = np.asarray(labels_, np.int64)
    own = np.asarray(probs, np.float64)[positions, labels_]
    total = np.bincount(labels_, weights=own, minlength=n_classes)
    count = np.bincount(labels_, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def confidence_histogram(scores: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the finite ``scores`` in ``bins`` equal bins over [0, 1] (the last bin holds 1), and the edges."""
    scores = np.asarray(scores, np.float64)
    return np.histogram(scores[np.isfinite(scores)], bins=bins, range=(0.0, 1.0))


def built_set_accuracy(selections: pd.DataFrame) -> pd.DataFrame:
    """Fig. 7b: per round, the share of every label given so far (oracle queries and pseudo-labels, all
    rounds up to this one) that equals the true label; with the labeled, queried and pseudo-labeled counts."""
    rows = []
    for round_ in sorted(selections["round"].unique()):
        built = selections[selections["round"] <= round_]
        rows.append({"round": int(round_), "labeled": len(built), "queried": int((built["kind"] == "query").sum()),
                     "pseudo": int((built["kind"] == "pseudo").sum()),
                     "label_accuracy": float((built["label"] == built["true_label"]).mean())})
    return pd.DataFrame(rows, columns=["round", "labeled", "queried", "pseudo", "label_accuracy"])


# ------------------------------------------------------------------ analyses
def _prompt_kind(run: StoredRun) -> str:
    return str(run.option("learner", "prompt") or run.config["learner"])


def confidence_histograms(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """CB Fig. 6 (Sec. 5.3, "Confidence distributions by prompt type"): 50-bin histograms of the per-class
    mean confidence s_c (eq. 15) on the trained images and on the rest of the pool, one panel per prompt
    kind (the CoOp learner's ``prompt``: unified, classwise, both), dotted lines at the means.

    Per run, the prompts of its last stored round r (trained through round r - 1): the trained set is
    every image selected before round r, scored with the label it was trained on (a pseudo-label
    included); the rest of the pool with its true label. The paper fixes a 4-shot set on StanfordCars;
    here it is whatever the run had built (choice). Class-wise prompts overfit: trained >> untrained.
    """
    runs = with_probs(stored_runs(source, run_ids), "cb-fig6 (CB Fig. 6)")
    rows, scores = [], {}
    for run in runs:
        round_ = max(run.probs_rounds)
        probs = run.probs(round_)
        picks = run.selections[run.selections["round"] < round_]
        truth = run.experiment.pool_labels
        trained = picks["position"].to_numpy()
        rest = np.setdiff1d(np.arange(len(probs)), trained)
        kind = _prompt_kind(run)
        s_trained = confidence_scores(probs, trained, picks["label"].to_numpy(), run.n_classes)
        s_rest = confidence_scores(probs, rest, truth[rest], run.n_classes)
        scores.setdefault(kind, {"trained": [], "untrained": []})
        scores[kind]["trained"].append(s_trained)
        scores[kind]["untrained"].append(s_rest)
        rows.append({"prompt": kind, "run_id": run.run_id, "round": round_, "trained_images": len(trained),
                     "trained_mean": float(np.nanmean(s_trained)) if np.isfinite(s_trained).any() else float("nan"),
                     "untrained_mean": float(np.nanmean(s_rest)) if np.isfinite(s_rest).any() else float("nan")})
    fig, axes = figure_grid(len(scores))
    hist_rows = []
    for ax, (kind, sets) in zip(axes, sorted(scores.items())):
        for name, colour in (("trained", "tab:blue"), ("untrained", "tab:red")):
            values = np.concatenate(sets[name])
            counts, edges = confidence_histogram(values)
            ax.stairs(counts, edges, fill=True, alpha=0.5, color=colour, label=name)
            if np.isfinite(values).any():
                ax.axvline(np.nanmean(values), color=colour, linestyle=":")
            hist_rows += [{"prompt": kind, "set": name, "bin_low": lo, "bin_high": hi, "count": int(n)}
                          for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
        ax.set_title(f"{kind} prompt")
        ax.set_xlabel("per-class mean confidence s_c (eq. 15)")
        ax.set_xlim(0, 1)
        ax.legend(fontsize="small")
    fig.suptitle("CB Fig. 6: confidence of trained vs untrained images")
    path = save_figure(fig, out / "cb_fig6.png")
    table = pd.DataFrame(rows)
    summary = table.groupby("prompt", sort=True)[["trained_mean", "untrained_mean"]].mean().reset_index()
    summary["gap"] = summary["trained_mean"] - summary["untrained_mean"]
    text = ("Mean over classes of s_c (eq. 15) on the images each run trained on and on the rest of its pool, "
            "averaged over runs of a prompt kind (a larger gap: more overfitting):\n\n" + frame_markdown(summary))
    return section(out, "CB Fig. 6: confidence by prompt type", text, [path],
                   {"cb_fig6_runs": table, "cb_fig6_histograms": pd.DataFrame(hist_rows)})


def label_accuracy(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """CB Fig. 7b (Sec. 5.3, "Analyses of constructed datasets"): the label accuracy of the built set by
    round (:func:`built_set_accuracy`), per strategy, mean over seeds; 1 for strategies that only query.
    Needs only the selections."""
    runs = stored_runs(source, run_ids)
    names = labels(runs)
    rows = []
    for run in runs:
        for row in built_set_accuracy(run.selections).to_dict("records"):
            rows.append({"dataset": str(run.config["dataset"]), "label": names[run.run_id], "run_id": run.run_id, **row})
    metrics = {"label_accuracy": "label accuracy of the built set", "labeled": "labeled images",
               "queried": "oracle queries"}
    agg = mean_over_seeds(rows, ["dataset", "label", "round"], list(metrics))
    fig, axes = figure_grid(2)
    for label, part in agg.groupby(["dataset", "label"], sort=True):
        name = " / ".join(label) if agg["dataset"].nunique() > 1 else label[1]
        axes[0].plot(part["round"], part["label_accuracy"], marker="o", label=name)
        axes[1].plot(part["round"], part["queried"], marker="o", label=name)
    axes[0].set_title("(b) label accuracy of the built set")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_title("oracle queries so far")
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize="small")
    fig.suptitle("CB Fig. 7: constructed datasets")
    path = save_figure(fig, out / "cb_fig7b.png")
    last = agg.sort_values("round").groupby(["dataset", "label"], sort=True).tail(1)
    text = ("At each strategy's last round, mean over seeds:\n\n"
            + frame_markdown(last[["label", "dataset", "round", "seeds", "labeled", "queried", "label_accuracy"]]))
    return section(out, "CB Fig. 7b: label accuracy of the built set", text, [path],
                   {"cb_fig7b_runs": pd.DataFrame(rows), "cb_fig7b": agg})


def clustering_by_round(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """CB Fig. 15 (App. C, "Class-guided clustering across different rounds"): the ARI between the true
    classes and K-means (k = classes, seed 0) on image features and on class-guided features
    ``[f(x) ; sum_c p(c|x) t_c]`` (eq. 7, official normalisation) with each stored round's probabilities;
    per strategy, mean over seeds; and the t-SNE of the first run's first and last stored rounds
    (:func:`analysis.clusters.cluster_analysis`).

    Choice: t_c are the dataset's class prompt embeddings; the prompts the run learned are not stored,
    so the rounds differ through p only.
    """
    runs = with_probs(stored_runs(source, run_ids), "cb-fig15 (CB Fig. 15)")
    names = labels(runs)
    rows = []
    for run in runs:
        features = run.pool_features()
        truth = run.experiment.pool_labels
        text = run.experiment.encoded.text_features
        ari_image = kmeans_ari(features, truth, run.n_classes)
        for round_ in run.probs_rounds:
            guided = class_guided_features(features, run.probs(round_), text)
            rows.append({"dataset": str(run.config["dataset"]), "label": names[run.run_id], "run_id": run.run_id,
                         "round": round_, "ari_image": ari_image,
                         "ari_guided": kmeans_ari(guided, truth, run.n_classes)})
    agg = mean_over_seeds(rows, ["dataset", "label", "round"], ["ari_image", "ari_guided"])
    fig, axes = figure_grid(1, width=5.5)
    for (dataset, label), part in agg.groupby(["dataset", "label"], sort=True):
        name = f"{dataset} / {label}" if agg["dataset"].nunique() > 1 else label
        line, = axes[0].plot(part["round"], part["ari_guided"], marker="o", label=f"{name}: class-guided")
        axes[0].plot(part["round"], part["ari_image"], linestyle="--", color=line.get_color(), label=f"{name}: image")
    axes[0].set_xlabel("round")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("K-means ARI")
    axes[0].legend(fontsize="x-small")
    fig.suptitle("CB Fig. 15: class-guided clustering across rounds")
    figures = [save_figure(fig, out / "cb_fig15.png")]
    first = runs[0]
    features = first.pool_features()
    for round_ in sorted({min(first.probs_rounds), max(first.probs_rounds)}):
        result = cluster_analysis(features, first.experiment.encoded.text_features, first.experiment.pool_labels,
                                  out / f"cb_fig15_tsne_{file_name(first.run_id)}_r{round_:03d}.png",
                                  probs=first.probs(round_), classnames=first.experiment.dataset.classnames,
                                  title=f"{names[first.run_id]}, seed {first.config['seed']}: round {round_}")
        figures.append(result.path)
    text_md = ("K-means ARI against the true classes, mean over seeds, first and last stored round:\n\n"
               + frame_markdown(pd.concat([agg.sort_values("round").groupby(["dataset", "label"]).head(1),
                                      agg.sort_values("round").groupby(["dataset", "label"]).tail(1)])
                           .drop_duplicates().sort_values(["label", "round"])[
                               ["label", "dataset", "round", "seeds", "ari_image", "ari_guided"]]))
    return section(out, "CB Fig. 15: class-guided clustering across rounds", text_md, figures,
                   {"cb_fig15_runs": pd.DataFrame(rows), "cb_fig15": agg})
