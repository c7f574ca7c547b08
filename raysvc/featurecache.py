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

Nothing wrong is used quietly. Every entry carries the content hash of its rows
(:class:`~raysvc.storage.features.FeatureDigest`, the same in both tiers and in the run's
manifest), and each pass that moves the rows computes it as it goes, so verifying costs
no second read where one can be avoided:

- a fresh encode hashes the rows while writing the local file, and the shards while
  putting them;
- a fill from the shared store checks each shard's hash as it arrives and the whole
  before the local file is renamed into place (:func:`~raysvc.storage.features.read_rows`);
- a local hit (``<key>.npy`` beside its record ``<key>.hash.json``) reads the ``.npy``
  header and the file's status: a size other than the header's shape says (the file
  is truncated or padded); when inode, size, mtime and ctime are those recorded when the
  file was last hashed (a ctime no user can set back: any write, rename or ``touch``
  moves it), nothing has changed since and the file is mapped without a read; otherwise
  it is hashed once, in blocks, and the record updated when it still matches.

An entry that fails (truncated, rows changed, no record: written by an older raysvc or
interrupted between the file and its record) is absent: one line on stderr names it,
and it is fetched or encoded anew and replaced atomically (write, fsync, rename). What
no check here catches is a change below the file system that leaves its status alone
(bit rot on disk); the shared store's entry is verified on every fill.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from raysvc.backbones import Backbone, BackboneRef
from raysvc.chunks import COPY_ROWS
from raysvc.datasets import ImageDataset
from raysvc.encoded import EncodedDataset, encode_class_prompts, text_key
from raysvc.errors import RaysvcBug, one_line
from raysvc.feature_settings import FeatureSettings
from raysvc.progress import ProgressLines, notice
from raysvc.storage.features import (
    ROWS_PER_SHARD,
    BadEntry,
    EncodeLease,
    FeatureDigest,
    discard_entry,
    has_entry,
    open_feature_store,
    read_manifest,
    read_rows,
    write_entry,
)

FORMAT_VERSION = 1
Progress = Literal["bar", "lines", "off"]


def feature_key(dataset: ImageDataset, backbone: Backbone, dtype: str = "float32") -> str:
    spec = json.dumps([FORMAT_VERSION, dataset.fingerprint, backbone.model_id] + ([dtype] if dtype != "float32" else []))
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


