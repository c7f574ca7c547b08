"""The object-store interface behind results (and shared feature entries).

An :class:`ObjectStore` holds bytes under slash-separated keys below one root: a local
folder (:class:`~raysvc.storage.local.LocalStore`) or an ``s3://BUCKET[/PREFIX]``
(:class:`~raysvc.storage.s3.S3Store`); :func:`raysvc.storage.destinations.open_store`
turns a destination into one. A ``put`` is atomic: a reader sees the old object,
nothing, or the new one, never part of one. Protocols (runs, feature shards) are
written once on top of this interface.
"""

from __future__ import annotations

import abc


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

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none (stores override this to
        ask without reading the object)."""
        data = self.get(key)
        return None if data is None else len(data)
