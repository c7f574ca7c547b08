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
            fd, tmp = self._temp_beside(path)
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

    def _temp_beside(self, path: Path) -> tuple[int, str]:
        """A temporary file in ``path``'s folder, made if need be: a concurrent delete may prune
        the folder (it removes folders it empties) between the two steps, so try again then."""
        for _ in range(4):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
            except FileNotFoundError:
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(one_line(f"cannot read {key} in {self}: {exc.strerror or exc}")) from None

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
        failures: list[OSError] = []

        def failed(exc: OSError) -> None:
            # a folder a concurrent delete removed while we walked it holds nothing any more
            if not isinstance(exc, FileNotFoundError):
                failures.append(exc)

        keys = []
        for folder, _, names in os.walk(start, onerror=failed):
            for name in names:
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    continue
                key = Path(folder, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        if failures:
            exc = failures[0]
            raise StorageError(one_line(f"cannot list {prefix} in {self}: {exc.strerror or exc}"))
        return sorted(keys)

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
