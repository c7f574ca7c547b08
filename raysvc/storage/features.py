"""Feature entries in an object store, shared by every node: sharded arrays, manifest last.

An entry is the (N, D) image-feature array of one :func:`raysvc.featurecache.feature_key`::

    <key>/shard-00000.npy    rows [0, R)        (.npy, the entry's dtype: float16 or float32)
    <key>/shard-00001.npy    rows [R, 2R)
    ...
    <key>/manifest.json      {"format", "key", "shape", "dtype", "rows_per_shard", "sha256",
                              "shards": [{"name", "rows", "sha256"}]}

Every entry says what it holds: each shard's ``sha256`` is the hash of its object's bytes,
the manifest's ``sha256`` the :class:`FeatureDigest` of the whole array (dtype, shape and
rows; the same hash the local cache records and a run's manifest carries, whichever tier
the rows came from). :func:`read_rows` checks each shard as it arrives and the whole once
the last one has, so the one read that fetches the rows verifies them; an entry that
does not read back as its manifest says (a shard changed, truncated or missing, a
manifest of another format) raises :class:`BadEntry`, which the feature cache treats as
absent: it says so in one line, removes the manifest (:func:`discard_entry`) and encodes
the entry anew.

Why the whole entry is atomic although S3 has no rename: every ``put`` of an
:class:`~raysvc.storage.ObjectStore` is atomic on its own (one PutObject, which S3 and
the JuiceFS gateway commit whole or not at all; write-then-rename for a local folder),
and the manifest is put only after every shard's put has returned. A reader looks at
the manifest first and treats a key without one as absent, so it sees either nothing
(and encodes) or a manifest whose shards were all completely written before it existed
(S3 reads are strongly consistent after a write). Shards a crashed writer left without
a manifest are never read, and the next writer overwrites them. Two writers racing on
one key write the same rows (the same images through the same backbone; bit for bit on
one encoder path) and the last manifest put wins; a shard under it last written by the
other writer with rows that differ (the Ray Data and in-process paths may round float16
differently) fails its hash, and the reader that finds it replaces the entry: an extra
encode, never a wrong entry.

So that two nodes missing the same entry at once do not both encode it, the first puts
``<key>/lease.json`` and renews it while it encodes; the others wait for the manifest
(:class:`EncodeLease`). The lease is best effort (S3 has no compare-and-swap): two
nodes that claim it within the same few milliseconds both encode, which costs time,
never correctness. A lease that stops changing for its whole term (its holder died)
is taken over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from raysvc.errors import RaysvcBug, StorageError, one_line
from raysvc.storage.destinations import open_store
from raysvc.storage.stores import ObjectStore

# 2: shards and the whole carry sha256 hashes (a format-1 manifest is replaced)
FORMAT = 2
MANIFEST = "manifest.json"
LEASE = "lease.json"
LEASE_SECONDS = 120.0
# 32768 rows: 24 MiB of float16 at D=384 (MiniLM), 64 MiB at D=1024: few objects per
# entry, and none so large that a reader holds much more than one in memory at a time
ROWS_PER_SHARD = 32_768


def open_feature_store(dest: str | ObjectStore) -> ObjectStore:
    """The shared feature store at ``dest`` (``s3://BUCKET[/PREFIX]``, a folder, or a store);
    parsing only, nothing is contacted. A StorageError names it as the feature store."""
    if isinstance(dest, ObjectStore):
        return dest
    try:
        return open_store(dest)
    except StorageError:
        raise StorageError(f"feature store {dest!r}: use a local folder or s3://BUCKET/PREFIX") from None


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def has_entry(store: ObjectStore, key: str) -> bool:
    """Whether ``key`` has a manifest in ``store`` (whether its rows verify is for :func:`read_rows`)."""
    return store.exists(f"{key}/{MANIFEST}")


class FeatureDigest:
    """The content hash of an (N, D) feature array: sha256 over its dtype and shape, then
    its rows in C order. The same for the same rows however they are stored (one local
    ``.npy``, shards of any size), so two runs whose manifests carry one hash had equal inputs.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | str):
        self.dtype = np.dtype(dtype)
        self._sha = hashlib.sha256(json.dumps({"dtype": self.dtype.str, "shape": list(shape)}).encode())

    def update(self, rows: np.ndarray | bytes) -> None:
        """Add the next rows (an array of the entry's dtype, or their raw bytes as a file holds them)."""
        if isinstance(rows, np.ndarray):
            if rows.dtype != self.dtype:
                raise RaysvcBug(f"rows of dtype {rows.dtype} hashed as {self.dtype}")
            rows = np.ascontiguousarray(rows)
        self._sha.update(rows)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class BadEntry(Exception):
    """An entry that does not read back as its manifest says; ``str()`` is one line naming the
    object. It never leaves the feature cache, which treats the entry as absent and replaces
    it; ``manifest`` is the manifest's bytes as read, so that only that manifest is removed."""

    def __init__(self, message: str, manifest: bytes):
        super().__init__(message)
        self.manifest = manifest


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str
    rows: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class EntryManifest:
    """A complete entry's manifest, parsed and checked for consistency (not yet against its shards)."""

    key: str
    shape: tuple[int, int]
    dtype: np.dtype
    sha256: str
    shards: tuple[Shard, ...]
    where: str  # the entry's location, for messages: s3://bucket/prefix/<key>
    raw: bytes


