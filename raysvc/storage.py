"""Results storage: one folder per run, on a local path or under an ``s3://`` URI.

Layout under a destination ``DEST`` (a local directory, ``file://DIR`` or
``s3://BUCKET[/PREFIX]``)::

    DEST/runs/<run_id>/records.parquet   the run's rows (records.SCHEMA)
    DEST/runs/<run_id>/manifest.json     config, package versions, code revision,
                                         schema_version, finished_at, n_rows, records_sha256

A run exists for readers only once its manifest exists, and the manifest is always
written last: a write first removes an older manifest of the same run, then replaces
``records.parquet`` (local: temp file + ``os.replace``; S3: one PutObject, atomic), then
writes the manifest. So a rerun of a run_id replaces its rows, never duplicates them,
and a reader sees either the complete old run, nothing, or the complete new run (the
manifest's ``records_sha256`` is checked on read).

S3 settings come from the environment when a call is made:
``RAYSVC_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (none: AWS);
the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_PROFILE``; ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` (default us-east-1);
``RAYSVC_S3_RETRY_SECONDS`` (default 60): how long to keep retrying, with exponential
backoff, while the store is unreachable or answers 5xx, before a StorageError.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from raysvc.errors import StorageError
from raysvc.records import SCHEMA, SCHEMA_VERSION

RECORDS = "records.parquet"
MANIFEST = "manifest.json"
RUNS = "runs"
STORAGE_FORMAT = 1
DEFAULT_RETRY_SECONDS = 60.0
_RUN_ID = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,199}$")

# packages whose versions go into every manifest (missing ones are skipped)
MANIFEST_PACKAGES = (
    "raysvc", "torch", "torchvision", "open_clip_torch", "transformers", "ray",
    "numpy", "pandas", "pyarrow", "scikit-learn", "boto3",
)  # fmt: skip


class Run(NamedTuple):
    run_id: str
    table: pa.Table
    manifest: dict


def _one_line(text: Any, limit: int = 500) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ------------------------------------------------------------ destinations
@dataclass(frozen=True)
class Dest:
    """A parsed destination: ``kind`` is "local" (``path``) or "s3" (``bucket``, ``prefix``)."""

    kind: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""  # "" or ends with "/"

    def __str__(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}"
        return str(self.path)

    def key(self, run_id: str, name: str) -> str:
        return f"{self.prefix}{RUNS}/{run_id}/{name}"


def parse_dest(dest: str | os.PathLike | Dest) -> Dest:
    if isinstance(dest, Dest):
        return dest
    s = os.fspath(dest)
    if not s:
        raise StorageError("results destination is empty")
    if s.startswith("s3://"):
        bucket, _, prefix = s[5:].partition("/")
        if not bucket:
            raise StorageError(f"results destination {s!r} names no bucket")
        prefix = prefix.strip("/")
        return Dest("s3", bucket=bucket, prefix=prefix + "/" if prefix else "")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s) and not s.startswith("file://"):
        raise StorageError(f"unsupported results destination {s!r}: use a local path or s3://BUCKET/PREFIX")
    if s.startswith("file://"):
        s = s[7:]
    return Dest("local", path=Path(s).expanduser().absolute())


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise StorageError(
            f"invalid run_id {run_id!r}: use letters, digits and . _ = + - (not leading '.'), at most 200"
        )
    return run_id


# --------------------------------------------------------------- manifest
def package_versions(names=MANIFEST_PACKAGES) -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=4)
def code_revision(repo_dir: str | None = None) -> str:
    """``$RAYSVC_CODE_REVISION``, else the git commit of the code (``+dirty`` if modified), else "unknown"."""
    env = os.environ.get("RAYSVC_CODE_REVISION")
    if env:
        return env
    cwd = repo_dir or str(Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_manifest(config: dict, **extra) -> dict:
    """The manifest of a run: its full config plus package versions, code revision, schema version."""
    m = {
        "config": config,
        "packages": package_versions(),
        "code_revision": code_revision(),
        "schema_version": SCHEMA_VERSION,
    }
    m.update(extra)
    return m


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -------------------------------------------------------------------- S3
def _s3_settings() -> tuple:
    endpoint = (
        os.environ.get("RAYSVC_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    creds = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"))
    return endpoint, region, creds


@functools.lru_cache(maxsize=8)
def _client_for(endpoint, region, creds):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    return session.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            # non-AWS stores (the JuiceFS/MinIO gateway) reject the new default checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint else {},
            connect_timeout=5,
            read_timeout=120,
            retries={"total_max_attempts": 1},  # retries are ours (see _retry)
        ),
    )


_CLIENT_LOCK = threading.Lock()


def _s3_client():
    endpoint, region, creds = _s3_settings()
    try:
        with _CLIENT_LOCK:  # boto3 session/client creation is not thread-safe
            return _client_for(endpoint, region, creds)
    except Exception as e:  # botocore.exceptions.BotoCoreError, ProfileNotFound, bad URL...
        raise StorageError(_one_line(f"cannot set up an S3 client for {endpoint or 'AWS'}: {e}")) from None


def _endpoint_name() -> str:
    return _s3_settings()[0] or "AWS S3"


_RETRY_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "XMinioServerNotInitialized", "XMinioStorageFull",
}  # fmt: skip


def _is_transient(e: Exception) -> bool:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectionError as BotoConnectionError,
        ReadTimeoutError,
    )

    if isinstance(e, (BotoConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return True  # includes EndpointConnectionError, ConnectTimeoutError
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = e.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in _RETRY_CODES
    return isinstance(e, (ConnectionError, TimeoutError))


def _error_code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def _retry_seconds(value: float | None) -> float:
    if value is not None:
        return float(value)
    env = os.environ.get("RAYSVC_S3_RETRY_SECONDS")
    if env:
        try:
            return float(env)
        except ValueError:
            raise StorageError(f"RAYSVC_S3_RETRY_SECONDS={env!r} is not a number") from None
    return DEFAULT_RETRY_SECONDS


def _retry(what: str, dest: Dest, fn: Callable, retry_seconds: float | None):
    """Run ``fn(client)``; retry transient failures with exponential backoff; StorageError at the end."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    total = _retry_seconds(retry_seconds)
    deadline = time.monotonic() + total
    delay, attempts = 0.2, 0
    while True:
        attempts += 1
        try:
            return fn(_s3_client())
        except (BotoCoreError, ClientError, OSError) as e:
            if isinstance(e, NoCredentialsError):
                raise StorageError(
                    f"no S3 credentials for {dest}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from None
            code = _error_code(e)
            if code in ("NoSuchBucket",):
                raise StorageError(f"S3 bucket {dest.bucket!r} does not exist at {_endpoint_name()}") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"):
                raise StorageError(
                    _one_line(f"S3 access denied while trying to {what} {dest} at {_endpoint_name()}: {e}")
                ) from None
            if not _is_transient(e):
                raise StorageError(_one_line(f"cannot {what} {dest}: {e}")) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(
                    _one_line(
                        f"cannot {what} {dest}: S3 store at {_endpoint_name()} still unavailable after "
                        f"{total:g}s ({attempts} attempts): {e}"
                    )
                ) from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def _s3_get(dest: Dest, key: str, retry_seconds) -> bytes | None:
    """Object bytes, or None when the key does not exist."""
    from botocore.exceptions import ClientError

    def get(c):
        try:
            return c.get_object(Bucket=dest.bucket, Key=key)["Body"].read()
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    return _retry("read from", dest, get, retry_seconds)


def _s3_put(dest: Dest, key: str, body: bytes, content_type: str, retry_seconds) -> None:
    _retry(
        "write to",
        dest,
        lambda c: c.put_object(Bucket=dest.bucket, Key=key, Body=body, ContentType=content_type),
        retry_seconds,
    )


def _s3_delete(dest: Dest, key: str, retry_seconds) -> None:
    # single DeleteObject calls: JuiceFS's DeleteObjects insists on a Content-MD5 header
    _retry("delete from", dest, lambda c: c.delete_object(Bucket=dest.bucket, Key=key), retry_seconds)


def _s3_list(dest: Dest, prefix: str, retry_seconds) -> list[str]:
    def ls(c):
        keys = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=dest.bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    return _retry("list", dest, ls, retry_seconds)


# ------------------------------------------------------------ local files
def _local_run_dir(dest: Dest, run_id: str) -> Path:
    return dest.path / RUNS / run_id


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------ API
def check_writable(dest: str | os.PathLike, *, retry_seconds: float | None = None) -> Dest:
    """Fail fast with a one-line StorageError unless results can be written to ``dest``.

    Local: the directory is created if needed and a probe file written and removed.
    S3: the bucket must exist and a probe object can be put and deleted.
    """
    d = parse_dest(dest)
    probe = f".raysvc-write-probe-{uuid.uuid4().hex}"
    if d.kind == "local":
        try:
            d.path.mkdir(parents=True, exist_ok=True)
            _atomic_write(d.path / probe, b"probe")
            os.unlink(d.path / probe)
        except OSError as e:
            reason = e.strerror or e.__class__.__name__
            raise StorageError(f"results destination {d} is not writable: {reason}") from None
        return d

    from botocore.exceptions import ClientError

    def head(c):
        try:
            c.head_bucket(Bucket=d.bucket)
        except ClientError as e:
            if _error_code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"S3 bucket {d.bucket!r} does not exist at {_endpoint_name()}") from None
            raise

    _retry("check", d, head, retry_seconds)
    _s3_put(d, d.prefix + probe, b"probe", "application/octet-stream", retry_seconds)
    _s3_delete(d, d.prefix + probe, retry_seconds)
    return d


