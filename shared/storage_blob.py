"""ObjectStore over Azure Blob Storage (identity-based in Azure, a connection string for Azurite).

Behaves exactly like ``LocalObjectStore`` (shared/storage.py); tests/unit/test_storage_contract.py runs one set
of contract tests against both. Names are ``/``-separated blob names inside a container.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.errors import ConfigError
from shared.storage import (
    LocalObjectStore,
    NotFound,
    ObjectStore,
    StoredObject,
    check_container,
    check_location,
    check_name,
    check_range,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.settings import Settings

# Size of the first GET and of every later ranged GET when streaming a blob. The SDK defaults are 32 MiB and
# 4 MiB; 4 MiB for both keeps an open() stream's memory small and independent of the blob's size while still
# reading a large segment partition in few requests.
DOWNLOAD_CHUNK_BYTES = 4 * 1024 * 1024
# Buffer of the BufferedReader around a download: reads of a few KB (csv module) are served from memory.
STREAM_BUFFER_BYTES = 256 * 1024


class _ChunkStream(io.RawIOBase):
    """A read-only raw stream over an iterator of byte chunks (``StorageStreamDownloader.chunks()``).

    Holds at most one chunk in memory; each chunk after the first is fetched only when the reader reaches it.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            try:
                self._current = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        self._chunks = iter(())
        self._current = memoryview(b"")
        super().close()


