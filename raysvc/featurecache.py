"""Content-addressed cache of image embeddings, in two tiers.

Each (dataset, backbone, preprocessing) is encoded once; the key hashes the dataset's
fingerprint, the backbone's model id (which includes its input size) and the
feature-format version, so a change to any of them encodes anew. Entries are written
to a temporary name and renamed, so a crash never leaves a half-written entry and
concurrent writers of the same key are harmless.

The tiers: the local cache (``<cache_dir>/<key>.npy``, memory-mapped by readers) and,
when :class:`~raysvc.feature_settings.FeatureSettings` names one, the shared feature
store in object storage (``s3://bucket/features``: sharded arrays, manifest last, see
:mod:`raysvc.storage.features`) that any node reads. A local miss looks in the shared
store and fills the local cache from it; a fresh encode writes both, so a dataset is
encoded once however many nodes and grids use it.

A fresh encode runs in this process (a loop over batches) or, for large datasets on a
Ray cluster, on Ray Data (:mod:`raysvc.service.raydata`: decode tasks spread over the
cluster, the backbone in an actor pool); see :meth:`FeatureCache.choose_encoder`. Both
write the same entry under the same key.

Embeddings reach the strategies in the stored dtype: a float16 cache hands out float16
(memory-mapped) arrays, and whoever needs float32 converts the rows it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from raysvc.backbones import Backbone, BackboneRef
from raysvc.datasets import ImageDataset
from raysvc.encoded import EncodedDataset, encode_class_prompts, text_key
from raysvc.feature_settings import FeatureSettings
from raysvc.progress import ProgressLines

FORMAT_VERSION = 1
Progress = Literal["bar", "lines", "off"]


def feature_key(dataset: ImageDataset, backbone: Backbone, dtype: str = "float32") -> str:
    spec = json.dumps([FORMAT_VERSION, dataset.fingerprint, backbone.model_id] + ([dtype] if dtype != "float32" else []))
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


class FeatureCache:
    """Image embeddings on disk under ``<cache_dir>/<key>.npy``, computed on first use.

    ``settings``: where the tiers are and how a fresh encode runs (the dtype: float16 halves
    the disk and page-cache footprint of large pools, a 1.28M x 1024 pool is 2.6 GB;
    embeddings are unit vectors, so the rounding is ~1e-3). ``progress``: "bar" (tqdm or
    Ray Data's bars, for a terminal), "lines" (a line every few seconds, for logs a driver
    forwards, as from a Ray actor) or "off". ``device``: where the backbone encodes (the
    encoder service passes "cuda" on a GPU node). ``rows_per_shard`` and ``lease_seconds``:
    the shared store's shard size and how long a node that claimed an entry may go silent
    before others take over encoding it (see :class:`~raysvc.storage.features.EncodeLease`).
    """

    def __init__(self, settings: FeatureSettings | None = None, *, progress: Progress = "bar", device: str = "cpu",
                 rows_per_shard: int | None = None, lease_seconds: float = 120.0):
        from raysvc.storage.features import ROWS_PER_SHARD, open_feature_store

        self.settings = settings or FeatureSettings()
        self.root = self.settings.cache_path
        self.progress = progress
        self.device = device
        self.remote = open_feature_store(self.settings.store) if self.settings.store else None
        self.rows_per_shard = rows_per_shard or ROWS_PER_SHARD
        self.lease_seconds = lease_seconds

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def choose_encoder(self, n_images: int) -> Literal["local", "ray-data"]:
        """Which path a fresh encode of ``n_images`` takes.

        "local" and "ray-data" are taken as set. "auto" takes Ray Data when the dataset has
        at least ``ray_data_min_images`` images, this process is connected to Ray (a driver,
        job or actor: there is a cluster to spread over), and the cluster has room right
        now for one encoder actor and one decode task (a cluster full of trials waiting for
        these features would otherwise never run them); else the in-process loop.
        """
        encoder = self.settings.encoder
        if encoder != "auto":
            return encoder
        if n_images < self.settings.ray_data_min_images or not _ray_connected():
            return "local"
        from raysvc.service.raydata import has_room

        return "ray-data" if has_room(self.settings.ray_data) else "local"

    def encode(self, dataset: ImageDataset, ref: BackboneRef) -> EncodedDataset:
        """The dataset's features from the local cache, else the shared store, else encoded now."""
        backbone = ref.load()
        if self.device != "cpu":
            backbone.to(self.device)
        key = feature_key(dataset, backbone, self.settings.dtype)
        path = self.path(key)
        seconds, report = 0.0, {}
        if path.exists():
            source = "cache"
            if self.remote is not None:
                self._publish(key, path)
        elif self.remote is None:
            source, seconds, report = self._encode_into(path, dataset, backbone, ref)
        elif self._fetch(key, path):
            source = "store"
        else:
            from raysvc.storage.features import EncodeLease

            # another node may be encoding this entry right now: wait for it rather than encode twice
            lease = EncodeLease(self.remote, key, term=self.lease_seconds)
            try:
                if lease.claim():
                    source, seconds, report = self._encode_into(path, dataset, backbone, ref)
                    self._put_remote(key, np.load(path, mmap_mode="r"))
                elif self._fetch(key, path):
                    source = "store"
                else:  # the entry appeared, yet does not read back: encode it here after all
                    source, seconds, report = self._encode_into(path, dataset, backbone, ref)
            finally:
                lease.release()
        # a plain read-only view of the mapped file: Ray then ships it zero-copy (a memmap
        # subclass it would pickle as a writable copy)
        features = np.asarray(np.load(path, mmap_mode="r"))
        prompts = dataset.prompts()
        text_features, text_raw = encode_class_prompts(backbone, prompts)
        return EncodedDataset(
            image_features=features,
            text_features=text_features,
            text_raw=text_raw,
            labels=dataset.labels,
            logit_scale=backbone.logit_scale,
            key=key,
            encode_seconds=seconds,
            text_key=text_key(key, prompts),
            source=source,
            encode_report=report,
        )

    def _encode_into(self, path: Path, dataset: ImageDataset, backbone: Backbone,
                     ref: BackboneRef) -> tuple[str, float, dict[str, Any]]:
        """Encode now and write the local cache entry; (the encoder used, seconds, its report)."""
        encoder = self.choose_encoder(len(dataset))
        start = time.perf_counter()
        report: dict[str, Any] = {}
        if encoder == "ray-data":
            from raysvc.service.raydata import encode_images

            features, report = encode_images(dataset, ref, backbone, self.settings, progress=self.progress)
        else:
            features = self._encode_images(dataset, backbone).astype(self.settings.dtype)
        seconds = time.perf_counter() - start
        self._write(path, features)
        return encoder, seconds, report

    def _fetch(self, key: str, path: Path) -> bool:
        """Fill the local cache from the shared store; False when it has no complete entry."""
        from raysvc.storage.features import read_entry

        features = read_entry(self.remote, key)
        if features is None:
            return False
        self._write(path, features)
        return True

    def _put_remote(self, key: str, features: np.ndarray) -> None:
        from raysvc.storage.features import write_entry

        write_entry(self.remote, key, features, self.rows_per_shard)

    def _publish(self, key: str, path: Path) -> None:
        """A local entry the shared store lacks (encoded before the store was set) goes up,
        so other nodes need not encode it."""
        from raysvc.storage.features import has_entry

        if not has_entry(self.remote, key):
            self._put_remote(key, np.load(path, mmap_mode="r"))

    def _encode_images(self, dataset: ImageDataset, backbone: Backbone) -> np.ndarray:
        chunks = []
        what = f"encoding {dataset.name} with {backbone.model_id}"
        bar = tqdm(total=len(dataset), desc=what, unit="img", disable=self.progress != "bar")
        log = ProgressLines(what, len(dataset)) if self.progress == "lines" else None
        batch_size = self.settings.batch_size
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                stop = min(start + batch_size, len(dataset))
                pixels = backbone.preprocess([dataset.load(i) for i in range(start, stop)])
                chunks.append(backbone.encode_images(pixels).float().cpu().numpy())
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
