"""The ObjectStore contract: LocalObjectStore and BlobObjectStore (on Azurite) behave the same.

One set of tests, parametrised over both stores; the Blob parameters are marked ``azurite``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from azure.storage.blob import BlobServiceClient

from shared.storage import BadName, LocalObjectStore, NotFound, ObjectStore
from shared.storage_blob import BlobObjectStore
from tests.azure.azurite_support import azurite, unique_name  # noqa: F401 - azurite is a fixture

CREATORS = 8


@pytest.fixture(params=["local", pytest.param("blob", marks=pytest.mark.azurite)])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path)
    return BlobObjectStore.from_connection_string(request.getfixturevalue("azurite"))


@pytest.fixture
def container(request, store) -> Iterator[str]:
    """A container name no other test (or earlier run against the same Azurite) uses; removed afterwards."""
    name = unique_name("contract")
    yield name
    if isinstance(store, BlobObjectStore):
        client = BlobServiceClient.from_connection_string(request.getfixturevalue("azurite")).get_container_client(name)
        if client.exists():
            client.delete_container()


def test_list_returns_objects_under_the_prefix_sorted_by_name(store, container):
    for name in ["runs/r2/b.json", "runs/r1/z.json", "runs/r1/a.json", "runs/r10/a.json", "other/x.json"]:
        store.write(container, name, b"{}")

    listed = list(store.list(container, "runs/r1/"))

    assert [o.name for o in listed] == ["runs/r1/a.json", "runs/r1/z.json"]
    assert [o.name for o in store.list(container)] == sorted(
        ["runs/r2/b.json", "runs/r1/z.json", "runs/r1/a.json", "runs/r10/a.json", "other/x.json"]
    )
    assert [o.name for o in store.list(container, "runs/r1")] == ["runs/r1/a.json", "runs/r1/z.json", "runs/r10/a.json"]


def test_list_reports_size_modification_time_and_etag(store, container):
    store.write(container, "a.bin", b"12345")

    (listed,) = store.list(container)

    assert (listed.container, listed.name, listed.size) == (container, "a.bin", 5)
    assert listed.last_modified.tzinfo is not None and listed.etag


def test_list_of_a_container_never_written_is_empty(store, container):
    assert list(store.list(container)) == []


def test_open_streams_the_content(store, container):
    data = b"".join(f"line {i}\n".encode() for i in range(50_000))
    store.write(container, "segments/vip.csv", data)

    with store.open(container, "segments/vip.csv") as stream:
        head = stream.read(7)
        rest = stream.read()

    assert head == b"line 0\n" and head + rest == data


def test_write_replaces_and_changes_the_etag(store, container):
    store.write(container, "state.json", b"old")
    (before,) = store.list(container)

    store.write(container, "state.json", b"new content")

    (after,) = store.list(container)
    assert store.read(container, "state.json") == b"new content"
    assert after.size == len(b"new content") and after.etag != before.etag


def test_create_if_absent_twice_creates_once_and_keeps_the_first_content(store, container):
    assert store.create(container, "runs/r1/done/17.json", b"first") is True
    assert store.create(container, "runs/r1/done/17.json", b"second") is False

    assert store.read(container, "runs/r1/done/17.json") == b"first"


def test_concurrent_create_has_exactly_one_winner(store, container):
    barrier = threading.Barrier(CREATORS)
    results: list[bool] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        barrier.wait()  # start together so the creates really race
        created = store.create(container, "runs/r1/finalised.json", f"writer {i}".encode())
        with lock:
            results.append(created)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(CREATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results) == [False] * (CREATORS - 1) + [True]
    assert store.read(container, "runs/r1/finalised.json").startswith(b"writer ")


def test_missing_object_raises_not_found_naming_it(store, container):
    store.write(container, "present.json", b"{}")

    with pytest.raises(NotFound, match=r"absent\.json"):
        store.read(container, "absent.json")
    with pytest.raises(NotFound, match=r"absent\.json"):
        store.open(container, "absent.json")
    with pytest.raises(NotFound):
        store.read(unique_name("never"), "absent.json")


def test_read_range_returns_just_the_bytes_asked_for(store, container):
    store.write(container, "runs/r1/batches/00001.seg", b"0123456789" * 1000)

    assert store.read_range(container, "runs/r1/batches/00001.seg", 0, 4) == b"0123"
    assert store.read_range(container, "runs/r1/batches/00001.seg", 9_995, 3) == b"567"


def test_read_range_stops_at_the_end_of_the_object(store, container):
    store.write(container, "seg.bin", b"abcdef")

    assert store.read_range(container, "seg.bin", 4, 100) == b"ef"
    assert store.read_range(container, "seg.bin", 6, 10) == b""
    assert store.read_range(container, "seg.bin", 50, 10) == b""


def test_read_range_of_a_missing_object_raises_not_found(store, container):
    with pytest.raises(NotFound, match=r"absent\.seg"):
        store.read_range(container, "absent.seg", 0, 10)


@pytest.mark.parametrize(("offset", "length"), [(-1, 10), (0, 0), (5, -2)])
def test_read_range_refuses_a_bad_range(store, container, offset, length):
    store.write(container, "seg.bin", b"abcdef")

    with pytest.raises(ValueError, match="bad byte range"):
        store.read_range(container, "seg.bin", offset, length)


def test_exists_follows_write_and_delete(store, container):
    assert store.exists(container, "x/y.json") is False
    store.write(container, "x/y.json", b"{}")
    assert store.exists(container, "x/y.json") is True

    store.delete(container, "x/y.json")

    assert store.exists(container, "x/y.json") is False
    assert list(store.list(container, "x/")) == []


def test_delete_of_a_missing_object_is_quiet(store, container):
    store.delete(container, "never-written.json")

    assert store.exists(container, "never-written.json") is False


def test_describe_names_container_and_object(store, container):
    assert container in store.describe(container, "runs/r1/report.json")
    assert store.describe(container, "runs/r1/report.json").endswith("runs/r1/report.json")


# --- names from the outside are refused before any access ---------------------------------------------------------

BAD_NAMES = {
    "dot-dot": "t/runs/../../../private/secret.json",
    "leading-dot-dot": "../outside.json",
    "dot": "t/./x.json",
    "nul": "t/x\x00.json",
    "control": "t/x\n.json",
    "backslash": "t\\..\\x.json",
    "empty": "",
    "leading-slash": "/t/x.json",
    "double-slash": "t//x.json",
    "trailing-slash": "t/x/",
    "long-segment": "t/" + "a" * 256,
    "long-name": "/".join(["abcdefghi"] * 103),
}
OPERATIONS = {
    "read": lambda s, c, n: s.read(c, n),
    "read_range": lambda s, c, n: s.read_range(c, n, 0, 1),
    "open": lambda s, c, n: s.open(c, n),
    "write": lambda s, c, n: s.write(c, n, b"x"),
    "create": lambda s, c, n: s.create(c, n, b"x"),
    "exists": lambda s, c, n: s.exists(c, n),
    "delete": lambda s, c, n: s.delete(c, n),
}


@pytest.mark.parametrize("operation", OPERATIONS, ids=list(OPERATIONS))
@pytest.mark.parametrize("case", BAD_NAMES, ids=list(BAD_NAMES))
def test_a_bad_object_name_is_refused_by_every_operation(store, container, case, operation):
    store.write(container, "t/x.json", b"kept")
    with pytest.raises(BadName):
        OPERATIONS[operation](store, container, BAD_NAMES[case])
    assert [o.name for o in store.list(container)] == ["t/x.json"]  # nothing written anywhere else


@pytest.mark.parametrize("prefix", ["../", "t/../../", "/t/", "t//", "t/\x00", "..", "t/.."])
def test_a_bad_listing_prefix_is_refused(store, container, prefix):
    with pytest.raises(BadName):
        list(store.list(container, prefix))


@pytest.mark.parametrize("bad", ["..", ".", "", "UPPER", "a/b", "ab", "a--b", "-ab", "x" * 64, "con\x00x"])
def test_a_bad_container_name_is_refused(store, bad):
    with pytest.raises(BadName):
        store.read(bad, "x.json")
    with pytest.raises(BadName):
        list(store.list(bad))


def test_listing_never_walks_outside_the_local_root(tmp_path):
    (tmp_path / "outside.txt").write_text("not yours")
    (tmp_path / "root" / "exporter-runs").mkdir(parents=True)
    store = LocalObjectStore(tmp_path / "root")
    for prefix in ("../", "../../", "x/../../"):
        with pytest.raises(BadName):
            list(store.list("exporter-runs", prefix))


def test_a_refused_name_is_quoted_only_in_part(store, container):
    with pytest.raises(BadName) as caught:
        store.read(container, "../" + "a" * 10_000)
    assert len(str(caught.value)) < 200


def test_replace_if_writes_only_over_the_version_read(store, container):
    store.write(container, "defs.json", b"v1")
    data, etag = store.read_versioned(container, "defs.json")

    assert data == b"v1"
    assert store.replace_if(container, "defs.json", b"v2", etag) is True
    assert store.replace_if(container, "defs.json", b"v3 from a stale reader", etag) is False

    assert store.read(container, "defs.json") == b"v2"
    assert store.read_versioned(container, "defs.json")[1] != etag


def test_replace_if_of_a_missing_object_writes_nothing(store, container):
    store.write(container, "defs.json", b"v1")
    _, etag = store.read_versioned(container, "defs.json")
    store.delete(container, "defs.json")

    assert store.replace_if(container, "defs.json", b"v2", etag) is False
    assert not store.exists(container, "defs.json")


def test_concurrent_replace_if_of_one_version_has_exactly_one_winner(store, container):
    store.write(container, "defs.json", b"v1")
    _, etag = store.read_versioned(container, "defs.json")
    barrier = threading.Barrier(CREATORS)
    results: list[bool] = []
    lock = threading.Lock()

    def replace(i: int) -> None:
        barrier.wait()
        replaced = store.replace_if(container, "defs.json", f"writer {i}".encode(), etag)
        with lock:
            results.append(replaced)

    threads = [threading.Thread(target=replace, args=(i,)) for i in range(CREATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results) == [False] * (CREATORS - 1) + [True]
    assert [o.name for o in store.list(container)] == ["defs.json"]
