"""Runs in an object store: one writer's files under a prefix of their own, published by one
final object that names them.

Layout under a destination ``DEST`` (see :func:`~raysvc.storage.destinations.open_store`)::

    DEST/runs/<run_id>/<attempt>/records.parquet   the run's rows (records.SCHEMA)
    DEST/runs/<run_id>/<attempt>/<name>            any other file of the run (selections, ...)
    DEST/runs/<run_id>/manifest.json               config, resolved options, provenance,
                                                   schema_version, finished_at, n_rows, and
                                                   ``files``: name -> {path, sha256, bytes}

A write puts every file under a fresh attempt prefix (``<UTC time>-<random>``), then the
manifest, which is the commit: one atomic put whose ``files`` name that attempt's files
with their checksums. So records and manifest always belong to one writer: two writers of
one run id at the same moment each write their own attempt and the last manifest put
wins, whole; each rereads the manifest after its put, and the one whose attempt is not
named is told so (a notice on stderr) and removes its files. A run exists for readers
once its manifest exists; a reader verifies every file it reads against the manifest's
checksum. A rerun replaces the run: its manifest names the new attempt, and the files of
the attempt it replaced are removed after the put. Attempts that no manifest names (a
writer that died before its commit) are incomplete: :func:`stored_runs` names them, a
later write removes them once they are older than :data:`STALE_ATTEMPT_SECONDS`.

Runs written before attempts existed (storage format 1: ``records.parquet`` beside the
manifest, ``records_sha256`` in it) still read; a rerun replaces them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from raysvc.errors import CorruptRunError, StorageError, one_line
from raysvc.progress import notice
from raysvc.records import SCHEMA, SCHEMA_VERSION
from raysvc.storage.destinations import open_store
from raysvc.storage.stores import ObjectStore

RECORDS = "records.parquet"
MANIFEST = "manifest.json"
RUNS = "runs"
STORAGE_FORMAT = 2
CHECKSUM_MISMATCH = f"{RECORDS} does not match the checksum in its manifest (the file was changed or is corrupt)"
# an attempt no manifest names is left alone this long: its writer may still be writing
STALE_ATTEMPT_SECONDS = 3600.0
_RUN_ID = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,199}$")
_ATTEMPT = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{12}$")
Dest = str | os.PathLike | ObjectStore


class Run(NamedTuple):
    run_id: str
    table: pa.Table
    manifest: dict


class StoredRuns(NamedTuple):
    """What a destination holds: the complete runs, and the incomplete ones with the reason."""

    complete: list[str]
    incomplete: dict[str, str]


def run_key(run_id: str, name: str) -> str:
    return f"{RUNS}/{check_run_id(run_id)}/{name}"


def runs_location(dest: Dest) -> str:
    """Where ``dest`` keeps its runs, for messages: ``DEST/runs``."""
    return f"{str(open_store(dest)).rstrip('/')}/{RUNS}"


def run_location(dest: Dest, run_id: str) -> str:
    """Where ``dest`` keeps run ``run_id``, for messages: ``DEST/runs/<run_id>``."""
    return f"{runs_location(dest)}/{run_id}"


def check_run_id(run_id: str) -> str:
    """``run_id``, or a one-line StorageError when it cannot name a run's folder."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise StorageError(
            f"invalid run_id {run_id!r}: use letters, digits and . _ = + - (not leading '.'), at most 200"
        )
    return run_id


def check_writable(dest: Dest, *, retry_seconds: float | None = None) -> ObjectStore:
    """The store for ``dest``, or a one-line StorageError unless runs can be written there.
    Creates nothing: a local destination's folder is made when the first run is written."""
    store = open_store(dest, retry_seconds=retry_seconds)
    store.check_writable()
    return store


def _new_attempt() -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{uuid.uuid4().hex[:12]}"


