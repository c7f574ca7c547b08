"""Content-addressed cache of image embeddings.

Each (dataset, backbone, preprocessing) is encoded once; the key hashes the dataset's
fingerprint, the backbone's model id (which includes its input size) and the
feature-format version, so a change to any of them encodes anew. Entries are written
to a temporary name and renamed, so a crash never leaves a half-written entry and
concurrent writers of the same key are harmless.

Embeddings reach the strategies in the stored dtype: a float16 store hands out float16
(memory-mapped) arrays, and whoever needs float32 converts the rows it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from raysvc.backends.base import VLMBackend
from raysvc.datasets import ImageDataset
from raysvc.errors import ConfigError

FORMAT_VERSION = 1
DEFAULT_ROOT = Path(os.environ.get("RAYSVC_CACHE", Path.home() / ".cache" / "raysvc" / "features"))


@dataclasses.dataclass(frozen=True)
class EncodedDataset:
    """A dataset's image embeddings and class prompt embeddings in the backbone's space.

    image_features: (N, D) float32 or float16 (as stored), L2-normalised.
    text_features: (C, D) float32, L2-normalised embeddings of the dataset's class prompts
        (the normalised mean of a class's normalised sentence embeddings when it has several).
    text_raw: (C, D) float32, per class the mean of its *unnormalised* sentence embeddings
        (ActiveKD's ``clip_weights_before_norm``: CLAP's prototypes start and are held there).
    key: the image-feature cache key; ``text_key`` hashes the prompts as well.
    """

    image_features: np.ndarray
    text_features: np.ndarray
    text_raw: np.ndarray
    labels: np.ndarray
    logit_scale: float
    key: str
    encode_seconds: float  # spent encoding now: 0.0 on a cache hit
    text_key: str = ""

    def zeroshot_logits(self, rows: np.ndarray | slice = slice(None), chunk: int = 65_536) -> np.ndarray:
        """(len(rows), C) float32 scaled cosines ``logit_scale * f . t``, in float32 row chunks."""
        rows = np.arange(len(self.image_features))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(rows), len(self.text_features)), dtype=np.float32)
        text = self.text_features.astype(np.float32, copy=False).T
        for start in range(0, len(rows), chunk):
            x = np.asarray(self.image_features[rows[start : start + chunk]], dtype=np.float32)
            out[start : start + len(x)] = self.logit_scale * (x @ text)
        return out

    def zeroshot_probs(self, rows: np.ndarray | slice = slice(None), chunk: int = 16_384) -> np.ndarray:
        """(len(rows), C) float32 softmax of :meth:`zeroshot_logits`."""
        logits = self.zeroshot_logits(rows, chunk)
        for start in range(0, len(logits), chunk):
            logits[start : start + chunk] = softmax(logits[start : start + chunk])
        return logits


def centred(encoded: EncodedDataset, rows: np.ndarray, chunk: int = 65_536) -> EncodedDataset:
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


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def text_key(image_key: str, prompts: list[tuple[str, ...]]) -> str:
    return hashlib.sha256(json.dumps([image_key, prompts]).encode()).hexdigest()[:24]


@torch.no_grad()
def encode_prompt_embeddings(backend: VLMBackend, prompts: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) float32 pair per class: the normalised mean of its normalised sentence embeddings
    (DHO's zero-shot classifier, ``text_features``) and the mean of its raw sentence
    embeddings (ActiveKD's ``clip_weights_before_norm``, ``text_raw``), from one encoding."""
    flat = [s for sentences in prompts for s in sentences]
    raw = backend.encode_text(flat, normalize=False).float().cpu()
    unit = torch.nn.functional.normalize(raw, dim=-1)
    normalised, means, start = [], [], 0
    for sentences in prompts:
        stop = start + len(sentences)
        normalised.append(torch.nn.functional.normalize(unit[start:stop].mean(0), dim=-1))
        means.append(raw[start:stop].mean(0))
        start = stop
    return torch.stack(normalised).numpy().astype(np.float32), torch.stack(means).numpy().astype(np.float32)


def encode_prompts(backend: VLMBackend, prompts: list[tuple[str, ...]]) -> np.ndarray:
    """(C, D) float32: per class, the normalised mean of its normalised sentence embeddings."""
    return encode_prompt_embeddings(backend, prompts)[0]


def feature_key(dataset: ImageDataset, backend: VLMBackend, dtype: str = "float32") -> str:
    spec = json.dumps([FORMAT_VERSION, dataset.fingerprint, backend.model_id] + ([dtype] if dtype != "float32" else []))
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


PROGRESS_SECONDS = 15.0


class ProgressLines:
    """Progress as whole lines (start, every :data:`PROGRESS_SECONDS`, end), which survive
    log forwarding where a carriage-return bar does not."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.start = self.last = time.monotonic()
        print(f"{what}: {total} images", flush=True)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate else float("inf")
        print(f"{self.what}: {done}/{self.total} images ({100 * done / self.total:.0f}%), "
              f"{rate:.0f} images/s, {eta:.0f}s left", flush=True)


class FeatureStore:
    """Image embeddings on disk under ``root/<key>.npy``, computed on first use.

    ``dtype="float16"`` halves the disk and page-cache footprint of large pools (a
    1.28M x 1024 pool is 2.6 GB); embeddings are unit vectors, so the rounding is ~1e-3.
    ``progress``: "bar" (tqdm, for a terminal), "lines" (a line every
    :data:`PROGRESS_SECONDS`, for logs a driver forwards, as from a Ray actor) or "off".
    """

    def __init__(self, root: str | Path = DEFAULT_ROOT, batch_size: int = 128, progress: str = "bar",
                 dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"feature dtype must be float32 or float16, got {dtype!r}")
        if progress not in ("bar", "lines", "off"):
            raise ConfigError(f"progress must be bar, lines or off, got {progress!r}")
        self.root = Path(root)
        self.batch_size = batch_size
        self.progress = progress
        self.dtype = dtype

    @classmethod
    def at(cls, root: str | Path | None, **kwargs) -> FeatureStore:
        """A store at ``root``, or at the default cache when ``root`` is None."""
        return cls(root or DEFAULT_ROOT, **kwargs)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def encode(self, dataset: ImageDataset, backend: VLMBackend) -> EncodedDataset:
        key = feature_key(dataset, backend, self.dtype)
        path = self.path(key)
        seconds = 0.0
        if path.exists():
            # a plain read-only view of the mapped file: Ray then ships it zero-copy (a memmap
            # subclass it would pickle as a writable copy)
            features = np.asarray(np.load(path, mmap_mode="r"))
        else:
            start = time.perf_counter()
            features = self._encode_images(dataset, backend).astype(self.dtype)
            seconds = time.perf_counter() - start
            self._write(path, features)
        prompts = dataset.prompts()
        text_features, text_raw = encode_prompt_embeddings(backend, prompts)
        return EncodedDataset(
            image_features=features,
            text_features=text_features,
            text_raw=text_raw,
            labels=dataset.labels,
            logit_scale=backend.logit_scale,
            key=key,
            encode_seconds=seconds,
            text_key=text_key(key, prompts),
        )

    def _encode_images(self, dataset: ImageDataset, backend: VLMBackend) -> np.ndarray:
        chunks = []
        what = f"encoding {dataset.name} with {backend.model_id}"
        bar = tqdm(total=len(dataset), desc=what, unit="img", disable=self.progress != "bar")
        log = ProgressLines(what, len(dataset)) if self.progress == "lines" else None
        with torch.no_grad():
            for start in range(0, len(dataset), self.batch_size):
                stop = min(start + self.batch_size, len(dataset))
                pixels = backend.preprocess([dataset.load(i) for i in range(start, stop)])
                chunks.append(backend.encode_images(pixels).float().cpu().numpy())
                bar.update(stop - start)
                if log is not None:
                    log.update(stop)
        bar.close()
        return np.concatenate(chunks)

    def _write(self, path: Path, features: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, features)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
