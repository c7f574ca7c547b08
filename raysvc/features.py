"""Content-addressed cache of image embeddings.

Each (dataset, backbone, preprocessing) is encoded once; the key hashes the dataset's
fingerprint, the backbone's model id (which includes its input size) and the
feature-format version, so a change to any of them encodes anew. Entries are written
to a temporary name and renamed, so a crash never leaves a half-written entry and
concurrent writers of the same key are harmless.

Two tiers: the local cache (``root/<key>.npy``, memory-mapped by readers) and, when
given, a shared feature store in object storage (``s3://bucket/features``: sharded
arrays, manifest last, see :mod:`raysvc.storage.features`) that any node reads. A
local miss looks in the shared store and fills the local cache from it; a fresh
encode writes both, so a dataset is encoded once however many nodes and grids use it.

A fresh encode runs in this process (a loop over batches) or, for large datasets on a
Ray cluster, on Ray Data (:mod:`raysvc.service.raydata`: decode tasks spread over the
cluster, the backbone in an actor pool); see :meth:`FeatureStore.choose_encoder`. Both
write the same entry under the same key.

Embeddings reach the strategies in the stored dtype: a float16 store hands out float16
(memory-mapped) arrays, and whoever needs float32 converts the rows it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from raysvc.backbones.base import Backbone
from raysvc.datasets import ImageDataset
from raysvc.errors import ConfigError
from raysvc.feature_options import DEFAULT_RAY_DATA_MIN_IMAGES, ENCODERS, Encoder, RayDataOptions

if TYPE_CHECKING:
    from raysvc.backbones import BackboneRef
    from raysvc.storage import ObjectStore

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
    source: str = ""  # "cache" (local file), "store" (shared feature store), or the encoder: "local", "ray-data"

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
def encode_prompt_embeddings(backend: Backbone, prompts: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
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


def encode_prompts(backend: Backbone, prompts: list[tuple[str, ...]]) -> np.ndarray:
    """(C, D) float32: per class, the normalised mean of its normalised sentence embeddings."""
    return encode_prompt_embeddings(backend, prompts)[0]


def feature_key(dataset: ImageDataset, backend: Backbone, dtype: str = "float32") -> str:
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
    ``progress``: "bar" (tqdm or Ray Data's bars, for a terminal), "lines" (a line every
    :data:`PROGRESS_SECONDS`, for logs a driver forwards, as from a Ray actor) or "off".
    ``remote``: the shared feature store (``s3://bucket/prefix``, a folder, or an
    :class:`~raysvc.storage.ObjectStore`) behind the local cache; ``rows_per_shard`` the
    rows of each of its shards; ``lease_seconds`` how long a node that claimed an entry
    may go silent before others take over encoding it (see
    :class:`~raysvc.storage.features.EncodeLease`). ``encoder``, ``ray_data_min_images``,
    ``ray_data``: how a fresh encode runs, see :meth:`choose_encoder`.
    """

    def __init__(self, root: str | Path = DEFAULT_ROOT, batch_size: int = 128, progress: str = "bar",
                 dtype: str = "float32", *, remote: str | ObjectStore | None = None, encoder: Encoder = "auto",
                 ray_data_min_images: int = DEFAULT_RAY_DATA_MIN_IMAGES,
                 ray_data: RayDataOptions | Mapping | None = None, rows_per_shard: int | None = None,
                 lease_seconds: float = 120.0):
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"feature dtype must be float32 or float16, got {dtype!r}")
        if progress not in ("bar", "lines", "off"):
            raise ConfigError(f"progress must be bar, lines or off, got {progress!r}")
        if encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if not isinstance(ray_data_min_images, int) or ray_data_min_images < 0:
            raise ConfigError(f"ray_data_min_images must be an integer >= 0, got {ray_data_min_images!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if rows_per_shard is not None and rows_per_shard < 1:
            raise ConfigError(f"rows_per_shard must be >= 1, got {rows_per_shard!r}")
        if lease_seconds <= 0:
            raise ConfigError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        self.root = Path(root)
        self.batch_size = batch_size
        self.progress = progress
        self.dtype = dtype
        self.encoder = encoder
        self.ray_data_min_images = ray_data_min_images
        if ray_data is None or isinstance(ray_data, RayDataOptions):
            self.ray_data = ray_data or RayDataOptions()
        else:
            self.ray_data = RayDataOptions.parse(ray_data, "ray_data")
        self.remote = None
        if remote is not None:
            from raysvc.storage.features import open_feature_store

            self.remote = open_feature_store(remote)
        self.rows_per_shard = rows_per_shard
        self.lease_seconds = lease_seconds
        # what the last Ray Data pass reported (seconds, first_rows_seconds, stats): benchmarks read it
        self.last_ray_data_report: dict = {}

    @classmethod
    def at(cls, root: str | Path | None, **kwargs) -> FeatureStore:
        """A store at ``root``, or at the default cache when ``root`` is None."""
        return cls(root or DEFAULT_ROOT, **kwargs)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def choose_encoder(self, n_images: int, backbone: BackboneRef | None = None) -> Literal["local", "ray-data"]:
        """Which path a fresh encode of ``n_images`` takes.

        "local" and "ray-data" are taken as set; "ray-data" needs ``backbone`` (the ref
        its actors load). "auto" takes Ray Data when the dataset has at least
        ``ray_data_min_images`` images, a ``backbone`` ref is given, this process is
        connected to Ray (a driver, job or actor: there is a cluster to spread over), and
        the cluster has room right now for one encoder actor and one decode task (a
        cluster full of trials waiting for these features would otherwise never run
        them); else the in-process loop.
        """
        if self.encoder == "local":
            return "local"
        if self.encoder == "ray-data":
            if backbone is None:
                raise ConfigError("encoder ray-data needs the backbone's BackboneRef (its actors load it)")
            return "ray-data"
        if n_images < self.ray_data_min_images or backbone is None or not _ray_connected():
            return "local"
        from raysvc.service.raydata import has_room

        return "ray-data" if has_room(self.ray_data) else "local"

    def encode(self, dataset: ImageDataset, backend: Backbone, backbone: BackboneRef | None = None) -> EncodedDataset:
        """The dataset's features from the local cache, else the shared store, else encoded now.

        ``backbone``: the ref ``backend`` was loaded from, which the Ray Data path's actors
        load (without it a fresh encode runs in this process).
        """
        key = feature_key(dataset, backend, self.dtype)
        path = self.path(key)
        seconds = 0.0
        if path.exists():
            source = "cache"
            if self.remote is not None:
                self._publish(key, path)
        elif self.remote is None:
            source, seconds = self._encode_into(path, dataset, backend, backbone)
        elif self._fetch(key, path):
            source = "store"
        else:
            from raysvc.storage.features import EncodeLease

            # another node may be encoding this entry right now: wait for it rather than encode twice
            lease = EncodeLease(self.remote, key, term=self.lease_seconds)
            try:
                if lease.claim():
                    source, seconds = self._encode_into(path, dataset, backend, backbone)
                    self._put_remote(key, np.load(path, mmap_mode="r"))
                elif self._fetch(key, path):
                    source = "store"
                else:  # the entry appeared, yet does not read back: encode it here after all
                    source, seconds = self._encode_into(path, dataset, backend, backbone)
            finally:
                lease.release()
        # a plain read-only view of the mapped file: Ray then ships it zero-copy (a memmap
        # subclass it would pickle as a writable copy)
        features = np.asarray(np.load(path, mmap_mode="r"))
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
            source=source,
        )

    def _encode_into(self, path: Path, dataset: ImageDataset, backend: Backbone,
                     backbone: BackboneRef | None) -> tuple[str, float]:
        """Encode now and write the local cache entry; (the encoder used, seconds)."""
        encoder = self.choose_encoder(len(dataset), backbone)
        start = time.perf_counter()
        if encoder == "ray-data":
            from raysvc.service.raydata import encode_images

            self.last_ray_data_report = {}
            features = encode_images(dataset, backbone, model_id=backend.model_id, image_size=backend.image_size,
                                     preprocess=backend.preprocessor(), backend=backend, dtype=self.dtype,
                                     batch_size=self.batch_size, options=self.ray_data, progress=self.progress,
                                     report=self.last_ray_data_report)
        else:
            features = self._encode_images(dataset, backend).astype(self.dtype)
        seconds = time.perf_counter() - start
        self._write(path, features)
        return encoder, seconds

    def _fetch(self, key: str, path: Path) -> bool:
        """Fill the local cache from the shared store; False when it has no complete entry."""
        from raysvc.storage.features import read_entry

        features = read_entry(self.remote, key)
        if features is None:
            return False
        self._write(path, features)
        return True

    def _put_remote(self, key: str, features: np.ndarray) -> None:
        from raysvc.storage.features import ROWS_PER_SHARD, write_entry

        write_entry(self.remote, key, features, self.rows_per_shard or ROWS_PER_SHARD)

    def _publish(self, key: str, path: Path) -> None:
        """A local entry the shared store lacks (encoded before the store was set) goes up,
        so other nodes need not encode it."""
        from raysvc.storage.features import has_entry

        if not has_entry(self.remote, key):
            self._put_remote(key, np.load(path, mmap_mode="r"))

    def _encode_images(self, dataset: ImageDataset, backend: Backbone) -> np.ndarray:
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


def _ray_connected() -> bool:
    """Whether this process is a Ray driver or worker, without importing Ray."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