def entry_location(store: ObjectStore, key: str) -> str:
    return f"{str(store).rstrip('/')}/{key}"


def write_entry(store: ObjectStore, key: str, features: np.ndarray, rows_per_shard: int = ROWS_PER_SHARD,
                sha256: str | None = None) -> bool:
    """Write ``features`` as the entry ``key``: shards first, the manifest (with every shard's
    hash and the whole's) last, hashing each shard's bytes as they are put. ``sha256``: the
    whole's :class:`FeatureDigest` when the caller has it (it hashed these rows writing its
    local copy), so the rows are not hashed a second time for it.

    Returns False (and writes nothing) when a manifest is there already: another node
    finished first (a bad entry's manifest is removed by :func:`discard_entry` before this).
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if has_entry(store, key):
        return False
    whole = FeatureDigest(features.shape, features.dtype) if sha256 is None else None
    shards = []
    for index, start in enumerate(range(0, max(len(features), 1), rows_per_shard)):
        rows = np.ascontiguousarray(features[start : start + rows_per_shard])
        if whole is not None:
            whole.update(rows)
        buffer = io.BytesIO()
        np.save(buffer, rows, allow_pickle=False)
        data = buffer.getvalue()
        store.put(f"{key}/{shard_name(index)}", data)
        shards.append({"name": shard_name(index), "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {
        "format": FORMAT, "key": key, "shape": list(features.shape), "dtype": str(features.dtype),
        "rows_per_shard": rows_per_shard, "sha256": sha256 or whole.hexdigest(), "shards": shards,
    }
    store.put(f"{key}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), content_type="application/json")
    return True


def read_manifest(store: ObjectStore, key: str) -> EntryManifest | None:
    """The entry's manifest, None when it has none (absent), or :class:`BadEntry` when it is
    not a manifest of this format for ``key`` whose shards add up to its shape."""
    raw = store.get(f"{key}/{MANIFEST}")
    if raw is None:
        return None
    where = entry_location(store, key)
    try:
        body = json.loads(raw)
        if body.get("format") != FORMAT or body.get("key") != key:
            raise BadEntry(f"feature store entry {where} has a manifest of another format "
                           f"({body.get('format')!r}, key {body.get('key')!r})", raw)
        shape = tuple(int(n) for n in body["shape"])
        shards = tuple(Shard(str(s["name"]), int(s["rows"]), str(s["sha256"])) for s in body["shards"])
        manifest = EntryManifest(key, shape, np.dtype(body["dtype"]), str(body["sha256"]), shards, where, raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON, a missing field, a bad dtype
        raise BadEntry(f"feature store entry {where} has an unreadable manifest ({one_line(exc, 120)})", raw) from None
    if len(shape) != 2 or sum(s.rows for s in shards) != shape[0]:
        raise BadEntry(f"feature store entry {where}: its shards' rows do not add up to its shape {list(shape)}", raw)
    return manifest


def read_rows(store: ObjectStore, manifest: EntryManifest) -> Iterator[np.ndarray]:
    """The entry's rows, shard by shard, each checked against its hash before it is yielded and
    the whole checked after the last: a consumer that commits only once this is exhausted
    never commits rows that do not match. :class:`BadEntry` names the first object that fails."""
    whole = FeatureDigest(manifest.shape, manifest.dtype)
    for shard in manifest.shards:
        where = f"{manifest.where}/{shard.name}"
        data = store.get(f"{manifest.key}/{shard.name}")
        if data is None:
            raise BadEntry(f"feature store shard {where} is missing", manifest.raw)
        if hashlib.sha256(data).hexdigest() != shard.sha256:
            raise BadEntry(f"feature store shard {where} does not match its sha256 in the manifest "
                           f"({len(data)} bytes)", manifest.raw)
        try:
            rows = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise BadEntry(f"feature store shard {where} is not an array ({one_line(exc, 120)})", manifest.raw) from None
        if rows.dtype != manifest.dtype or rows.shape != (shard.rows, *manifest.shape[1:]):
            raise BadEntry(f"feature store shard {where} holds {rows.dtype} {list(rows.shape)}, not the manifest's "
                           f"{manifest.dtype} [{shard.rows}, {manifest.shape[1]}]", manifest.raw)
        whole.update(rows)
        yield rows
    if whole.hexdigest() != manifest.sha256:
        raise BadEntry(f"feature store entry {manifest.where}: its rows do not match the manifest's sha256", manifest.raw)


def discard_entry(store: ObjectStore, key: str, bad: BadEntry) -> None:
    """Remove the manifest ``bad`` was read under, so every node sees the entry as absent
    (the next writer overwrites its shards). A manifest someone put since is left alone:
    the check and the delete are two calls, so a replacement in between is lost only in a
    window of milliseconds, which costs an encode, never a wrong entry."""
    if store.get(f"{key}/{MANIFEST}") == bad.manifest:
        store.delete(f"{key}/{MANIFEST}")


class EncodeLease:
    """Who encodes a missing entry: ``claim()`` returns True for the one node that should
    (it then renews the lease until :meth:`release`), or False once another node's entry
    is complete (read it). Waiting nodes poll every ``poll`` seconds; a lease unchanged
    for ``term`` seconds on the waiter's own clock (no clock skew between nodes matters)
    belongs to a dead holder and is taken over.
    """

    def __init__(self, store: ObjectStore, key: str, term: float = LEASE_SECONDS, poll: float = 2.0,
                 notice: Callable[[str], None] | None = None):
        self.store, self.key, self.term, self.poll = store, key, term, poll
        self.settle = min(poll, 1.0)
        self.owner = f"{platform.node()}-{uuid.uuid4().hex[:12]}"
        self.notice = notice or (lambda text: print(text, flush=True))
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def _name(self) -> str:
        return f"{self.key}/{LEASE}"

    def _put(self, beat: int) -> None:
        body = {"owner": self.owner, "beat": beat, "term": self.term}
        self.store.put(self._name, json.dumps(body).encode(), content_type="application/json")

    def _read(self) -> bytes | None:
        return self.store.get(self._name)

    def claim(self) -> bool:
        seen, since, told = None, time.monotonic(), False
        while True:
            if has_entry(self.store, self.key):
                return False
            current = self._read()
            if current != seen:
                seen, since = current, time.monotonic()
            if current is None or time.monotonic() - since >= self.term:
                self._put(0)
                # the last of two simultaneous claimers wins the object; rereading only after a
                # settle lets a claimer that put a moment later land first, so both read one owner
                time.sleep(self.settle)
                if _owner(self._read()) == self.owner:
                    self._renewer = threading.Thread(target=self._renew, daemon=True, name=f"lease-{self.key}")
                    self._renewer.start()
                    return True
                continue
            if not told:
                holder = _owner(current) or "?"
                self.notice(f"features {self.key}: {holder} is encoding them; waiting for its entry")
                told = True
            time.sleep(self.poll)

    def _renew(self) -> None:
        beat = 0
        while not self._stop.wait(self.term / 4):
            beat += 1
            try:
                self._put(beat)
            except Exception:  # a missed beat only risks a second encoder, never a wrong entry
                pass

    def release(self) -> None:
        """Stop renewing and remove the lease (if still ours)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if _owner(self._read()) == self.owner:
            self.store.delete(self._name)


def _owner(raw: bytes | None) -> str | None:
    try:
        return json.loads(raw).get("owner") if raw else None
    except (ValueError, AttributeError):
        return None  # not a lease of ours: treated as another holder's until it goes stale
