"""Runs in an object store: one folder per run, records first and the manifest last.

Layout under a destination ``DEST`` (see :func:`~raysvc.storage.stores.open_store`)::

    DEST/runs/<run_id>/records.parquet   the run's rows (records.SCHEMA)
    DEST/runs/<run_id>/manifest.json     config, resolved options, provenance, schema_version,
                                         finished_at, n_rows, records_sha256

A run exists for readers only once its manifest exists, and the manifest is always
written last: a write first removes an older manifest of the same run, then replaces
``records.parquet`` (an atomic put), then writes the manifest. So a rerun of a run_id
replaces its rows, never duplicates them, and a reader sees either the complete old run,
nothing, or the complete new run (the manifest's ``records_sha256`` is checked on read).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import time
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from raysvc.errors import CorruptRunError, StorageError, one_line
from raysvc.records import SCHEMA, SCHEMA_VERSION
from raysvc.storage.destinations import open_store
from raysvc.storage.stores import ObjectStore

RECORDS = "records.parquet"
MANIFEST = "manifest.json"
RUNS = "runs"
STORAGE_FORMAT = 1
CHECKSUM_MISMATCH = f"{RECORDS} does not match the checksum in its manifest (the file was changed or is corrupt)"
_RUN_ID = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,199}$")
Dest = str | os.PathLike | ObjectStore


class Run(NamedTuple):
    run_id: str
    table: pa.Table
    manifest: dict


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


def write_run(dest: Dest, run_id: str, table: pa.Table, manifest: dict, *, retry_seconds: float | None = None) -> dict:
    """Store one run's rows and manifest, replacing any earlier run with that id.

    The manifest is completed with run_id, schema_version (default records.SCHEMA_VERSION),
    finished_at (default now, UTC), n_rows and records_sha256; the stored manifest is returned.
    """
    store = open_store(dest, retry_seconds=retry_seconds)
    check_run_id(run_id)
    if not isinstance(table, pa.Table):
        raise StorageError(f"write_run needs a pyarrow.Table, got {type(table).__name__}")
    if "run_id" in table.column_names and table.num_rows:
        ids = set(table.column("run_id").unique().to_pylist())
        if ids != {run_id}:
            raise StorageError(f"rows for run {run_id!r} carry run_id {sorted(map(str, ids))}")
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    records = buffer.getvalue()
    full = dict(manifest)
    full.setdefault("schema_version", SCHEMA_VERSION)
    full.setdefault("finished_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    full.update(run_id=run_id, n_rows=table.num_rows, records_file=RECORDS,
                records_sha256=hashlib.sha256(records).hexdigest(), storage_format=STORAGE_FORMAT)
    try:
        manifest_bytes = json.dumps(full, indent=2, sort_keys=True, default=str).encode()
    except (TypeError, ValueError) as exc:
        raise StorageError(one_line(f"manifest of run {run_id!r} cannot be stored as JSON: {exc}")) from None
    store.delete(run_key(run_id, MANIFEST))  # hide the old run while its rows are replaced
    store.put(run_key(run_id, RECORDS), records, "application/vnd.apache.parquet")
    store.put(run_key(run_id, MANIFEST), manifest_bytes, "application/json")
    return full


def list_runs(dest: Dest, *, retry_seconds: float | None = None) -> list[str]:
    """Sorted ids of the complete runs (those with a manifest) under ``dest``."""
    store = open_store(dest, retry_seconds=retry_seconds)
    out = []
    for key in store.list(f"{RUNS}/"):
        parts = key[len(RUNS) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0]:
            out.append(parts[0])
    return sorted(out)


def read_run(dest: Dest, run_id: str, *, retry_seconds: float | None = None) -> Run | None:
    """One complete run, or None when it does not exist (or is being rewritten).

    A run whose pieces disagree, or cannot be parsed, raises :class:`CorruptRunError`
    saying what is wrong; a rewrite under way is waited out first.
    """
    store = open_store(dest, retry_seconds=retry_seconds)
    reason = ""
    for attempt in range(5):
        if attempt:
            time.sleep(0.2)  # a rewrite may be under way: read again
        raw_manifest = store.get(run_key(run_id, MANIFEST))
        if raw_manifest is None:
            return None
        try:
            manifest = json.loads(raw_manifest)
        except ValueError as exc:
            reason = f"{MANIFEST} is not valid JSON: it is truncated or was edited ({one_line(exc, 120)})"
            continue
        if not isinstance(manifest, dict):
            reason = f"{MANIFEST} is not a JSON object (it holds a {type(manifest).__name__})"
            continue
        raw = store.get(run_key(run_id, RECORDS))
        if raw is None:
            reason = f"{RECORDS} is missing (its {MANIFEST} is there)"
            continue
        if manifest.get("records_sha256") not in (None, hashlib.sha256(raw).hexdigest()):
            reason = CHECKSUM_MISMATCH
            continue
        try:
            return Run(run_id, pq.read_table(pa.BufferReader(raw)), manifest)
        except (pa.ArrowException, OSError) as exc:
            reason = f"{RECORDS} is not a readable Parquet file ({one_line(exc, 120)})"
    raise CorruptRunError(run_id, str(store), reason, run_location(store, run_id))


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
    store.delete(run_key(run_id, RECORDS))
    return existed
