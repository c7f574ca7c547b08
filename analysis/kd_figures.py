"""ActiveKD's analyses (PCoreSet paper, Sec. 3 and 4.2, Fig. 4, 9, 10, 11, 12) from stored runs.

Each analysis reads the runs' selections and stored pool probabilities (``--store-probs``)
and, where a figure is in feature space or needs the teacher, the run's experiment from
the feature cache (:mod:`analysis.stored`); none re-runs the loop. The official code
(erjui/PCoreSet @075a76a) holds no analysis script, and the paper's text gives the
formulas of these figures only in words, so each docstring says what it computes and
where it had to choose. Shared choices:

* The probabilities of round r are what round r's selection saw: the student trained
  through round r - 1 (round 1's: the 1-shot student of a run with ``initial_per_class``).
* The teacher is the VLM's zero-shot classifier on the run's pool (``kd-zeroshot``'s
  teacher); a ``kd-fewshot`` teacher is refitted every round and not stored.
* Distances in the probability simplex are Euclidean (the distance PCoreSet's k-center
  greedy uses, ``raysvc/strategies/pcoreset.py``).
* Teacher clusters: K-means with k = the number of classes (the paper leaves k blank), seed 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from sklearn.cluster import KMeans

from analysis.sections import Section, figure_grid, file_name, frame_markdown, mean_over_seeds, save_figure, section
from analysis.selections import class_balance
from analysis.stored import StoredRun, labels, stored_runs, with_probs
from raysvc.errors import AnalysisError

# thresholds of Fig. 4(c) (share of the pool within tau of its propagated centroid)
TAUS = tuple(round(t, 2) for t in np.linspace(0.05, 1.0, 20))
# the threshold Fig. 9's active-centroid count uses
ACTIVE_TAU = 0.2
# the KD learners' default CE-head weight (raysvc.learners.kd.KDOptions.alpha), for runs without one
DEFAULT_ALPHA = 0.5
SQRT2 = math.sqrt(2.0)  # the largest Euclidean distance between two probability vectors
MAX_HEATMAP_ROWS = 60
MAX_IMAGES = 16


# ------------------------------------------------------------------ formulas
def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Per row H(p) / log C, in [0, 1] (0 log 0 = 0): ActiveKD Fig. 10's "normalized Shannon entropy"."""
    p = np.asarray(probs, np.float64)
    if p.shape[1] < 2:
        return np.zeros(len(p))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1) / math.log(p.shape[1])


def mean_min_distance(points: np.ndarray, picks: np.ndarray, reference: np.ndarray, scale: float) -> float:
    """Mean over the picked rows of the Euclidean distance to the nearest other row among ``reference``
    and the other picks, divided by ``scale`` (ActiveKD Fig. 10's "normalized average minimum distance").

    Choices: a pick's nearest neighbour is taken among the labeled set before the round and the
    round's other picks (what a coreset greedy maximises, Sener & Savarese 2018); ``scale`` is the
    largest distance the space allows (2 between unit-norm features, sqrt 2 between probability
    vectors), so 1 is the most spread a batch can be. NaN when there is no other row.
    """
    x = np.asarray(points, np.float64)
    picks = np.asarray(picks, np.int64)
    others = np.union1d(np.asarray(reference, np.int64), picks)
    if len(picks) == 0 or len(others) < 2:
        return float("nan")
    d = np.sqrt(np.maximum(((x[picks, None, :] - x[None, others, :]) ** 2).sum(-1), 0.0))
    d[picks[:, None] == others[None, :]] = np.inf
    return float(d.min(axis=1).mean() / scale)