def write_run(
    dest: str | os.PathLike,
    run_id: str,
    table: pa.Table,
    manifest: dict,
    *,
    retry_seconds: float | None = None,
) -> dict:
    """Store one run's rows and manifest, replacing any earlier run with that id.

    The manifest is completed with run_id, schema_version (default records.SCHEMA_VERSION),
    finished_at (default now, UTC), n_rows and records_sha256; the stored manifest is returned.
    """
    d = parse_dest(dest)
    _check_run_id(run_id)
    if not isinstance(table, pa.Table):
        raise StorageError(f"write_run needs a pyarrow.Table, got {type(table).__name__}")
    if "run_id" in table.column_names and table.num_rows:
        ids = set(table.column("run_id").unique().to_pylist())
        if ids != {run_id}:
            raise StorageError(f"rows for run {run_id!r} carry run_id {sorted(map(str, ids))}")

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    records = buf.getvalue()
    full = dict(manifest)
    full.setdefault("schema_version", SCHEMA_VERSION)
    full.setdefault("finished_at", _utc_now())
    full.update(
        run_id=run_id,
        n_rows=table.num_rows,
        records_file=RECORDS,
        records_sha256=hashlib.sha256(records).hexdigest(),
        storage_format=STORAGE_FORMAT,
    )
    try:
        manifest_bytes = json.dumps(full, indent=2, sort_keys=True, default=str).encode()
    except (TypeError, ValueError) as e:
        raise StorageError(_one_line(f"manifest of run {run_id!r} cannot be stored as JSON: {e}")) from None

    if d.kind == "local":
        run_dir = _local_run_dir(d, run_id)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.unlink(run_dir / MANIFEST)  # hide the old run while its rows are replaced
            except FileNotFoundError:
                pass
            _atomic_write(run_dir / RECORDS, records)
            _atomic_write(run_dir / MANIFEST, manifest_bytes)
            _fsync_dir(run_dir)
        except OSError as e:
            raise StorageError(_one_line(f"cannot write run {run_id!r} to {d}: {e}")) from None
        return full

    _s3_delete(d, d.key(run_id, MANIFEST), retry_seconds)
    _s3_put(d, d.key(run_id, RECORDS), records, "application/vnd.apache.parquet", retry_seconds)
    _s3_put(d, d.key(run_id, MANIFEST), manifest_bytes, "application/json", retry_seconds)
    return full


