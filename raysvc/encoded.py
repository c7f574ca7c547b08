"""A dataset's embeddings in the backbone's space, and the zero-shot math on them.

:class:`EncodedDataset` is what the feature cache hands a run: the image embeddings of
every image (as stored: float16 or float32, memory-mapped) and the class prompt
embeddings. Zero-shot logits and probabilities, pool centring and the class prompt
encoding are computed from it here; the cache that produces it is
:mod:`raysvc.featurecache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from raysvc.backbones import Backbone
from raysvc.chunks import COMPUTE_ROWS, COPY_ROWS


@dataclasses.dataclass(frozen=True)
class EncodedDataset:
    """A dataset's image embeddings and class prompt embeddings in the backbone's space.

    image_features: (N, D) float32 or float16 (as stored), L2-normalised.
    text_features: (C, D) float32, L2-normalised embeddings of the dataset's class prompts
        (the normalised mean of a class's normalised sentence embeddings when it has several).
    text_raw: (C, D) float32, per class the mean of its *unnormalised* sentence embeddings
        (ActiveKD's ``clip_weights_before_norm``: CLAP's prototypes start and are held there).
    key: the image-feature cache key; ``text_key`` hashes the prompts as well.
    encode_seconds: spent encoding now (0.0 on a cache hit); ``encode_report`` what the
        encoding pass measured (Ray Data: ``first_rows_seconds``, ``arrivals``, ``stats``).
    source: "cache" (local file), "store" (shared feature store), or the encoder: "local", "ray-data".
    sha256: the content hash of the image features as stored, before any centring
        (:class:`raysvc.storage.features.FeatureDigest`: the same whichever tier they came from),
        so two runs' manifests show whether their inputs were equal.
    """

    image_features: np.ndarray
    text_features: np.ndarray
    text_raw: np.ndarray
    labels: np.ndarray
    logit_scale: float
    key: str
    encode_seconds: float
    text_key: str = ""
    source: str = ""
    encode_report: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sha256: str = ""

    def zeroshot_logits(self, rows: np.ndarray | slice = slice(None), chunk: int = COPY_ROWS) -> np.ndarray:
        """(len(rows), C) float32 scaled cosines ``logit_scale * f . t``, in float32 row chunks."""
        rows = np.arange(len(self.image_features))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(rows), len(self.text_features)), dtype=np.float32)
        text = self.text_features.astype(np.float32, copy=False).T
        for start in range(0, len(rows), chunk):
            x = np.asarray(self.image_features[rows[start : start + chunk]], dtype=np.float32)
            out[start : start + len(x)] = self.logit_scale * (x @ text)
        return out

    def zeroshot_probs(self, rows: np.ndarray | slice = slice(None), chunk: int = COMPUTE_ROWS) -> np.ndarray:
        """(len(rows), C) float32 softmax of :meth:`zeroshot_logits`."""
        logits = self.zeroshot_logits(rows, chunk)
        for start in range(0, len(logits), chunk):
            logits[start : start + chunk] = softmax(logits[start : start + chunk])
        return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def centred(encoded: EncodedDataset, rows: np.ndarray, chunk: int = COPY_ROWS) -> EncodedDataset:
    """``encoded`` with every image embedding less the mean embedding of ``rows``, renormalised.

    A ConSE embedding mixes ImageNet-class sentences, so all images share a component that
    favours the classes whose prompts resemble the average sentence; removing the mean of
    the unlabeled pool (images only, no labels) measured the largest gain on the emoji set
    (``bench/emoji_prior.py``). Kept in the stored dtype, computed in row chunks.
    """
    features = encoded.image_features
    total = np.zeros(features.shape[1], dtype=np.float64)
    for start in range(0, len(rows), chunk):
        total += np.asarray(features[rows[start : start + chunk]], dtype=np.float64).sum(0)
    mean = (total / max(len(rows), 1)).astype(np.float32)
    out = np.empty(features.shape, dtype=features.dtype)
    for start in range(0, len(features), chunk):
        shifted = np.asarray(features[start : start + chunk], dtype=np.float32) - mean
        out[start : start + len(shifted)] = shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)
    digest = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:8]
    return dataclasses.replace(encoded, image_features=out, key=f"{encoded.key}-centred-{digest}")


def text_key(image_key: str, prompts: list[tuple[str, ...]]) -> str:
    return hashlib.sha256(json.dumps([image_key, prompts]).encode()).hexdigest()[:24]


@torch.no_grad()
def encode_class_prompts(backbone: Backbone, prompts: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) float32 pair per class: the normalised mean of its normalised sentence embeddings
    (DHO's zero-shot classifier, ``text_features``) and the mean of its raw sentence
    embeddings (ActiveKD's ``clip_weights_before_norm``, ``text_raw``), from one encoding."""
    flat = [s for sentences in prompts for s in sentences]
    raw = backbone.encode_text(flat, normalize=False).float().cpu()
    unit = torch.nn.functional.normalize(raw, dim=-1)
    normalised, means, start = [], [], 0
    for sentences in prompts:
        stop = start + len(sentences)
        normalised.append(torch.nn.functional.normalize(unit[start:stop].mean(0), dim=-1))
        means.append(raw[start:stop].mean(0))
        start = stop
    return torch.stack(normalised).numpy().astype(np.float32), torch.stack(means).numpy().astype(np.float32)