def teacher_clusters(teacher: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K-means of the teacher's predictions (ActiveKD Sec. 3, "we cluster teacher predictions via K-means"):
    (k, C) centroids and each row's cluster."""
    km = KMeans(n_clusters=min(k, len(teacher)), n_init=10, random_state=seed).fit(np.asarray(teacher, np.float64))
    return km.cluster_centers_, km.labels_


def propagated_centroids(centroids: np.ndarray, alpha: float) -> np.ndarray:
    """(K, C, C): centre [k, y] = alpha e_y + (1 - alpha) mu_k, ActiveKD Prop. 1/2 (eq. 13, 17): the
    student's optimum under KD is the weighted mean of the one-hot label and the teacher (Thm. 1, eq. 8).

    ``alpha`` weighs the label: the KD learners' CE-head weight at inference (DHO's alpha).
    """
    mu = np.asarray(centroids, np.float64)
    c = mu.shape[1]
    return alpha * np.eye(c)[None, :, :] + (1 - alpha) * mu[:, None, :]


def distance_to_propagated(student: np.ndarray, clusters: np.ndarray, labels_: np.ndarray,
                           centroids: np.ndarray, alpha: float) -> np.ndarray:
    """Per row ||p_S(x) - (alpha e_y + (1 - alpha) mu_k(x))||: the distance of Fig. 4(c) to the propagated
    centroid of the row's teacher cluster k(x) and true class y."""
    centres = propagated_centroids(centroids, alpha)[np.asarray(clusters), np.asarray(labels_)]
    return np.linalg.norm(np.asarray(student, np.float64) - centres, axis=1)


def knn_loss(student: np.ndarray, centroids: np.ndarray, alpha: float) -> float:
    """Fig. 9's KNN loss, as chosen here: the mean distance of each student prediction to its nearest
    propagated centroid among all K x C (no label needed: how well the student's predictions sit
    in the regions Prop. 1 predicts)."""
    centres = propagated_centroids(centroids, alpha).reshape(-1, np.shape(centroids)[1])
    s = np.asarray(student, np.float64)
    d = np.sqrt(np.maximum((s * s).sum(1)[:, None] - 2 * s @ centres.T + (centres * centres).sum(1)[None, :], 0.0))
    return float(d.min(axis=1).mean())


def cluster_purity(clusters: np.ndarray, reference: np.ndarray) -> float:
    """Purity of ``clusters`` against ``reference``: (1/N) sum over clusters of the size of its largest
    reference group (Manning et al. 2008, Sec. 16.3). Fig. 9 uses K-means of the student's predictions
    against the teacher's clusters: 1 when the student keeps the teacher's structure."""
    table = pd.crosstab(np.asarray(clusters), np.asarray(reference))
    return float(table.max(axis=1).sum() / len(clusters))


def active_centroids(distances: np.ndarray, centres: np.ndarray, tau: float) -> int:
    """How many distinct centres (ids) have at least one row within ``tau`` of them (Fig. 4(c)'s
    "number of active propagated centroids")."""
    return len(np.unique(np.asarray(centres)[np.asarray(distances) <= tau]))


# ------------------------------------------------------------------ figures
def prediction_alpha(run: StoredRun) -> float:
    """The CE head's weight the run's student predicted with: its ``alpha``, else its schedule
    variant's (:meth:`raysvc.learners.kd.KDOptions.mixing_alpha`); :data:`DEFAULT_ALPHA` for a
    learner without a KD head."""
    from raysvc.registry import LEARNERS

    learner = LEARNERS.part(run.config["learner"], run.config.get("learner_params") or {})
    teacher = getattr(learner.cls, "teacher_kind", "none")
    if teacher == "none" or not hasattr(learner.options, "mixing_alpha"):
        return DEFAULT_ALPHA
    return float(learner.options.mixing_alpha(teacher))


def _first_trained_round(run: StoredRun) -> int:
    """The first stored round whose probabilities come from a trained student (round 1 after a k-shot start)."""
    after = [r for r in run.probs_rounds if r >= 1]
    return min(after) if after else min(run.probs_rounds)


def _by_dataset(runs: Sequence[StoredRun]) -> dict[str, list[StoredRun]]:
    groups: dict[str, list[StoredRun]] = {}
    for run in runs:
        groups.setdefault(str(run.config["dataset"]), []).append(run)
    return groups


def _teacher(run: StoredRun) -> np.ndarray:
    experiment = run.experiment
    return experiment.encoded.zeroshot_probs(experiment.pool)


def _round_panels(agg: pd.DataFrame, metrics: dict[str, str], path: Path, title: str) -> Path:
    """One panel per metric against round, one line per label (mean over seeds)."""
    fig, axes = figure_grid(len(metrics))
    for ax, (column, name) in zip(axes, metrics.items()):
        for label, part in agg.groupby("label", sort=True):
            ax.plot(part["round"], part[column], marker="o", label=str(label))
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 5), fontsize="small")
    fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------ analyses