class FeatureCache:
    """Image embeddings on disk under ``<cache_dir>/<key>.npy`` (its hash record beside it,
    ``<key>.hash.json``), computed on first use.

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

    def hash_path(self, key: str) -> Path:
        """The local entry's record: its rows' hash and the file status it was last verified at."""
        return self.root / f"{key}.hash.json"

    def encode(self, dataset: ImageDataset, ref: BackboneRef) -> EncodedDataset:
        """The dataset's features from the local cache, else the shared store, else encoded now;
        an entry that does not verify counts as absent (see the module docstring)."""
        backbone = ref.load()
        if self.device != "cpu":
            backbone.to(self.device)
        key = feature_key(dataset, backbone, self.settings.dtype)
        seconds, report = 0.0, {}
        entry = self._open_local(key)
        if entry is not None:
            source = "cache"
            if self.remote is not None:
                self._publish(key, entry)
        elif self.remote is None:
            source, seconds, report, entry = self._encode_into(key, dataset, backbone, ref)
        elif (entry := self._fetch(key)) is not None:
            source = "store"
        else:
            # another node may be encoding this entry right now: wait for it rather than encode twice
            lease = EncodeLease(self.remote, key, term=self.lease_seconds)
            try:
                if lease.claim():
                    source, seconds, report, entry = self._encode_into(key, dataset, backbone, ref)
                    self._put_remote(key, entry)
                elif (entry := self._fetch(key)) is not None:
                    source = "store"
                else:  # the entry appeared, yet did not verify (its manifest is gone): encode it here after all
                    source, seconds, report, entry = self._encode_into(key, dataset, backbone, ref)
                    self._put_remote(key, entry)
            finally:
                lease.release()
        prompts = dataset.prompts()
        text_features, text_raw = encode_class_prompts(backbone, prompts)
        return EncodedDataset(
            image_features=entry.features,
            text_features=text_features,
            text_raw=text_raw,
            labels=dataset.labels,
            logit_scale=backbone.logit_scale,
            key=key,
            encode_seconds=seconds,
            text_key=text_key(key, prompts),
            source=source,
            encode_report=report,
            sha256=entry.sha256,
        )

    def _encode_into(self, key: str, dataset: ImageDataset, backbone: Backbone,
                     ref: BackboneRef) -> tuple[str, float, dict[str, Any], LocalEntry]:
        """Encode now and write the local cache entry; (the encoder used, seconds, its report, the entry)."""
        encoder = self.choose_encoder(len(dataset))
        start = time.perf_counter()
        report: dict[str, Any] = {}
        if encoder == "ray-data":
            from raysvc.service.raydata import encode_images

            features, report = encode_images(dataset, ref, backbone, self.settings, progress=self.progress)
        else:
            features = self._encode_images(dataset, backbone).astype(self.settings.dtype)
        seconds = time.perf_counter() - start
        blocks = (features[start : start + COPY_ROWS] for start in range(0, len(features), COPY_ROWS))
        return encoder, seconds, report, self._write(key, features.shape, features.dtype, blocks)

    def _fetch(self, key: str) -> LocalEntry | None:
        """Fill the local cache from the shared store, verifying as the rows arrive; None when it
        has no entry, or one that does not verify (said, and its manifest removed)."""
        try:
            manifest = read_manifest(self.remote, key)
            if manifest is None:
                return None
            return self._write(key, manifest.shape, manifest.dtype, read_rows(self.remote, manifest),
                               verified_sha256=manifest.sha256)
        except BadEntry as bad:
            notice(f"{bad}: treated as absent and replaced")
            discard_entry(self.remote, key, bad)
            return None

    def _put_remote(self, key: str, entry: LocalEntry) -> None:
        """The verified local entry goes up with the hash it was verified by: its rows are
        hashed once, shard by shard, as they are put."""
        write_entry(self.remote, key, entry.features, self.rows_per_shard, sha256=entry.sha256)

    def _publish(self, key: str, entry: LocalEntry) -> None:
        """A local entry the shared store lacks (encoded before the store was set) goes up,
        so other nodes need not encode it."""
        if not has_entry(self.remote, key):
            self._put_remote(key, entry)

    def _open_local(self, key: str) -> LocalEntry | None:
        """The local entry, mapped, when it verifies (see the module docstring); None when there is
        none, or one that does not verify (said in one line naming the file)."""
        path = self.path(key)
        try:
            with open(path, "rb") as fh:
                problem, entry = self._verify(key, fh)
        except FileNotFoundError:
            return None
        except OSError as exc:
            problem, entry = f"cannot be read ({exc.strerror or exc})", None
        if problem is not None:
            notice(f"feature cache file {path} {problem}: treated as absent and replaced")
        return entry

    def _verify(self, key: str, fh: BinaryIO) -> tuple[str | None, LocalEntry | None]:
        """(what is wrong with the open local file, None) or (None, the entry mapped from it)."""
        try:
            record = json.loads(self.hash_path(key).read_text())
            sha256, shape, dtype = record["sha256"], tuple(record["shape"]), np.dtype(record["dtype"])
        except FileNotFoundError:
            return "has no hash record (written by an older raysvc, or interrupted)", None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"has an unreadable hash record {self.hash_path(key).name} ({one_line(exc, 120)})", None
        try:
            header = _NPY_HEADER_READERS[np.lib.format.read_magic(fh)](fh)
        except (ValueError, KeyError, EOFError) as exc:
            return f"is not an .npy array ({one_line(exc, 120)})", None
        if header != (shape, False, dtype):
            return f"holds {header[2]} {list(header[0])}, not the recorded {dtype} {list(shape)}", None
        offset = fh.tell()
        status = os.fstat(fh.fileno())
        expected = offset + math.prod(shape) * dtype.itemsize
        if status.st_size < expected:
            return f"is truncated ({status.st_size} of {expected} bytes)", None
        if status.st_size > expected:
            return f"has {status.st_size - expected} bytes past its rows", None
        if record.get("file") != _file_status(status):
            digest = FeatureDigest(shape, dtype)
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
            if digest.hexdigest() != sha256:
                return "does not match its recorded sha256 (its rows changed since it was written)", None
            try:
                self._write_record(key, sha256, shape, dtype, status)
            except OSError:  # a read-only cache: verified all the same, hashed again next time
                pass
        features = np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape)
        # a plain read-only view of the mapped file: Ray then ships it zero-copy (a memmap
        # subclass it would pickle as a writable copy)
        return None, LocalEntry(np.asarray(features), sha256)

    def _write(self, key: str, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[np.ndarray],
               verified_sha256: str | None = None) -> LocalEntry:
        """Write the local entry from its row blocks in one pass, hashing them as they go by
        (unless ``blocks`` verifies them against ``verified_sha256`` itself, raising before
        its end otherwise), then fsync, rename into place and record the hash with the
        file's status; the entry comes back mapped from the file written."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w+b") as fh:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                          "shape": tuple(shape)}
                np.lib.format.write_array_header_1_0(fh, header)
                offset = fh.tell()
                digest = FeatureDigest(shape, dtype) if verified_sha256 is None else None
                rows = 0
                for block in blocks:
                    block = np.ascontiguousarray(block)
                    if digest is not None:
                        digest.update(block)
                    fh.write(block.data)
                    rows += len(block)
                if rows != shape[0]:
                    raise RaysvcBug(f"feature entry {key}: {rows} rows written, {shape[0]} expected")
                sha256 = verified_sha256 if digest is None else digest.hexdigest()
                fh.flush()
                os.fsync(fh.fileno())  # the recorded status vouches for these bytes: they must be on disk
                os.replace(tmp, path)
                self._write_record(key, sha256, shape, dtype, os.fstat(fh.fileno()))
                features = np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return LocalEntry(np.asarray(features), sha256)

    def _write_record(self, key: str, sha256: str, shape: tuple[int, ...], dtype: np.dtype,
                      status: os.stat_result) -> None:
        record = {"sha256": sha256, "shape": list(shape), "dtype": str(np.dtype(dtype)), "file": _file_status(status)}
        path = self.hash_path(key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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


@dataclasses.dataclass(frozen=True)
class LocalEntry:
    """A verified local entry: its rows mapped read-only, and their content hash."""

    features: np.ndarray
    sha256: str


# 16 MiB: few calls per GB, small next to the page cache
_HASH_BLOCK = 1 << 24
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _file_status(status: os.stat_result) -> dict[str, int]:
    """What changes whenever a file's bytes may have: a rewrite in place moves mtime and ctime,
    a replacement the inode, and no user can set ctime back."""
    return {"inode": status.st_ino, "size": status.st_size, "mtime_ns": status.st_mtime_ns,
            "ctime_ns": status.st_ctime_ns}


def _ray_connected() -> bool:
    """Whether this process is a Ray driver or worker, without importing Ray."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
