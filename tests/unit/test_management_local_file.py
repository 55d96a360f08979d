"""The management API over a local definitions file (EXPORTS_CONFIG a path, as locally and in the CLI): the same
validation, If-Match rules and audit log as over the blob, with a local object store."""

from __future__ import annotations

import json
import threading

from shared.management.access import ADMIN, Caller
from shared.management.api import Management
from shared.settings import Settings
from shared.storage import LocalObjectStore

ADMIN_CALLER = Caller("admin@example.com", frozenset({ADMIN}), "entra")
EXPORT = {"name": "vip", "source": {"container": "ciexports", "path": "p", "table": "T"}, "mapping": {"email": "EMail"}}


def management(tmp_path, document=None) -> tuple[Management, object]:
    path = tmp_path / "exports.json"
    if document is not None:
        path.write_text(json.dumps(document))
    settings = Settings(exports_config=str(path), local_storage_root=tmp_path / "data")
    return Management(settings, LocalObjectStore(tmp_path / "data")), path


def put(m: Management, name: str, body: dict, **headers):
    return m.handle(ADMIN_CALLER, "PUT", "exports", name, headers, json.dumps(body).encode(), {})


def test_a_missing_file_is_created_by_the_first_put(tmp_path):
    m, path = management(tmp_path)

    answer = put(m, "vip", EXPORT)

    assert answer.status == 201
    assert json.loads(path.read_text())["exports"][0]["name"] == "vip"
    assert [r["name"] for r in m.audit(ADMIN_CALLER, {}).body["records"]] == ["vip"]


def test_a_stale_if_match_on_the_file_is_412(tmp_path):
    m, path = management(tmp_path, {"exports": [EXPORT]})
    etag = m.handle(ADMIN_CALLER, "GET", "exports", "vip", {}, b"", {}).headers["ETag"]
    assert put(m, "vip", {**EXPORT, "tags": ["one"]}, **{"If-Match": etag}).status == 200
    before = path.read_bytes()

    assert put(m, "vip", {**EXPORT, "tags": ["two"]}, **{"If-Match": etag}).status == 412
    assert path.read_bytes() == before


def test_concurrent_puts_on_the_file_have_one_winner(tmp_path):
    m, _ = management(tmp_path, {"exports": [EXPORT]})
    etag = m.handle(ADMIN_CALLER, "GET", "exports", "vip", {}, b"", {}).headers["ETag"]
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def writer(i: int) -> None:
        barrier.wait()
        statuses.append(put(m, "vip", {**EXPORT, "tags": [f"w{i}"]}, **{"If-Match": etag}).status)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(statuses) == [200, 412, 412, 412]
    assert len(m.audit(ADMIN_CALLER, {}).body["records"]) == 1
