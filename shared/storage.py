"""ObjectStore: the small set of blob operations the product needs, and the local-folder implementation.

The Azure Blob implementation lives in ``shared/storage_blob.py`` and behaves the same; both are exercised by
the same contract tests. Names are ``/``-separated and relative to a container.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol


class NotFound(KeyError):
    """The named object does not exist."""


class BadName(ValueError):
    """A container or object name both stores refuse before any access (see check_name)."""


# Names can come from outside (an HTTP route, an export definition, a partition URL in model.json), so every store
# operation checks them first. A ".." segment escaped the local root, and on Blob Storage with bearer auth the
# service resolved it into ANOTHER container. Empty segments ("a//b", a leading "/") and "." are refused too: the
# two stores would read them differently.
MAX_NAME_CHARS = 1024  # Blob Storage's limit for a blob name
MAX_SEGMENT_BYTES = 255  # a file name on the local store's file systems (UTF-8 bytes)
# Blob container rules (3-63 lower-case letters, digits and single inner hyphens); the local store follows them too.
CONTAINER_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\\]")
# How much of a refused name an error quotes: enough to recognise it, never a whole hostile input.
_EXCERPT_CHARS = 60


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters (repr-quoted), for messages about input we refused."""
    return repr(text[:limit]) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def check_container(container: str) -> None:
    if not isinstance(container, str) or not CONTAINER_RE.fullmatch(container):
        raise BadName(
            f"bad container name {excerpt(str(container))}: use 3-63 lower-case letters, digits and single hyphens"
        )


def check_name(name: str, *, prefix: bool = False) -> None:
    """Refuse ``..``/``.`` segments, empty segments, NUL and other control characters, backslashes, and over-long
    names or segments. A listing ``prefix`` may be empty and may end with ``/`` (a folder)."""
    if not isinstance(name, str):
        raise BadName(f"bad object name {excerpt(str(name))}")
    what = "prefix" if prefix else "object name"
    if len(name) > MAX_NAME_CHARS:
        raise BadName(f"{what} {excerpt(name)} is longer than {MAX_NAME_CHARS} characters")
    segments = name.split("/")
    if prefix:
        if name == "":
            return
        if segments[-1] == "":
            segments.pop()
    for segment in segments:
        if segment == "":
            raise BadName(f"{what} {excerpt(name)} has an empty segment (a leading, trailing or double '/')")
        if segment in (".", ".."):
            raise BadName(f"{what} {excerpt(name)} has a '{segment}' segment")
        if _CONTROL_RE.search(segment):
            raise BadName(f"{what} {excerpt(name)} holds a control character or a backslash")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise BadName(f"{what} {excerpt(name)} has a segment longer than {MAX_SEGMENT_BYTES} bytes")


def check_location(container: str, name: str) -> None:
    check_container(container)
    check_name(name)


def check_range(offset: int, length: int) -> None:
    """A byte range both stores read the same way: a non-negative offset and a positive length."""
    if offset < 0 or length <= 0:
        raise ValueError(f"bad byte range: offset {offset}, length {length} (offset >= 0 and length > 0)")


def content_etag(data: bytes) -> str:
    """The local store's version tag for read_versioned/replace_if: a digest of the content, so it changes with
    every change of content whatever the file system's time resolution."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


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

    def read_range(self, container: str, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer when the object ends first, none past its end); raises NotFound.
        One request on Blob Storage, whatever the object's size (a batch read out of a segment file)."""

    def write(self, container: str, name: str, data: bytes) -> None:
        """Create or replace, atomically (a reader never sees half an object)."""

    def create(self, container: str, name: str, data: bytes) -> bool:
        """Create only if absent (if-none-match: *). True if this call created it, False if it existed."""

    def read_versioned(self, container: str, name: str) -> tuple[bytes, str]:
        """The whole object and its version tag (ETag); raises NotFound."""

    def replace_if(self, container: str, name: str, data: bytes, etag: str) -> bool:
        """Replace the object only if its version is still ``etag`` (if-match). False (nothing written) when it
        changed or is gone: the caller re-reads and decides again, so two writers never lose an update."""

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
        check_location(container, name)
        return self.root.joinpath(container, *name.split("/"))

    def describe(self, container: str, name: str = "") -> str:
        # For messages only (no access): never raises, even for a name the store refuses.
        return str(self.root / container / name) if name else str(self.root / container)

    def list(self, container: str, prefix: str = "") -> Iterator[StoredObject]:
        check_container(container)
        check_name(prefix, prefix=True)
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

    def read_range(self, container: str, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self.open(container, name) as f:
            f.seek(offset)
            return f.read(length)

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

    def read_versioned(self, container: str, name: str) -> tuple[bytes, str]:
        data = self.read(container, name)
        return data, content_etag(data)

    def replace_if(self, container: str, name: str, data: bytes, etag: str) -> bool:
        path = self._path(container, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The lock file's name starts with ".tmp-" so listings skip it, like the temporary files.
        with open(path.parent / f".tmp-lock-{path.name}", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held until closed: compare and replace as one step
            try:
                current = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return False
            if content_etag(current) != etag:
                return False
            os.replace(self._temp(path, data), path)
            return True

    def exists(self, container: str, name: str) -> bool:
        return self._path(container, name).is_file()

    def delete(self, container: str, name: str) -> None:
        self._path(container, name).unlink(missing_ok=True)
