"""An object store in a local folder: a key is a relative path, a put is write-then-rename."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from raysvc.errors import StorageError, one_line
from raysvc.storage.stores import ObjectStore

_TMP_SUFFIX = ".tmp"


class LocalStore(ObjectStore):
    """Objects as files under ``root``; folders are made on the first put, not before."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()

    def __str__(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(one_line(f"cannot read {key} in {self}: {exc.strerror or exc}")) from None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(one_line(f"cannot write {key} to {self}: {exc.strerror or exc}")) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            for leftover in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):  # an interrupted put's
                leftover.unlink(missing_ok=True)
            # drop folders the delete emptied, up to the root; someone else's files stay
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(one_line(f"cannot delete {key} from {self}: {exc.strerror or exc}")) from None

    def list(self, prefix: str) -> list[str]:
        start = self._path(prefix) if prefix.endswith("/") else self._path(prefix).parent
        if not start.is_dir():
            return []
        try:
            keys = (
                p.relative_to(self.root).as_posix()
                for p in start.rglob("*")
                if p.is_file() and not (p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX))
            )
            return sorted(k for k in keys if k.startswith(prefix))
        except OSError as exc:
            raise StorageError(one_line(f"cannot list {prefix} in {self}: {exc.strerror or exc}")) from None

    def check_writable(self) -> None:
        """The root (or, while it does not exist, its nearest existing ancestor) must be a
        writable directory: a probe file is written there and removed."""
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(f"results destination {self} is not writable: {existing} is not a directory")
        probe = existing / f".raysvc-write-probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"results destination {self} is not writable: {exc.strerror or exc}") from None


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
