"""The CLI's definitions document (``exports set|delete``) writes only over the version it read, as the management
API does: a change saved by someone else in between is never overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.cli_definitions import Document
from shared.errors import ConfigError
from shared.settings import Settings

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "exports.json"


def _document(tmp_path: Path) -> tuple[Document, Path]:
    path = tmp_path / "exports.json"
    shutil.copy(SAMPLE, path)
    return Document(Settings(exports_config=str(path), local_storage_root=tmp_path / "data")), path


def test_a_change_saved_by_someone_else_after_the_read_is_not_overwritten(tmp_path):
    doc, path = _document(tmp_path)
    theirs = json.loads(path.read_text())
    theirs["exports"][0]["enabled"] = False
    path.write_text(json.dumps(theirs, indent=2) + "\n")  # saved by someone else after our read
    mine, _ = doc.validated({**doc.data})

    with pytest.raises(ConfigError, match="changed since it was read"):
        doc.write(mine)

    assert json.loads(path.read_text()) == theirs


def test_an_unchanged_document_is_written(tmp_path):
    doc, path = _document(tmp_path)
    data = json.loads(doc.original)
    data["exports"][0]["enabled"] = False
    text, _ = doc.validated(data)

    doc.write(text)

    assert path.read_text() == text
