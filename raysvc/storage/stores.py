"""The object-store interface behind results (and shared feature entries), and its parsing.

An :class:`ObjectStore` holds bytes under slash-separated keys below one root: a local
folder (:class:`~raysvc.storage.local.LocalStore`) or an ``s3://BUCKET[/PREFIX]``
(:class:`~raysvc.storage.s3.S3Store`). A ``put`` is atomic: a reader sees the old object,
nothing, or the new one, never part of one. Protocols (runs, feature shards) are
written once on top of this interface.
"""

from __future__ import annotations

import abc
import os
import re

from raysvc.errors import StorageError


class ObjectStore(abc.ABC):
    """Bytes under keys below one root; see the module docstring."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` atomically, replacing any object there."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def check_writable(self) -> None:
        """StorageError (one line) unless objects can be written here; leaves nothing behind
        (no folder is created)."""

    def exists(self, key: str) -> bool:
        return self.get(key) is not None


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
        from raysvc.storage.s3 import S3Store

        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise StorageError(f"results destination {text!r} names no bucket")
        return S3Store(bucket, prefix.strip("/"), retry_seconds=retry_seconds)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) and not text.startswith("file://"):
        raise StorageError(f"unsupported results destination {text!r}: use a local path or s3://BUCKET/PREFIX")
    from raysvc.storage.local import LocalStore

    return LocalStore(text.removeprefix("file://"))
