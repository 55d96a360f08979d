"""The definitions document (EXPORTS_CONFIG: a blob, or a local file) read with its version and written back only
over the version that was read, so two concurrent writers never lose an update: the loser re-reads and decides
again (shared/management/api.py).

Blob: the blob's ETag and an if-match upload (ObjectStore.read_versioned / replace_if); a missing blob is created
with if-none-match. Local file: a digest of the content and an exclusive lock around compare-and-replace.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from shared.errors import ConfigError
from shared.settings import Settings
from shared.storage import NotFound, ObjectStore, content_etag


class Document(Protocol):
    source: str
    key: str  # names the document's audit log (shared/management/audit.py)

    def read(self) -> tuple[bytes | None, str | None]:
        """(content, version), or (None, None) when there is no document yet."""

    def write(self, data: bytes, version: str | None) -> bool:
        """Write over ``version`` (None: only if there is still no document). False when it changed meanwhile."""


class BlobDocument:
    def __init__(self, store: ObjectStore, container: str, name: str) -> None:
        self.store, self.container, self.name = store, container, name
        self.source = store.describe(container, name)
        self.key = f"{container}/{name}"

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            return self.store.read_versioned(self.container, self.name)
        except NotFound:
            return None, None

    def write(self, data: bytes, version: str | None) -> bool:
        if version is None:
            return self.store.create(self.container, self.name, data)
        return self.store.replace_if(self.container, self.name, data, version)


class FileDocument:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = str(path)
        self.key = f"file/{path.name}"

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        return data, content_etag(data)

    def write(self, data: bytes, version: str | None) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _, current_version = self.read()
            if current_version != version:
                return False
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            return True


def definitions_document(settings: Settings, state_store: ObjectStore) -> Document:
    from shared.app import definitions_blob

    blob = definitions_blob(settings)
    if blob is not None:
        return BlobDocument(state_store, *blob)
    return FileDocument(Path(settings.exports_config))


def parse(data: bytes | None, source: str) -> dict[str, Any]:
    """The stored document as ordered JSON objects; an empty document when there is none yet."""
    if data is None:
        return {"exports": []}
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"the stored definitions are not readable JSON ({exc}); fix them by hand first", source=source
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(
            'the stored definitions are not a JSON object {"exports": [...]}; fix them by hand first', source=source
        )
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def object_etag(obj: Any) -> str:
    """The version of one connection or export: a digest of its content, so a change to another object of the
    document never makes a caller's If-Match stale."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return content_etag(canonical.encode())