def list_runs(dest: str | os.PathLike, *, retry_seconds: float | None = None) -> list[str]:
    """Sorted ids of the complete runs (those with a manifest) under ``dest``."""
    d = parse_dest(dest)
    if d.kind == "local":
        root = d.path / RUNS
        if not root.is_dir():
            return []
        try:
            return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())
        except OSError as e:
            raise StorageError(_one_line(f"cannot list runs in {d}: {e}")) from None
    base = f"{d.prefix}{RUNS}/"
    out = []
    for key in _s3_list(d, base, retry_seconds):
        parts = key[len(base) :].split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0]:
            out.append(parts[0])
    return sorted(out)


def _read_manifest(d: Dest, run_id: str, retry_seconds) -> dict | None:
    if d.kind == "local":
        try:
            raw = (_local_run_dir(d, run_id) / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(_one_line(f"cannot read manifest of run {run_id!r} in {d}: {e}")) from None
    else:
        raw = _s3_get(d, d.key(run_id, MANIFEST), retry_seconds)
        if raw is None:
            return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise StorageError(_one_line(f"manifest of run {run_id!r} in {d} is not valid JSON: {e}")) from None


def _read_records(d: Dest, run_id: str, retry_seconds) -> bytes | None:
    if d.kind == "local":
        try:
            return (_local_run_dir(d, run_id) / RECORDS).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(_one_line(f"cannot read records of run {run_id!r} in {d}: {e}")) from None
    return _s3_get(d, d.key(run_id, RECORDS), retry_seconds)


def read_run(dest: str | os.PathLike, run_id: str, *, retry_seconds: float | None = None) -> Run | None:
    """One complete run, or None when it does not exist (or is being rewritten)."""
    d = parse_dest(dest)
    _check_run_id(run_id)
    for _ in range(5):
        manifest = _read_manifest(d, run_id, retry_seconds)
        if manifest is None:
            return None
        raw = _read_records(d, run_id, retry_seconds)
        if raw is not None and manifest.get("records_sha256") in (None, hashlib.sha256(raw).hexdigest()):
            try:
                table = pq.read_table(pa.BufferReader(raw))
            except (pa.ArrowException, OSError) as e:
                raise StorageError(_one_line(f"records of run {run_id!r} in {d} are corrupt: {e}")) from None
            return Run(run_id, table, manifest)
        time.sleep(0.2)  # a rewrite is under way: read again
    raise StorageError(f"run {run_id!r} in {d} kept changing while being read, or its records do not match its manifest")


def read_runs(
    dest: str | os.PathLike, run_ids: list[str] | None = None, *, retry_seconds: float | None = None
) -> list[Run]:
    """All complete runs under ``dest`` (or just ``run_ids``) as (run_id, table, manifest), sorted by id."""
    d = parse_dest(dest)
    ids = list_runs(d, retry_seconds=retry_seconds) if run_ids is None else sorted(run_ids)
    out = []
    for rid in ids:
        r = read_run(d, rid, retry_seconds=retry_seconds)
        if r is not None:
            out.append(r)
    return out


def read_table(dest: str | os.PathLike, *, retry_seconds: float | None = None) -> pa.Table:
    """The rows of every complete run under ``dest`` in one table (``.to_pandas()`` for a DataFrame)."""
    runs = read_runs(dest, retry_seconds=retry_seconds)
    if not runs:
        return SCHEMA.empty_table()
    try:
        return pa.concat_tables([r.table for r in runs], promote_options="default")
    except pa.ArrowInvalid as e:
        raise StorageError(_one_line(f"runs in {dest} have incompatible columns: {e}")) from None


def delete_run(dest: str | os.PathLike, run_id: str, *, retry_seconds: float | None = None) -> bool:
    """Remove a run (manifest first, so it disappears at once); True when it existed."""
    d = parse_dest(dest)
    _check_run_id(run_id)
    if d.kind == "local":
        run_dir = _local_run_dir(d, run_id)
        existed = (run_dir / MANIFEST).exists()
        try:
            for name in (MANIFEST, RECORDS):
                try:
                    os.unlink(run_dir / name)
                except FileNotFoundError:
                    pass
            for p in run_dir.glob(".*.tmp"):  # leftovers of an interrupted write
                p.unlink(missing_ok=True)
            try:
                run_dir.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not empty: someone else's files, leave them
        except OSError as e:
            raise StorageError(_one_line(f"cannot delete run {run_id!r} from {d}: {e}")) from None
        return existed
    existed = _s3_get(d, d.key(run_id, MANIFEST), retry_seconds) is not None
    _s3_delete(d, d.key(run_id, MANIFEST), retry_seconds)
    _s3_delete(d, d.key(run_id, RECORDS), retry_seconds)
    return existed