def teacher_bias(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """ActiveKD Fig. 4: (a) the teacher's class imbalance, (b) its probabilities per true class, (c) the
    distance of students to the propagated centroids (Sec. 3, "Empirical validation of Prop. 1").

    (a) pool images the zero-shot teacher predicts per class, sorted, beside the true counts.
    (b) chosen: one violin per true class (the first ten) of the teacher's probability of that class.
    (c) per run, the student of its first trained round (round 1 after a 1-shot start): the share
    of the pool within tau of its propagated centroid alpha e_y + (1 - alpha) mu_k(x), for tau in
    :data:`TAUS` (the paper's "average distance using a threshold": the threshold's reading is ours),
    the mean distance, and the active propagated centroids beside the teacher's active centroids.
    Compare a ``kd-*`` run with a ``no-distill`` one: the distilled student sits closer.
    """
    runs = with_probs(stored_runs(source, run_ids), "akd-fig4 (ActiveKD Fig. 4)")
    names = labels(runs, ("learner", "strategy", "dataset"))
    figures, imbalance_rows, distance_rows = [], [], []
    for dataset, group in _by_dataset(runs).items():
        experiment = group[0].experiment
        teacher = _teacher(group[0])
        truth = experiment.pool_labels
        c = teacher.shape[1]
        centroids, clusters = teacher_clusters(teacher, c)
        teacher_distance = np.linalg.norm(teacher - centroids[clusters], axis=1)
        predicted = np.bincount(teacher.argmax(1), minlength=c)
        true_counts = np.bincount(truth, minlength=c)
        classnames = experiment.dataset.classnames
        for k in range(c):
            imbalance_rows.append({"dataset": dataset, "class": classnames[k], "teacher_predicted": int(predicted[k]),
                                   "true": int(true_counts[k])})
        for run in group:
            round_ = _first_trained_round(run)
            d = distance_to_propagated(run.probs(round_), clusters, truth, centroids, prediction_alpha(run))
            ids = clusters * c + truth
            for tau in TAUS:
                distance_rows.append({
                    "dataset": dataset, "run_id": run.run_id, "label": names[run.run_id], "round": round_,
                    "tau": tau, "share_within": float((d <= tau).mean()), "mean_distance": float(d.mean()),
                    "active_student": active_centroids(d, ids, tau),
                    "active_teacher": active_centroids(teacher_distance, clusters, tau)})
        fig, (ax_a, ax_b, ax_c) = figure_grid(3)
        order = np.argsort(-predicted, kind="stable")
        ax_a.bar(np.arange(c), predicted[order], label="teacher's predictions")
        ax_a.plot(np.arange(c), true_counts[order], "k_", markersize=12, label="true")
        ax_a.set_xticks(np.arange(c), [classnames[k] for k in order], rotation=90, fontsize="x-small")
        ax_a.set_title("(a) pool images per predicted class")
        ax_a.legend(fontsize="small")
        shown = [k for k in range(min(c, 10)) if (truth == k).any()]
        ax_b.violinplot([teacher[truth == k, k] for k in shown], positions=np.arange(len(shown)), showmedians=True)
        ax_b.set_xticks(np.arange(len(shown)), [classnames[k] for k in shown], rotation=90, fontsize="x-small")
        ax_b.set_ylim(0, 1)
        ax_b.set_title("(b) teacher p(true class | x)")
        frame = pd.DataFrame([r for r in distance_rows if r["dataset"] == dataset])
        for label, part in frame.groupby("label", sort=True):
            mean = part.groupby("tau")["share_within"].mean()
            ax_c.plot(mean.index, mean.to_numpy(), marker=".", label=str(label))
        ax_c.set_xlabel("tau")
        ax_c.set_ylabel("share of pool within tau")
        ax_c.set_title("(c) students near propagated centroids")
        ax_c.legend(fontsize="small")
        fig.suptitle(f"ActiveKD Fig. 4 on {dataset}")
        figures.append(save_figure(fig, out / f"akd_fig4_{file_name(dataset)}.png"))
    imbalance = pd.DataFrame(imbalance_rows)
    distance = pd.DataFrame(distance_rows)
    summary = (distance[distance["tau"] == ACTIVE_TAU]
               .groupby(["dataset", "label"], sort=True)[["mean_distance", "share_within", "active_student",
                                                          "active_teacher"]].mean().reset_index())
    ratio = imbalance.groupby("dataset").apply(
        lambda g: g["teacher_predicted"].max() / max(g["teacher_predicted"].min(), 1), include_groups=False)
    text = (f"The zero-shot teacher's most predicted class gets {', '.join(f'{v:.1f}x' for v in ratio)} the pool "
            f"images of its least predicted (at least 1) ({', '.join(ratio.index)}). Students of each run's first "
            f"trained round against the propagated centroids alpha e_y + (1 - alpha) mu_k (k-means of the teacher, "
            f"k = classes); share within and active centroids at tau = {ACTIVE_TAU}:\n\n" + frame_markdown(summary))
    return section(out, "ActiveKD Fig. 4: teacher bias and its propagation", text, figures,
                   {"akd_fig4_imbalance": imbalance, "akd_fig4_distance": distance})


def bias_propagation(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """ActiveKD Fig. 9 (Sec. 4.2 [F2-2]): Fig. 4(c)'s propagation measures across rounds, per strategy
    (PCoreSet+R is ``pcoreset`` with ``reverse=true``).

    Per run and stored round: the mean distance to the propagated centroids (:func:`distance_to_propagated`),
    the KNN loss (:func:`knn_loss`), the cluster purity of K-means on the student's predictions (k = classes,
    seed 0) against the teacher's clusters (:func:`cluster_purity`), and the active propagated centroids at
    tau = :data:`ACTIVE_TAU`; means over seeds. The paper defines neither KNN loss nor purity in its
    text: these definitions are ours. Lower KNN loss and higher purity: more propagated bias.
    """
    runs = with_probs(stored_runs(source, run_ids), "akd-fig9 (ActiveKD Fig. 9)")
    names = labels(runs)
    rows = []
    for dataset, group in _by_dataset(runs).items():
        teacher = _teacher(group[0])
        truth = group[0].experiment.pool_labels
        c = teacher.shape[1]
        centroids, clusters = teacher_clusters(teacher, c)
        for run in group:
            alpha = prediction_alpha(run)
            for round_ in run.probs_rounds:
                student = run.probs(round_)
                d = distance_to_propagated(student, clusters, truth, centroids, alpha)
                _, student_clusters = teacher_clusters(student, c)  # the same K-means, on the student's predictions
                rows.append({"dataset": dataset, "label": names[run.run_id], "run_id": run.run_id, "round": round_,
                             "mean_distance": float(d.mean()), "knn_loss": knn_loss(student, centroids, alpha),
                             "cluster_purity": cluster_purity(student_clusters, clusters),
                             "active_centroids": active_centroids(d, clusters * c + truth, ACTIVE_TAU)})
    per_run = pd.DataFrame(rows)
    metrics = {"mean_distance": "distance to propagated centroid", "knn_loss": "KNN loss",
               "cluster_purity": "cluster purity", "active_centroids": f"active centroids (tau {ACTIVE_TAU})"}
    agg = mean_over_seeds(rows, ["dataset", "label", "round"], list(metrics))
    figures = [_round_panels(part, metrics, out / f"akd_fig9_{file_name(dataset)}.png",
                             f"ActiveKD Fig. 9 on {dataset}: bias propagation by round")
               for dataset, part in agg.groupby("dataset", sort=True)]
    last = agg.sort_values("round").groupby(["dataset", "label"], sort=True).tail(1)
    text = ("Per strategy, mean over seeds, at each strategy's last stored round (the student that round's "
            "selection saw); lower KNN loss and higher purity mean the student keeps more of the teacher's "
            "structure:\n\n" + frame_markdown(last[["label", "dataset", "round", "seeds", *metrics]]))
    return section(out, "ActiveKD Fig. 9: bias propagation across rounds", text, figures,
                   {"akd_fig9_runs": per_run, "akd_fig9": agg})


def selection_criteria(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """ActiveKD Fig. 10 (Sec. 4.2, "Active selection criteria"): what each round's picks score on four criteria.

    Per run and round r >= 1 with stored probabilities p (what round r's selection saw), over the
    round's picks (queries and pseudo-labels): uncertainty = mean :func:`normalised_entropy` of p;
    class balance = the normalised entropy of the picks' true classes
    (:func:`analysis.selections.class_balance`); feature and probability diversity =
    :func:`mean_min_distance` in image-embedding space (/2) and in p (/sqrt 2), against the labeled
    set before the round. Means over seeds (the paper averages over datasets too; here one panel set per
    dataset). Round 0 (a random k-shot start) is left out: no strategy chose it.
    """
    runs = with_probs(stored_runs(source, run_ids), "akd-fig10 (ActiveKD Fig. 10)")
    names = labels(runs)
    rows = []
    for run in runs:
        picks = run.selections
        features = run.pool_features()
        for round_ in [r for r in run.probs_rounds if r >= 1]:
            now = picks[picks["round"] == round_]
            if now.empty:
                continue
            probs = run.probs(round_)
            positions = now["position"].to_numpy()
            before = picks.loc[picks["round"] < round_, "position"].to_numpy()
            rows.append({"dataset": str(run.config["dataset"]), "label": names[run.run_id], "run_id": run.run_id,
                         "round": round_, "uncertainty": float(normalised_entropy(probs[positions]).mean()),
                         "class_balance": class_balance(now["true_label"].to_numpy(), run.n_classes),
                         "feature_diversity": mean_min_distance(features, positions, before, 2.0),
                         "probability_diversity": mean_min_distance(probs, positions, before, SQRT2)})
    if not rows:
        raise AnalysisError("akd-fig10 found no round >= 1 with both selections and stored probabilities")
    metrics = {"uncertainty": "uncertainty (norm. entropy)", "class_balance": "class balance (norm. entropy)",
               "feature_diversity": "feature diversity (norm. min dist.)",
               "probability_diversity": "probability diversity (norm. min dist.)"}
    agg = mean_over_seeds(rows, ["dataset", "label", "round"], list(metrics))
    figures = [_round_panels(part, metrics, out / f"akd_fig10_{file_name(dataset)}.png",
                             f"ActiveKD Fig. 10 on {dataset}: selection criteria by round")
               for dataset, part in agg.groupby("dataset", sort=True)]
    overall = agg.groupby(["label"], sort=True)[list(metrics)].mean().reset_index()
    text = ("Each criterion of the round's picks, averaged over rounds, seeds and datasets (1 = most uncertain, "
            "most balanced, most spread):\n\n" + frame_markdown(overall))
    return section(out, "ActiveKD Fig. 10: selection criteria by round", text, figures,
                   {"akd_fig10_runs": pd.DataFrame(rows), "akd_fig10": agg})


def _heat_sets(runs: Sequence[StoredRun], names: dict[str, str]) -> list[tuple[str, StoredRun, np.ndarray]]:
    """(title, run, pool positions) per panel: the k-shot start of the first run that had one, then
    each run's round-1 picks."""
    sets = []
    start = next((r for r in runs if (r.selections["round"] == 0).any()), None)
    if start is not None:
        sets.append(("initial labeled set", start, start.selections.query("round == 0")["position"].to_numpy()))
    for run in runs:
        sets.append((f"{names[run.run_id]} (seed {run.config['seed']})", run,
                     run.selections.query("round == 1")["position"].to_numpy()))
    return sets


def probability_heatmaps(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """ActiveKD Fig. 11 (and Fig. 17, Sec. E.1): heatmaps of the probability vectors of the initial labeled
    set and of each run's round-1 picks, rows sorted by true class, under the student trained on the
    initial set (round 1's stored probabilities: what round 1's selection saw).

    Beside each panel: how many distinct classes the picks' argmax covers and their mean normalised
    entropy (chosen summaries of "diverse probabilistic characteristics").
    """
    runs = with_probs(stored_runs(source, run_ids), "akd-fig11 (ActiveKD Fig. 11)")
    for run in runs:
        if 1 not in run.probs_rounds:
            run.probs(1)  # the one-line error naming the run
    names = labels(runs)
    sets = _heat_sets(runs, names)
    fig, axes = figure_grid(len(sets), width=3.6, height=3.6)
    rows = []
    for ax, (title, run, positions) in zip(axes, sets):
        probs = run.probs(1)
        truth = run.experiment.pool_labels
        positions = positions[np.argsort(truth[positions], kind="stable")][:MAX_HEATMAP_ROWS]
        image = ax.imshow(probs[positions], aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("class")
        ax.set_ylabel("selected image (by true class)")
        rows.append({"panel": title, "run_id": run.run_id, "images": len(positions),
                     "argmax_classes": len(np.unique(probs[positions].argmax(1))) if len(positions) else 0,
                     "mean_norm_entropy": float(normalised_entropy(probs[positions]).mean())
                     if len(positions) else float("nan")})
    fig.colorbar(image, ax=axes, shrink=0.8, label="probability")
    fig.suptitle("ActiveKD Fig. 11: probabilities of the selected images (student after the initial set)")
    path = save_figure(fig, out / "akd_fig11.png")
    table = pd.DataFrame(rows)
    text = "Round 1's pool probabilities of each set's images:\n\n" + frame_markdown(table.drop(columns="run_id"))
    return section(out, "ActiveKD Fig. 11: probability heatmaps of selected images", text, [path],
                   {"akd_fig11": table})


def selected_images(source, out: Path, *, run_ids: Sequence[str] | None = None) -> Section:
    """ActiveKD Fig. 12 (and Fig. 18-24, Sec. E.2): the images each run picked in round 1 (up to
    :data:`MAX_IMAGES` per run, queries first), titled with their true class. Needs only the selections
    and the dataset's images, not stored probabilities."""
    runs = stored_runs(source, run_ids)
    names = labels(runs)
    rows, figures = [], []
    for run in runs:
        picks = run.selections.query("round == 1").head(MAX_IMAGES)
        experiment = run.experiment
        classnames = experiment.dataset.classnames
        ncols = min(8, max(len(picks), 1))
        fig, axes = figure_grid(max(len(picks), 1), width=1.6, height=1.8, ncols=ncols)
        for ax, pick in zip(axes, picks.itertuples()):
            ax.imshow(experiment.dataset.load(int(experiment.pool[pick.position])))
            ax.set_title(classnames[pick.true_label], fontsize="x-small")
            ax.set_axis_off()
            rows.append({"run_id": run.run_id, "label": names[run.run_id], "round": 1, "position": int(pick.position),
                         "item": pick.item, "kind": pick.kind, "true_class": classnames[pick.true_label]})
        if picks.empty:
            axes[0].set_axis_off()
            axes[0].set_title("no round-1 picks", fontsize="small")
        fig.suptitle(f"{names[run.run_id]}, seed {run.config['seed']}: round 1", fontsize="small")
        figures.append(save_figure(fig, out / f"akd_fig12_{file_name(run.run_id)}.png"))
    table = pd.DataFrame(rows, columns=["run_id", "label", "round", "position", "item", "kind", "true_class"])
    counts = table.groupby("label", sort=True).agg(images=("item", "size"), classes=("true_class", "nunique"))
    text = ("Round 1's picks per run (distinct true classes among them):\n\n"
            + frame_markdown(counts.reset_index()))
    return section(out, "ActiveKD Fig. 12: selected images", text, figures, {"akd_fig12": table})
