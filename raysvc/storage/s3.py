"""S3-compatible object storage: client settings, retries, and :class:`S3Store`.

Settings come from the environment when a call is made:
``RAYSVC_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (none: AWS);
the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_PROFILE``; ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` (default us-east-1);
``RAYSVC_S3_RETRY_SECONDS`` (default 60): how long to keep retrying, with exponential
backoff, while the store is unreachable or answers 5xx, before a StorageError. A retry
says so on stderr once when it starts and once when the store answers again. The window
bounds a whole call, a frozen store included (one that accepts connections and never
answers): each attempt's connect and read timeouts fit in what is left of it
(:func:`attempt_timeouts`).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from raysvc.errors import StorageError, one_line
from raysvc.progress import notice
from raysvc.storage.stores import ObjectStore

DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT = 5.0
# a healthy store answers a put of a 64 MiB feature shard well within this
READ_TIMEOUT = 120.0

_RETRY_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "XMinioServerNotInitialized", "XMinioStorageFull",
}  # fmt: skip
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"}
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def client_config(endpoint: str | None, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT):
    """botocore settings for every raysvc S3 client (the runtime's and the local gateway's)."""
    from botocore.config import Config

    return Config(
        # non-AWS stores (the JuiceFS/MinIO gateway) reject the new default checksums
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else {},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1},  # retries are ours (see _retry)
    )


def _settings() -> tuple:
    endpoint = (
        os.environ.get("RAYSVC_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or DEFAULT_REGION
    creds = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"))
    return endpoint, region, creds


def attempt_timeouts(window: float, left: float) -> tuple[float, float]:
    """(connect, read) timeouts in seconds for one attempt of a call whose retry window is
    ``window`` seconds with ``left`` of them left.

    The read timeout is at most half the window, so a store frozen for a moment is tried
    again within it, and at most what is left, so a frozen store holds no call much past
    its window (by under the last attempt's 1 + 1 s); whole seconds, at least 1, so the
    clients (one per pair, see :func:`s3_client`) stay few.
    """
    read = max(1, math.floor(min(READ_TIMEOUT, window / 2, left)))
    return min(CONNECT_TIMEOUT, read), read


@functools.lru_cache(maxsize=32)
def _client_for(endpoint, region, creds, timeouts):
    import boto3

    config = client_config(endpoint, *timeouts)
    return boto3.session.Session(region_name=region).client("s3", endpoint_url=endpoint, config=config)


_CLIENT_LOCK = threading.Lock()


def s3_client(timeouts: tuple[float, float]):
    """A boto3 client for the environment's settings with these (connect, read) timeouts (one per
    distinct setting, shared)."""
    endpoint, region, creds = _settings()
    try:
        with _CLIENT_LOCK:  # boto3 session/client creation is not thread-safe
            return _client_for(endpoint, region, creds, timeouts)
    except Exception as exc:  # BotoCoreError, ProfileNotFound, a bad URL...
        raise StorageError(one_line(f"cannot set up an S3 client for {endpoint or 'AWS'}: {exc}")) from None


def endpoint_name() -> str:
    return _settings()[0] or "AWS S3"


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_transient(exc: Exception) -> bool:
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, (BotoConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return True  # includes EndpointConnectionError, ConnectTimeoutError
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or error_code(exc) in _RETRY_CODES
    return isinstance(exc, (ConnectionError, TimeoutError))


def retry_window(value: float | None) -> float:
    if value is not None:
        return float(value)
    env = os.environ.get("RAYSVC_S3_RETRY_SECONDS")
    if env:
        try:
            return float(env)
        except ValueError:
            raise StorageError(f"RAYSVC_S3_RETRY_SECONDS={env!r} is not a number") from None
    return DEFAULT_RETRY_SECONDS


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix/``; a put is one PutObject (atomic in S3)."""

    def __init__(self, bucket: str, prefix: str = "", *, retry_seconds: float | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retry_seconds = retry_seconds

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, fn: Callable[[Any], Any], transient_codes: frozenset[str] = frozenset()) -> Any:
        """``fn(client)``; transient failures (and errors with ``transient_codes``) retried with
        backoff within the retry window, each attempt's timeouts within what is left of it."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        total = retry_window(self.retry_seconds)
        started = time.monotonic()
        delay, attempts = 0.2, 0
        while True:
            attempts += 1
            try:
                result = fn(s3_client(attempt_timeouts(total, started + total - time.monotonic())))
                if attempts > 1:
                    notice(f"S3 store at {endpoint_name()} answers again after "
                           f"{time.monotonic() - started:.0f}s ({attempts - 1} failed attempts)")
                return result
            except (BotoCoreError, ClientError, OSError) as exc:
                if isinstance(exc, NoCredentialsError):
                    raise StorageError(
                        f"no S3 credentials for {self}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
                code = error_code(exc)
                if code == "NoSuchBucket":
                    raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {endpoint_name()}") from None
                if code in _DENIED:
                    raise StorageError(one_line(
                        f"S3 access denied while trying to {what} {self} at {endpoint_name()}: {exc}")) from None
                if not (_is_transient(exc) or code in transient_codes):
                    raise StorageError(one_line(f"cannot {what} {self}: {exc}")) from None
                left = started + total - time.monotonic()
                if left <= 0:
                    raise StorageError(one_line(
                        f"cannot {what} {self}: S3 store at {endpoint_name()} still unavailable after "
                        f"{total:g}s ({attempts} attempts): {exc}")) from None
                if attempts == 1:
                    notice(f"S3 store at {endpoint_name()} unavailable ({one_line(exc, 120)}); "
                           f"retrying for up to {total:g}s")
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def get(client):
            try:
                return client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise

        return self._call("read from", get)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # the JuiceFS gateway answers a put NoSuchKey when a concurrent delete removed the
        # folder it was writing into (it prunes empty folders): that put goes through again
        self._call("write to", lambda c: c.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type),
            transient_codes=_MISSING)

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        def head(client):
            try:
                return int(client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise

        return self._call("read from", head)

    def delete(self, key: str) -> None:
        # single DeleteObject calls: JuiceFS's DeleteObjects insists on a Content-MD5 header
        self._call("delete from", lambda c: c.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def list(self, prefix: str) -> list[str]:
        def ls(client):
            keys = []
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
            return sorted(keys)

        return self._call("list", ls)

    def check_writable(self) -> None:
        """The bucket must exist and a probe object can be put and deleted."""
        from botocore.exceptions import ClientError

        def head(client):
            try:
                client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {endpoint_name()}") from None
                raise

        self._call("check", head)
        probe = f".raysvc-write-probe-{uuid.uuid4().hex}"
        self.put(probe, b"probe")
        self.delete(probe)
