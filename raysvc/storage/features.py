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
"""

from __future__ import annotations

import io
import json

import numpy as np

from raysvc.errors import StorageError
from raysvc.storage.stores import ObjectStore, open_store

FORMAT = 1
MANIFEST = "manifest.json"
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


def delete_entry(store: ObjectStore, key: str) -> None:
    """Remove the entry, manifest first, so no reader sees a manifest over missing shards."""
    store.delete(f"{key}/{MANIFEST}")
    for name in store.list(f"{key}/"):
        store.delete(name)
