"""BlobObjectStore specifics beyond the shared contract (tests/unit/test_storage_contract.py): construction from
settings, streaming memory, and containers created on first write."""

from __future__ import annotations

import tracemalloc

import pytest

from shared.errors import ConfigError
from shared.settings import Settings
from shared.storage import LocalObjectStore
from shared.storage_blob import DOWNLOAD_CHUNK_BYTES, BlobObjectStore, make_object_stores

ACCOUNT = "https://stateacct.blob.core.windows.net"
SOURCE = "https://ciexports.blob.core.windows.net"


def streaming_peak(store: BlobObjectStore, container: str, name: str) -> tuple[int, int]:
    """(bytes read, peak traced memory) while reading ``name`` through open() in 64 KiB pieces."""
    tracemalloc.start()
    total = 0
    with store.open(container, name) as stream:
        while piece := stream.read(64 * 1024):
            total += len(piece)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return total, peak


@pytest.mark.azurite
def test_open_streams_so_memory_does_not_grow_with_blob_size(azurite, container):
    store = BlobObjectStore.from_connection_string(azurite)
    pattern = bytes(range(256)) * (DOWNLOAD_CHUNK_BYTES // 256)
    store.write(container, "small.bin", pattern * 2)
    store.write(container, "large.bin", pattern * 10)

    small_total, small_peak = streaming_peak(store, container, "small.bin")
    large_total, large_peak = streaming_peak(store, container, "large.bin")

    assert (small_total, large_total) == (2 * len(pattern), 10 * len(pattern))
    # Five times the data, yet at most one chunk more memory: chunks are fetched and dropped one by one.
    assert large_peak < small_peak + DOWNLOAD_CHUNK_BYTES


@pytest.mark.azurite
def test_first_write_creates_the_container(azurite, blob_service, container):
    store = BlobObjectStore.from_connection_string(azurite)
    assert not blob_service.get_container_client(container).exists()

    store.write(container, "runs/r1/manifest.json", b"{}")

    assert blob_service.get_container_client(container).exists()
    assert store.read(container, "runs/r1/manifest.json") == b"{}"


@pytest.mark.azurite
def test_from_settings_with_the_development_storage_shorthand_reaches_azurite(azurite, container):
    settings = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    state, source = make_object_stores(settings)

    state.write(container, "a.txt", b"1")

    assert source.read(container, "a.txt") == b"1"  # no SOURCE_BLOB_SERVICE_URI: segments live in the same account
    assert state.describe(container, "a.txt") == f"http://127.0.0.1:10000/devstoreaccount1/{container}/a.txt"


def test_without_azure_storage_both_stores_are_the_local_folder(tmp_path):
    state, source = make_object_stores(Settings(local_storage_root=tmp_path))

    assert isinstance(state, LocalObjectStore) and isinstance(source, LocalObjectStore)
    assert state.describe("c", "x") == source.describe("c", "x") == str(tmp_path / "c" / "x")


def test_identity_settings_point_state_and_source_at_their_accounts():
    settings = Settings(blob_service_uri=ACCOUNT, source_blob_service_uri=SOURCE, managed_identity_client_id="cid")

    state, source = make_object_stores(settings)  # no network until the first call

    assert state.describe("exporter-runs", "r/manifest.json") == f"{ACCOUNT}/exporter-runs/r/manifest.json"
    assert source.describe("ciexports", "feed/model.json") == f"{SOURCE}/ciexports/feed/model.json"


def test_describe_never_shows_a_sas_token():
    store = BlobObjectStore.from_connection_string(
        f"BlobEndpoint={ACCOUNT}/;SharedAccessSignature=sv=2024-01-01&sig=SECRETSIG"
    )

    assert "SECRETSIG" not in store.describe("c", "n") and store.describe("c", "n") == f"{ACCOUNT}/c/n"


def test_settings_without_blob_storage_say_what_to_set():
    with pytest.raises(ConfigError, match="AzureWebJobsStorage__blobServiceUri"):
        BlobObjectStore.from_settings(Settings())