class BlobObjectStore:
    """One storage account's Blob service; containers are created on the first write into them."""

    # Each upload mostly waits on the network: writers of many blobs (planning's batch files) use this many threads.
    parallel_writes = 8

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_connection_string(cls, connection_string: str) -> BlobObjectStore:
        return cls(BlobServiceClient.from_connection_string(connection_string, **_client_options()))

    @classmethod
    def from_account_url(cls, account_url: str, credential: TokenCredential) -> BlobObjectStore:
        return cls(BlobServiceClient(account_url, credential=credential, **_client_options()))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, source: bool = False, credential: TokenCredential | None = None
    ) -> BlobObjectStore:
        """The run-state account, or with ``source=True`` the account Customer Insights exports to.

        The source account is ``SOURCE_BLOB_SERVICE_URI`` when set (the CI export account, read-only for us);
        otherwise the segments live in the same account as the run state.
        """
        if source and settings.source_blob_service_uri:
            return cls.from_account_url(settings.source_blob_service_uri, credential or _default_credential(settings))
        if settings.storage_connection_string:
            return cls.from_connection_string(settings.storage_connection_string)
        if settings.blob_service_uri:
            return cls.from_account_url(settings.blob_service_uri, credential or _default_credential(settings))
        raise ConfigError(
            "no Azure Blob storage configured: set AzureWebJobsStorage (a connection string, or "
            "UseDevelopmentStorage=true for Azurite) or AzureWebJobsStorage__blobServiceUri (+ __clientId) "
            "for identity-based access",
            source="environment",
        )

    # -- ObjectStore --------------------------------------------------------------------------------------------

    def describe(self, container: str, name: str = "") -> str:
        # Built from the account endpoint without its query string, so a SAS token never reaches a message.
        parts = urlsplit(self._service.url)
        path = parts.path.rstrip("/") + "/" + quote(container)
        if name:
            path += "/" + quote(name)
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    def list(self, container: str, prefix: str = "") -> Iterator[StoredObject]:
        # Checked here, not when the generator first runs: a refused prefix fails at the call, like the local store.
        check_container(container)
        check_name(prefix, prefix=True)
        return self._list(container, prefix)

    def _list(self, container: str, prefix: str) -> Iterator[StoredObject]:
        # The Blob service lists in lexicographic (UTF-8 byte) order, which is Python's str order, so the pages
        # stream through without being collected and sorted in memory.
        blobs = self._service.get_container_client(container).list_blobs(name_starts_with=prefix or None)
        try:
            for blob in blobs:
                yield StoredObject(container, blob.name, blob.size, blob.last_modified, blob.etag)
        except ResourceNotFoundError:
            return  # no container yet: nothing was ever written there, like a missing local folder

    def open(self, container: str, name: str) -> BinaryIO:
        try:
            downloader = self._blob(container, name).download_blob()
        except ResourceNotFoundError:
            raise NotFound(self.describe(container, name)) from None
        # Later chunks are ranged GETs pinned to the first response's ETag, so a blob replaced mid-read fails
        # loudly (ResourceModifiedError) instead of mixing two versions.
        return io.BufferedReader(_ChunkStream(downloader.chunks()), STREAM_BUFFER_BYTES)  # type: ignore[return-value]

    def read(self, container: str, name: str) -> bytes:
        try:
            return self._blob(container, name).download_blob().readall()
        except ResourceNotFoundError:
            raise NotFound(self.describe(container, name)) from None

    def read_range(self, container: str, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        try:
            # A ranged GET (x-ms-range): at most max_single_get_size is fetched in the first request, and a batch
            # (tens of KB) is far below it, so this is one request.
            return self._blob(container, name).download_blob(offset=offset, length=length).readall()
        except ResourceNotFoundError:
            raise NotFound(self.describe(container, name)) from None
        except HttpResponseError as exc:
            if exc.status_code == 416:  # the range starts at or past the end: nothing there, as on the local store
                return b""
            raise

    def write(self, container: str, name: str, data: bytes) -> None:
        # A blob upload commits atomically (single Put Blob, or Put Block List for large data).
        self._upload(container, name, data, overwrite=True)

    def create(self, container: str, name: str, data: bytes) -> bool:
        # overwrite=False sends If-None-Match: *; the service answers 409 BlobAlreadyExists when the name is taken.
        try:
            self._upload(container, name, data, overwrite=False)
        except ResourceExistsError:
            return False
        return True

    def read_versioned(self, container: str, name: str) -> tuple[bytes, str]:
        try:
            downloader = self._blob(container, name).download_blob()
        except ResourceNotFoundError:
            raise NotFound(self.describe(container, name)) from None
        return downloader.readall(), downloader.properties.etag

    def replace_if(self, container: str, name: str, data: bytes, etag: str) -> bool:
        # If-Match on the upload: the service refuses (412) when another writer replaced the blob since it was read.
        try:
            self._blob(container, name).upload_blob(
                data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def exists(self, container: str, name: str) -> bool:
        return self._blob(container, name).exists()

    def delete(self, container: str, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._blob(container, name).delete_blob(delete_snapshots="include")

    # -- helpers ------------------------------------------------------------------------------------------------

    def _blob(self, container: str, name: str):  # -> BlobClient
        # Before any request: with bearer auth the service resolved "a/../../other/x" into another container.
        check_location(container, name)
        return self._service.get_blob_client(container, name)

    def _upload(self, container: str, name: str, data: bytes, *, overwrite: bool) -> None:
        blob = self._blob(container, name)
        try:
            blob.upload_blob(data, overwrite=overwrite)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) != "ContainerNotFound":
                raise
            # First write into this container: create it, then try once more. Creating lazily costs one extra
            # request per container instead of one per write.
            with contextlib.suppress(ResourceExistsError):  # another writer created it first
                self._service.create_container(container)
            blob.upload_blob(data, overwrite=overwrite)


def make_object_stores(settings: Settings) -> tuple[ObjectStore, ObjectStore]:
    """``(state_store, source_store)``: where run state lives, and where segment snapshots are read from.

    Local folders when no Azure storage is configured (the CLI's default), otherwise Blob Storage; both stores
    share one credential so the identity's token is fetched once.
    """
    if not settings.uses_azure_storage:
        return LocalObjectStore(settings.local_storage_root), LocalObjectStore(settings.local_storage_root)
    credential = None
    if not settings.storage_connection_string or settings.source_blob_service_uri:
        credential = _default_credential(settings)
    state = BlobObjectStore.from_settings(settings, credential=credential)
    if not settings.source_blob_service_uri:
        return state, state
    return state, BlobObjectStore.from_settings(settings, source=True, credential=credential)


def _client_options() -> dict[str, Any]:
    return {"max_single_get_size": DOWNLOAD_CHUNK_BYTES, "max_chunk_get_size": DOWNLOAD_CHUNK_BYTES}


def _default_credential(settings: Settings) -> TokenCredential:
    # Imported here: azure.identity is only needed in Azure, and a light import keeps cold starts short.
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
