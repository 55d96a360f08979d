"""Fixtures for tests that need Azure Storage: a real Azurite (see azurite_support.py) and unique names per test,
so tests never share a container or queue and can run in any order, twice, or against a long-lived Azurite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from tests.azure import azurite_support

# The session fixture lives in azurite_support so tests/unit can use it too; registered here for tests/azure.
azurite = azurite_support.azurite
unique_name = azurite_support.unique_name


@pytest.fixture
def blob_service(azurite: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite)


@pytest.fixture
def queue_service(azurite: str) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(azurite)


@pytest.fixture
def container(blob_service: BlobServiceClient) -> Iterator[str]:
    """A container name unique to this test (not created: stores create containers on first write); removed after."""
    name = unique_name("t")
    yield name
    client = blob_service.get_container_client(name)
    if client.exists():
        client.delete_container()


@pytest.fixture
def queue_prefix(queue_service: QueueServiceClient) -> Iterator[str]:
    """A prefix unique to this test; every queue whose name starts with it is deleted afterwards."""
    prefix = unique_name("q")
    yield prefix
    for queue in list(queue_service.list_queues(name_starts_with=prefix)):
        queue_service.delete_queue(queue.name)
