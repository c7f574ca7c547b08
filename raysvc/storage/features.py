"""Feature entries in an object store, shared by every node: sharded arrays, manifest last.

An entry is the (N, D) image-feature array of one :func:`raysvc.features.feature_key`::

    <key>/shard-00000.npy    rows [0, R)        (.npy, the entry's dtype: float16 or float32)
    <key>/shard-00001.npy    rows [R, 2R)
    ...
    <key>/manifest.json      {"format", "key", "shape", "dtype", "rows_per_shard", "shards": [{"name", "rows"}]}

Why the whole entry is atomic although S3 has no rename: every ``put`` of an
:class:`~raysvc.storage.ObjectStore` is atomic on its own (one PutObject, which S3 and
the JuiceFS gateway commit whole or not at all; write-then-rename for a local folder),
and the manifest is put only after every shard's put has returned. A reader looks at
the manifest first and treats a key without one as absent, so it sees either nothing
(and encodes) or a manifest whose shards were all completely written before it existed
(S3 reads are strongly consistent after a write). Shards a crashed writer left without
a manifest are never read, and the next writer overwrites them. Two writers racing on
one key write the same rows (the same images through the same backbone, equal within
float16 rounding), so a manifest over a mix of their shards is still a correct entry;
a shard whose shape or dtype disagrees with the manifest (another format) makes the
entry count as absent, so it is encoded and written anew.

So that two nodes missing the same entry at once do not both encode it, the first puts
``<key>/lease.json`` and renews it while it encodes; the others wait for the manifest
(:class:`EncodeLease`). The lease is best effort (S3 has no compare-and-swap): two
nodes that claim it within the same few milliseconds both encode, which costs time,
never correctness. A lease that stops changing for its whole term (its holder died)
is taken over.
"""

from __future__ import annotations

import io
import json
import platform
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np

from raysvc.errors import StorageError
from raysvc.storage.destinations import open_store
from raysvc.storage.stores import ObjectStore

FORMAT = 1
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
    """Whether ``key`` has a complete entry (a manifest) in ``store``."""
    return store.exists(f"{key}/{MANIFEST}")


def write_entry(store: ObjectStore, key: str, features: np.ndarray, rows_per_shard: int = ROWS_PER_SHARD) -> bool:
    """Write ``features`` as the entry ``key``: shards first, the manifest last.

    Returns False (and writes nothing) when a complete entry is there already: another
    node finished first, and its rows equal ours within the stored dtype's rounding.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if has_entry(store, key):
        return False
    shards = []
    for index, start in enumerate(range(0, max(len(features), 1), rows_per_shard)):
        rows = np.ascontiguousarray(features[start : start + rows_per_shard])
        buffer = io.BytesIO()
        np.save(buffer, rows, allow_pickle=False)
        store.put(f"{key}/{shard_name(index)}", buffer.getvalue())
        shards.append({"name": shard_name(index), "rows": len(rows)})
    manifest = {
        "format": FORMAT, "key": key, "shape": list(features.shape), "dtype": str(features.dtype),
        "rows_per_shard": rows_per_shard, "shards": shards,
    }
    store.put(f"{key}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), content_type="application/json")
    return True


def read_entry(store: ObjectStore, key: str) -> np.ndarray | None:
    """The entry's (N, D) array, or None when it has no manifest or does not read back as the
    manifest says (a half-written or foreign entry counts as absent: the caller encodes anew)."""
    raw = store.get(f"{key}/{MANIFEST}")
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return None
        shape, dtype = tuple(manifest["shape"]), np.dtype(manifest["dtype"])
        out = np.empty(shape, dtype=dtype)
        start = 0
        for shard in manifest["shards"]:
            data = store.get(f"{key}/{shard['name']}")
            if data is None:
                return None
            rows = np.load(io.BytesIO(data), allow_pickle=False)
            if rows.dtype != dtype or rows.shape != (shard["rows"], *shape[1:]) or start + len(rows) > shape[0]:
                return None
            out[start : start + len(rows)] = rows
            start += len(rows)
    except (ValueError, KeyError, TypeError, EOFError):
        return None
    return out if start == shape[0] else None


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
