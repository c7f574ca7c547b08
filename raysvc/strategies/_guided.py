"""Class-guided features (Kim et al. 2024, eq. 5-7) and the feature choice of cluster selectors.

A class-guided feature joins what an image looks like with what the current model
thinks it is: ``[f(x) ; sum_c p(c|x) t_c]`` with ``f(x)`` the image embedding and
``t_c`` the class text embeddings. Clustering on it separates images that look
alike but belong to different classes once the model can tell them apart.

The feature spaces of the paper's ablations (Tab. 2, Tab. 1, Fig. 12) are the kinds of
:data:`FeatureKind`: ``image`` (eq. 5), ``text`` (the weighted text features alone, eq. 6),
``guided`` (eq. 7) and ``label`` (CB*: eq. 6's weights replaced by the one-hot true label,
"the text features of the ground-truth label", Sec. 5.3). ``label`` reads every pool image's
true label, so a strategy gets it only with ``oracle=true`` (:class:`FeatureOptions`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import numpy as np

from raysvc.chunks import COMPUTE_ROWS
from raysvc.errors import ConfigError, RaysvcBug
from raysvc.lazyrows import LazyRows
from raysvc.options import Options, option
from raysvc.strategies._faiss import LARGE_POOL, as_f32, gather_f32, unit_rows
from raysvc.strategies.base import Pool

FeatureKind = Literal["image", "text", "guided", "label"]
FEATURE_KINDS = get_args(FeatureKind)
# the kinds built from the class text embeddings, and the image half each keeps
_TEXT_KINDS = {"text": False, "guided": True, "label": True}


def class_guided_features(
    features: np.ndarray | None,
    probs: np.ndarray | None,
    text_features: np.ndarray,
    chunk: int = COMPUTE_ROWS,
    rows: np.ndarray | None = None,
    variant: str = "official",
    kind: str = "guided",
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """(N, 2D) class-guided features of (N, D) image features, (N, C) probs, (C, D) text features.

    ``official``: ``z = [I, p T] / ||[I, p T]||``, the whole row L2-normalised, as APL @105a662
    ``cb.py:62-63`` builds it and ``cb.py:107`` normalises it; the text half keeps weight
    ``||p T|| <= 1``, less when the prediction is spread out.
    ``paper``: ``z = [I ; sum_c p(c|x) T_c]`` with no normalisation (eq. 7).
    I is the L2-normalised image feature in both, as the official forward pass computes it
    (``alvlm.py:75, 319``; a no-op up to rounding on the stored unit-norm features); the
    text features are used as given.
    ``kind="text"``: the (N, D) text half ``p T`` alone (normalised by the variant's rule);
    ``kind="label"``: ``p`` replaced by the one-hot of ``labels``, so the text half is ``T_y``.
    Computed in row chunks into one float32 array: no whole-pool temporaries.
    With ``rows``, only for those rows (an (len(rows), .) array).
    """
    if variant not in ("official", "paper"):
        raise RaysvcBug(f"class-guided features: variant must be 'official' or 'paper', got {variant!r}")
    if kind not in _TEXT_KINDS:
        raise RaysvcBug(f"class-guided features: kind must be one of {', '.join(_TEXT_KINDS)}, got {kind!r}")
    text = as_f32(text_features)
    d = features.shape[1] if _TEXT_KINDS[kind] else 0
    weights = labels if kind == "label" else probs
    n = len(weights) if rows is None else len(rows)
    out = np.empty((n, d + text.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sel = slice(start, stop) if rows is None else rows[start:stop]
        z = out[start:stop]
        if d:
            z[:, :d] = features[sel]
            unit_rows(z[:, :d])
        if kind == "label":
            z[:, d:] = text[np.asarray(labels[sel])]
        else:
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
    return {
        "image": frozenset({"features"}),
        "text": frozenset({"probs", "text_features"}),
        "guided": frozenset({"features", "probs", "text_features"}),
        "label": frozenset({"features", "true_labels", "text_features"}),
    }[check_kind(kind)]


def pool_features(pool: Pool, kind: str, rows: np.ndarray | None = None, variant: str = "official"):
    """The features a cluster-based selector works on, of every image or of ``rows`` only:
    ``"image"``, or one of :func:`class_guided_features`'s kinds of its ``variant``.

    The image features of the whole pool come as stored (a float16 pool stays float16;
    K-means and the neighbour searches convert row chunks), ``rows`` of them as float32.
    The other kinds of a whole pool above :data:`~raysvc.strategies._faiss.LARGE_POOL`
    images come as :class:`~raysvc.lazyrows.LazyRows`, computed chunk by chunk where read
    (at 1.28M x 2 x 512 they would be 5.2 GB of float32).
    """
    if check_kind(kind) == "image":
        return pool.features if rows is None else gather_f32(pool.features, rows)
    for field in kind_requires(kind):
        if getattr(pool, field) is None:
            raise RaysvcBug(f"{kind} features need pool.{field}")

    def compute(r):
        return class_guided_features(pool.features, pool.probs, pool.text_features, rows=r, variant=variant,
                                     kind=kind, labels=pool.true_labels)

    n = len(pool.labeled)
    if rows is None and n > LARGE_POOL:
        width = (pool.features.shape[1] if _TEXT_KINDS[kind] else 0) + pool.text_features.shape[1]
        return LazyRows(n, width, compute)
    return compute(rows)


@dataclasses.dataclass(frozen=True)
class FeatureOptions(Options):
    """The feature space of a strategy that clusters or covers (Tab. 2, Tab. 11, Fig. 9c), and
    the explicit permission to read the pool's true labels that ``label`` needs."""

    features: FeatureKind = option(
        "image", "image (eq. 5), text (eq. 6 alone), guided (class-guided, eq. 7) or label (CB*: the true "
                 "label's text features; needs oracle=true)")
    oracle: bool = option(False, "hand the strategy every pool image's true label (features=label only: an "
                                 "upper bound, not active learning)")

    def check(self):
        if self.features == "label" and not self.oracle:
            raise ConfigError("option features='label' reads every pool image's true label: "
                              "set oracle=true to allow it (CB*, an upper bound)")
        if self.oracle and self.features != "label":
            raise ConfigError(f"option oracle=true: only features='label' reads true labels, not "
                              f"features={self.features!r}")


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
