"""ObjectStore: the small set of blob operations the product needs, and the local-folder implementation.

The Azure Blob implementation lives in ``shared/storage_blob.py`` and behaves the same; both are exercised by
the same contract tests. Names are ``/``-separated and relative to a container.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol


class NotFound(KeyError):
    """The named object does not exist."""


@dataclass(frozen=True)
class StoredObject:
    container: str
    name: str
    size: int
    last_modified: datetime
    etag: str


class ObjectStore(Protocol):
    def list(self, container: str, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose name starts with ``prefix``, sorted by name."""

    def open(self, container: str, name: str) -> BinaryIO:
        """A readable binary stream; raises NotFound. Memory stays independent of the object's size."""

    def read(self, container: str, name: str) -> bytes:
        """The whole object; raises NotFound."""

    def write(self, container: str, name: str, data: bytes) -> None:
        """Create or replace, atomically (a reader never sees half an object)."""

    def create(self, container: str, name: str, data: bytes) -> bool:
        """Create only if absent (if-none-match: *). True if this call created it, False if it existed."""

    def exists(self, container: str, name: str) -> bool: ...

    def delete(self, container: str, name: str) -> None:
        """Remove the object if present."""

    def describe(self, container: str, name: str = "") -> str:
        """A human-readable location for messages (a path or a URL)."""


class LocalObjectStore:
    """A folder with one sub-folder per container (``LOCAL_STORAGE_ROOT``, default ``.data``)."""

    # Writing a file is quick and mostly CPU: callers should not add writer threads (see pipeline._BatchWriter).
    parallel_writes = 0

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, container: str, name: str) -> Path:
        if not container or "/" in container or container in (".", ".."):
            raise ValueError(f"bad container name {container!r}")
        parts = [p for p in name.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"bad object name {name!r}")
        return self.root.joinpath(container, *parts)

    def describe(self, container: str, name: str = "") -> str:
        return str(self._path(container, name))

    def list(self, container: str, prefix: str = "") -> Iterator[StoredObject]:
        base = self.root / container
        if not base.is_dir():
            return iter(())
        # Walk only below the deepest folder the prefix names, so listing one run folder stays cheap.
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base.joinpath(*[p for p in folder_part.split("/") if p])
        found: list[StoredObject] = []
        if start.is_dir():
            for dirpath, _dirs, files in os.walk(start):
                for filename in files:
                    if filename.startswith(".tmp-"):
                        continue
                    path = Path(dirpath, filename)
                    name = path.relative_to(base).as_posix()
                    if name.startswith(prefix):
                        st = path.stat()
                        found.append(
                            StoredObject(
                                container,
                                name,
                                st.st_size,
                                datetime.fromtimestamp(st.st_mtime, UTC),
                                f"{st.st_mtime_ns:x}-{st.st_size:x}",
                            )
                        )
        found.sort(key=lambda o: o.name)
        return iter(found)

    def open(self, container: str, name: str) -> BinaryIO:
        try:
            return open(self._path(container, name), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(self.describe(container, name)) from None

    def read(self, container: str, name: str) -> bytes:
        with self.open(container, name) as f:
            return f.read()

    def _temp(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return tmp

    def write(self, container: str, name: str, data: bytes) -> None:
        path = self._path(container, name)
        os.replace(self._temp(path, data), path)

    def create(self, container: str, name: str, data: bytes) -> bool:
        path = self._path(container, name)
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists: the local if-none-match
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def exists(self, container: str, name: str) -> bool:
        return self._path(container, name).is_file()

    def delete(self, container: str, name: str) -> None:
        self._path(container, name).unlink(missing_ok=True)