def _attempt_age(attempt: str) -> float | None:
    """Seconds since ``attempt`` began (from its name), or None for a name that is no attempt."""
    match = _ATTEMPT.match(attempt)
    if not match:
        return None
    began = _dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)
    return (_dt.datetime.now(_dt.timezone.utc) - began).total_seconds()


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_run(dest: Dest, run_id: str, records: pa.Table, manifest: dict, *,
              files: Mapping[str, pa.Table | bytes | Path] | None = None, retry_seconds: float | None = None) -> dict:
    """Store one run's rows (and ``files``: other tables, bytes or local files of the run, by
    file name; a local file is read when it is put, one at a time) with its manifest,
    replacing any earlier run with that id; see the module docstring.

    The manifest is completed with run_id, schema_version (default records.SCHEMA_VERSION),
    finished_at (default now, UTC), n_rows and ``files``. Returns the stored manifest: this
    writer's, or, when another writer published the same run at the same moment and won,
    that writer's (after a notice).
    """
    store = open_store(dest, retry_seconds=retry_seconds)
    check_run_id(run_id)
    if not isinstance(records, pa.Table):
        raise StorageError(f"write_run needs a pyarrow.Table, got {type(records).__name__}")
    if "run_id" in records.column_names and records.num_rows:
        ids = set(records.column("run_id").unique().to_pylist())
        if ids != {run_id}:
            raise StorageError(f"rows for run {run_id!r} carry run_id {sorted(map(str, ids))}")
    for name in files or {}:
        if name in (RECORDS, MANIFEST) or "/" in name or not name:
            raise StorageError(f"run {run_id!r}: a run file may not be called {name!r}")
    attempt = _new_attempt()
    full = dict(manifest)
    full.setdefault("schema_version", SCHEMA_VERSION)
    full.setdefault("finished_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    full.update(run_id=run_id, n_rows=records.num_rows, storage_format=STORAGE_FORMAT, attempt=attempt, files={})
    replaced = _published_attempt(store, run_id)
    for name, data in {RECORDS: records, **(files or {})}.items():
        if isinstance(data, pa.Table):
            data = _parquet(data)
        elif isinstance(data, Path):
            data = data.read_bytes()
        path = f"{attempt}/{name}"
        store.put(run_key(run_id, path), data,
                  "application/vnd.apache.parquet" if name.endswith(".parquet") else "application/octet-stream")
        full["files"][name] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        manifest_bytes = json.dumps(full, indent=2, sort_keys=True, default=str).encode()
    except (TypeError, ValueError) as exc:
        _remove_attempt(store, run_id, attempt)
        raise StorageError(one_line(f"manifest of run {run_id!r} cannot be stored as JSON: {exc}")) from None
    store.put(run_key(run_id, MANIFEST), manifest_bytes, "application/json")
    # S3 reads are strongly consistent after a put: a writer that published after ours is seen now
    if _published_attempt(store, run_id) != attempt:
        _remove_attempt(store, run_id, attempt)
        winner = _read_manifest(store, run_id)
        notice(f"run {run_id}: another writer stored it at the same moment; its copy is kept, this one's removed")
        return winner if isinstance(winner, dict) else full
    _remove_replaced(store, run_id, replaced, keep=attempt)
    return full


def _read_manifest(store: ObjectStore, run_id: str) -> dict | str | None:
    """The parsed manifest, a reason why it cannot be (a string), or None when there is none."""
    raw = store.get(run_key(run_id, MANIFEST))
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        return f"{MANIFEST} is not valid JSON: it is truncated or was edited ({one_line(exc, 120)})"
    if not isinstance(manifest, dict):
        return f"{MANIFEST} is not a JSON object (it holds a {type(manifest).__name__})"
    return manifest


def _published_attempt(store: ObjectStore, run_id: str) -> str | None:
    """The attempt the run's manifest names now ("" for a format-1 run, None without one)."""
    manifest = _read_manifest(store, run_id)
    if not isinstance(manifest, dict):
        return None
    return str(manifest.get("attempt", ""))


def _remove_attempt(store: ObjectStore, run_id: str, attempt: str) -> None:
    for key in store.list(f"{RUNS}/{run_id}/{attempt}/"):
        store.delete(key)


def _remove_replaced(store: ObjectStore, run_id: str, replaced: str | None, keep: str) -> None:
    """After a publication: the attempt it replaced (or a format-1 run's records), and attempts
    that no manifest named for longer than :data:`STALE_ATTEMPT_SECONDS`."""
    if replaced == "":
        store.delete(run_key(run_id, RECORDS))
    for attempt in _attempts(store, run_id):
        if attempt == keep:
            continue
        age = _attempt_age(attempt)
        if attempt == replaced or (age is not None and age > STALE_ATTEMPT_SECONDS):
            _remove_attempt(store, run_id, attempt)


def _attempts(store: ObjectStore, run_id: str) -> list[str]:
    prefix = f"{RUNS}/{run_id}/"
    return sorted({key[len(prefix):].split("/")[0] for key in store.list(prefix) if key[len(prefix):].count("/")})


def list_runs(dest: Dest, *, retry_seconds: float | None = None) -> list[str]:
    """Sorted ids of the runs with a manifest under ``dest`` (see :func:`stored_runs` to verify them)."""
    store = open_store(dest, retry_seconds=retry_seconds)
    out = []
    for key in store.list(f"{RUNS}/"):
        parts = key[len(RUNS) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0]:
            out.append(parts[0])
    return sorted(out)


def stored_runs(dest: Dest, *, retry_seconds: float | None = None) -> StoredRuns:
    """The complete runs under ``dest`` (a manifest whose every file is there, at its size)
    and the incomplete ones with why: a writer that never committed, or a run whose files
    disagree with its manifest. What ``--skip-existing`` may skip: complete runs only.
    Checksums are verified when a run is read (:func:`read_run`), not here."""
    store = open_store(dest, retry_seconds=retry_seconds)
    by_run: dict[str, set[str]] = {}
    for key in store.list(f"{RUNS}/"):
        parts = key[len(RUNS) + 1 :].split("/")
        if len(parts) >= 2 and parts[0]:
            by_run.setdefault(parts[0], set()).add("/".join(parts[1:]))
    complete, incomplete = [], {}
    for run_id, keys in sorted(by_run.items()):
        if MANIFEST not in keys:
            incomplete[run_id] = f"no {MANIFEST}: a writer did not finish (files of an unpublished attempt)"
            continue
        manifest = _read_manifest(store, run_id)
        if not isinstance(manifest, dict):
            incomplete[run_id] = manifest or f"{MANIFEST} vanished while listing"
            continue
        problem = _missing_files(store, run_id, manifest, keys)
        if problem:
            incomplete[run_id] = problem
        else:
            complete.append(run_id)
    return StoredRuns(complete, incomplete)


def _missing_files(store: ObjectStore, run_id: str, manifest: dict, keys: set[str]) -> str | None:
    files = manifest.get("files")
    if not isinstance(files, dict):  # format 1: the records beside the manifest
        return None if RECORDS in keys else f"{RECORDS} is missing (its {MANIFEST} is there)"
    for name, entry in sorted(files.items()):
        path = entry.get("path") if isinstance(entry, dict) else None
        if path not in keys:
            return f"{name} is missing (its {MANIFEST} is there)"
        size = store.size(run_key(run_id, path))
        if size is not None and size != entry.get("bytes", size):
            return f"{name} has {size} bytes, its {MANIFEST} says {entry.get('bytes')} (truncated or replaced)"
    return None


def _file_entry(manifest: dict, name: str) -> tuple[str, str | None]:
    """(key below the run's folder, expected sha256 or None) of one of the run's files."""
    files = manifest.get("files")
    if isinstance(files, dict):
        entry = files.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise KeyError(name)
        return entry["path"], entry.get("sha256")
    if name != RECORDS:  # a format-1 run has its records only
        raise KeyError(name)
    return RECORDS, manifest.get("records_sha256")


def _checksum_mismatch(name: str) -> str:
    return f"{name} does not match the checksum in its manifest (the file was changed or is corrupt)"


def read_run(dest: Dest, run_id: str, *, retry_seconds: float | None = None) -> Run | None:
    """One complete run, or None when it does not exist.

    A run whose pieces disagree, or cannot be parsed, raises :class:`CorruptRunError`
    saying what is wrong; a rewrite under way is waited out first (its manifest then names
    the new attempt).
    """
    store = open_store(dest, retry_seconds=retry_seconds)
    reason = ""
    for attempt in range(5):
        if attempt:
            time.sleep(0.2)  # a rewrite may be under way: read again
        manifest = _read_manifest(store, run_id)
        if manifest is None:
            return None
        if isinstance(manifest, str):
            reason = manifest
            continue
        try:
            path, checksum = _file_entry(manifest, RECORDS)
        except KeyError:
            reason = f"its {MANIFEST} lists no {RECORDS}"
            continue
        raw = store.get(run_key(run_id, path))
        if raw is None:
            reason = f"{RECORDS} is missing (its {MANIFEST} is there)"
            continue
        if checksum not in (None, hashlib.sha256(raw).hexdigest()):
            reason = CHECKSUM_MISMATCH
            continue
        try:
            return Run(run_id, pq.read_table(pa.BufferReader(raw)), manifest)
        except (pa.ArrowException, OSError) as exc:
            reason = f"{RECORDS} is not a readable Parquet file ({one_line(exc, 120)})"
    raise CorruptRunError(run_id, str(store), reason, run_location(store, run_id))


def read_run_file(dest: Dest, run: Run, name: str, *, retry_seconds: float | None = None) -> bytes | None:
    """The bytes of the run's file ``name`` (None when the run has no such file), verified
    against its manifest's checksum."""
    store = open_store(dest, retry_seconds=retry_seconds)
    try:
        path, checksum = _file_entry(run.manifest, name)
    except KeyError:
        return None
    raw = store.get(run_key(run.run_id, path))
    where = str(store)
    if raw is None:
        raise CorruptRunError(run.run_id, where, f"{name} is missing (its {MANIFEST} is there)",
                              run_location(store, run.run_id))
    if checksum not in (None, hashlib.sha256(raw).hexdigest()):
        raise CorruptRunError(run.run_id, where, _checksum_mismatch(name), run_location(store, run.run_id))
    return raw


def read_runs(dest: Dest, run_ids: list[str] | None = None, *, retry_seconds: float | None = None) -> list[Run]:
    """All complete runs under ``dest`` (or just ``run_ids``) as (run_id, table, manifest), sorted by id."""
    store = open_store(dest, retry_seconds=retry_seconds)
    ids = list_runs(store) if run_ids is None else sorted(run_ids)
    return [run for run in (read_run(store, rid) for rid in ids) if run is not None]


def read_table(dest: Dest, *, retry_seconds: float | None = None) -> pa.Table:
    """The rows of every complete run under ``dest`` in one table (``.to_pandas()`` for a DataFrame)."""
    runs = read_runs(dest, retry_seconds=retry_seconds)
    if not runs:
        return SCHEMA.empty_table()
    try:
        return pa.concat_tables([r.table for r in runs], promote_options="default")
    except pa.ArrowInvalid as exc:
        raise StorageError(one_line(f"runs in {dest} have incompatible columns: {exc}")) from None


def delete_run(dest: Dest, run_id: str, *, retry_seconds: float | None = None) -> bool:
    """Remove a run (manifest first, so it disappears at once); True when it existed."""
    store = open_store(dest, retry_seconds=retry_seconds)
    existed = store.exists(run_key(run_id, MANIFEST))
    store.delete(run_key(run_id, MANIFEST))
    for key in store.list(f"{RUNS}/{check_run_id(run_id)}/"):
        store.delete(key)
    return existed
