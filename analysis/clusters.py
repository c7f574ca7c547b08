"""Do class-guided features cluster by class better than image features? (Kim et al. 2024, fig. 3)

:func:`cluster_analysis` embeds the image features and the class-guided features
``[f(x) ; sum_c p(c|x) t_c]`` (from :func:`raysvc.strategies._guided.class_guided_features`,
each half L2-normalised) in 2-D with t-SNE, draws both coloured by the true class side
by side, and scores each feature set by the Adjusted Rand Index between the true
classes and K-means (k = number of classes, seeded). K-means runs on the features
themselves, not on the t-SNE map (t-SNE distorts distances; it is only for the eye).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from raysvc.errors import AnalysisError
from raysvc.strategies._guided import class_guided_features


def kmeans_ari(features: np.ndarray, labels: np.ndarray, n_clusters: int | None = None, seed: int = 0) -> float:
    """ARI between ``labels`` and K-means (k = number of classes unless given) on ``features``."""
    labels = np.asarray(labels)
    k = n_clusters or len(np.unique(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(features, np.float64))
    return float(adjusted_rand_score(labels, pred))


@dataclasses.dataclass
class ClusterResult:
    path: Path
    ari_image: float
    ari_guided: float
    n_points: int


def cluster_analysis(
    features: np.ndarray,
    text_features: np.ndarray,
    labels: np.ndarray,
    out_path,
    probs: np.ndarray,
    classnames: Sequence[str] | None = None,
    seed: int = 0,
    max_points: int | None = 2000,
    perplexity: float | None = None,
    title: str = "",
    threads: int | None = None,
) -> ClusterResult:
    """t-SNE of image vs class-guided features coloured by class, with K-means ARIs; a two-panel PNG.

    ``features`` (N, D) image embeddings, ``text_features`` (C, D) class text embeddings,
    ``labels`` (N,) true classes, ``probs`` (N, C) the model's class probabilities.
    ``max_points`` draws a seeded
    random subset first (t-SNE is quadratic); ``perplexity`` defaults to min(30, (n-1)/3).
    ``threads`` caps OpenMP/BLAS threads (default: 1 up to 1000 points, where spinning
    threads cost more than they give on a shared machine, else the libraries' default).
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    text_features = np.asarray(text_features, np.float32)
    n, c = len(features), len(text_features)
    if len(labels) != n:
        raise AnalysisError(f"{len(labels)} labels for {n} feature rows")
    probs = np.asarray(probs, np.float32)
    if probs.shape != (n, c):
        raise AnalysisError(f"probs have shape {probs.shape}, expected {(n, c)}")
    rng = np.random.default_rng(seed)
    if max_points is not None and n > max_points:
        keep = np.sort(rng.choice(n, max_points, replace=False))
        features, labels, probs = features[keep], labels[keep], probs[keep]
        n = max_points
    n_classes = len(np.unique(labels))
    if n < max(4, n_classes):
        raise AnalysisError(f"{n} points are too few to cluster {n_classes} classes")
    if threads is None and n <= 1000:
        threads = 1
    with threadpool_limits(limits=threads):
        return _cluster_plot(features, probs, text_features, labels, out_path, classnames, seed, n, perplexity, title)


def _cluster_plot(features, probs, text_features, labels, out_path, classnames, seed, n, perplexity, title):
    n_classes = len(np.unique(labels))
    sets = {"image features": features, "class-guided features": class_guided_features(features, probs, text_features)}
    aris = {name: kmeans_ari(x, labels, n_classes, seed) for name, x in sets.items()}
    perp = perplexity if perplexity is not None else min(30.0, max(2.0, (n - 1) / 3.0))

    fig = Figure(figsize=(11, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
    classes = np.unique(labels)
    for ax, (name, x) in zip(axes, sets.items()):
        tsne = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca")
        xy = tsne.fit_transform(np.asarray(x, np.float64))
        for i, cls in enumerate(classes):
            m = labels == cls
            name_c = classnames[int(cls)] if classnames is not None else str(cls)
            ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(i % cmap.N), label=name_c)
        ax.set_title(f"{name}: K-means ARI {aris[name]:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize="small", markerscale=2)
    if title:
        fig.suptitle(title)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return ClusterResult(path, aris["image features"], aris["class-guided features"], n)


def cluster_analysis_encoded(encoded, out_path, rows=None, classnames=None, **kwargs) -> ClusterResult:
    """:func:`cluster_analysis` of a :class:`raysvc.encoded.EncodedDataset` (zero-shot probs by default)."""
    rows = slice(None) if rows is None else rows
    kwargs.setdefault("probs", encoded.zeroshot_probs(rows))
    return cluster_analysis(
        encoded.image_features[rows], encoded.text_features, encoded.labels[rows], out_path,
        classnames=classnames, **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.clusters --dataset animal-mnist --backbone conse-lite0 --out DIR``."""
    import argparse

    from raysvc.experiment import assemble
    from raysvc.feature_settings import FeatureSettings
    from raysvc.featurecache import FeatureCache
    from raysvc.spec import RunSpec

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--backbone", default="conse-lite0")
    parser.add_argument("--max-points", type=int, default=2000, help="t-SNE and K-means on a seeded subset")
    parser.add_argument("--cache", help="feature cache (default: $RAYSVC_CACHE or ~/.cache/raysvc/features)")
    parser.add_argument("--out", default="report")
    args = parser.parse_args(argv)
    experiment = assemble(RunSpec(dataset=args.dataset, backbone=args.backbone).resolve(),
                          FeatureCache(FeatureSettings(cache_dir=args.cache)).encode)
    result = cluster_analysis_encoded(
        experiment.encoded, Path(args.out) / f"clusters_{experiment.dataset.name}.png",
        classnames=experiment.dataset.classnames, max_points=args.max_points,
        title=f"{experiment.dataset.name}, {args.backbone}, zero-shot probabilities",
    )
    print(f"{experiment.dataset.name} {args.backbone}: K-means ARI on image features {result.ari_image:.3f}, "
          f"on class-guided features {result.ari_guided:.3f} ({result.n_points} points) -> {result.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ClusterResult", "cluster_analysis", "cluster_analysis_encoded", "kmeans_ari"]
