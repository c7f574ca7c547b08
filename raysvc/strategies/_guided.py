"""Class-guided features (Kim et al. 2024, eq. 5-7) and the feature choice of cluster selectors.

A class-guided feature joins what an image looks like with what the current model
thinks it is: ``[f(x) ; sum_c p(c|x) t_c]`` with ``f(x)`` the image embedding and
``t_c`` the class text embeddings. Clustering on it separates images that look
alike but belong to different classes once the model can tell them apart.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from raysvc.chunks import COMPUTE_ROWS
from raysvc.errors import RaysvcBug
from raysvc.lazyrows import LazyRows
from raysvc.strategies._faiss import LARGE_POOL, as_f32, gather_f32, unit_rows
from raysvc.strategies.base import Pool

FeatureKind = Literal["image", "guided"]
FEATURE_KINDS = get_args(FeatureKind)


def class_guided_features(
    features: np.ndarray,
    probs: np.ndarray,
    text_features: np.ndarray,
    chunk: int = COMPUTE_ROWS,
    rows: np.ndarray | None = None,
    variant: str = "official",
) -> np.ndarray:
    """(N, 2D) class-guided features of (N, D) image features, (N, C) probs, (C, D) text features.

    ``official``: ``z = [I, p T] / ||[I, p T]||``, the whole row L2-normalised, as APL @105a662
    ``cb.py:62-63`` builds it and ``cb.py:107`` normalises it; the text half keeps weight
    ``||p T|| <= 1``, less when the prediction is spread out.
    ``paper``: ``z = [I ; sum_c p(c|x) T_c]`` with no normalisation (eq. 7).
    I is the L2-normalised image feature in both, as the official forward pass computes it
    (``alvlm.py:75, 319``; a no-op up to rounding on the stored unit-norm features); the
    text features are used as given.
    Computed in row chunks into one float32 (N, 2D) array: no whole-pool temporaries.
    With ``rows``, only for those rows (an (len(rows), 2D) array).
    """
    if variant not in ("official", "paper"):
        raise RaysvcBug(f"class-guided features: variant must be 'official' or 'paper', got {variant!r}")
    text = as_f32(text_features)
    d = features.shape[1]
    n = len(features) if rows is None else len(rows)
    out = np.empty((n, d + text.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sel = slice(start, stop) if rows is None else rows[start:stop]
        z = out[start:stop]
        z[:, :d] = features[sel]
        unit_rows(z[:, :d])
        np.matmul(as_f32(probs[sel]), text, out=z[:, d:])
        if variant == "official":
            unit_rows(z)
    return out


def check_kind(kind: str) -> str:
    if kind not in FEATURE_KINDS:
        raise RaysvcBug(f"features must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    return kind


def kind_requires(kind: str) -> frozenset[str]:
    """The pool fields that :func:`pool_features` reads for ``kind``."""
    if check_kind(kind) == "guided":
        return frozenset({"features", "probs", "text_features"})
    return frozenset({"features"})


def pool_features(pool: Pool, kind: str, rows: np.ndarray | None = None, variant: str = "official"):
    """The features a cluster-based selector works on: ``"image"`` or ``"guided"``
    (of :func:`class_guided_features`'s ``variant``), of every image or of ``rows`` only.

    The image features of the whole pool come as stored (a float16 pool stays float16;
    K-means and the neighbour searches convert row chunks), ``rows`` of them as float32.
    The guided features of a whole pool above :data:`~raysvc.strategies._faiss.LARGE_POOL`
    images come as :class:`~raysvc.lazyrows.LazyRows`, computed chunk by chunk where read
    (at 1.28M x 2 x 512 they would be 5.2 GB of float32).
    """
    if check_kind(kind) == "image":
        return pool.features if rows is None else gather_f32(pool.features, rows)
    if pool.text_features is None:
        raise RaysvcBug("class-guided features need pool.text_features")
    if rows is None and len(pool.features) > LARGE_POOL:
        width = pool.features.shape[1] + pool.text_features.shape[1]
        return LazyRows(len(pool.features), width, lambda r: class_guided_features(
            pool.features, pool.probs, pool.text_features, rows=r, variant=variant))
    return class_guided_features(pool.features, pool.probs, pool.text_features, rows=rows, variant=variant)


class FeatureRequires:
    """A strategy's ``requires`` that follows its ``features`` option.

    Read on the class it names what ``default_kind`` needs; read on an instance,
    what that instance's kind needs. ``extra`` fields are needed either way.
    """

    def __init__(self, default_kind: str, extra: frozenset[str] = frozenset()):
        self.default_kind = check_kind(default_kind)
        self.extra = frozenset(extra)

    def __get__(self, obj, owner=None) -> frozenset[str]:
        kind = self.default_kind if obj is None else obj.options.features
        return kind_requires(kind) | self.extra
