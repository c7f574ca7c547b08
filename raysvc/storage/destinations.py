"""Destinations: a local directory, ``file://DIR`` or ``s3://BUCKET[/PREFIX]``, opened as an
:class:`~raysvc.storage.stores.ObjectStore`."""

from __future__ import annotations

import os
import re

from raysvc.errors import StorageError
from raysvc.storage.local import LocalStore
from raysvc.storage.s3 import S3Store
from raysvc.storage.stores import ObjectStore


def open_store(dest: str | os.PathLike | ObjectStore, *, retry_seconds: float | None = None) -> ObjectStore:
    """The store for a destination: a local directory, ``file://DIR`` or ``s3://BUCKET[/PREFIX]``.

    ``retry_seconds`` bounds S3 retries while the store is unreachable (see
    :mod:`raysvc.storage.s3`).
    """
    if isinstance(dest, ObjectStore):
        return dest
    text = os.fspath(dest)
    if not text:
        raise StorageError("results destination is empty")
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise StorageError(f"results destination {text!r} names no bucket")
        return S3Store(bucket, prefix.strip("/"), retry_seconds=retry_seconds)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) and not text.startswith("file://"):
        raise StorageError(f"unsupported results destination {text!r}: use a local path or s3://BUCKET/PREFIX")
    return LocalStore(text.removeprefix("file://"))
