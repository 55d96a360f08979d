"""Make the repository importable (tests/unit has no __init__.py) and offer writable fixture copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "segments"


@pytest.fixture
def copy_fixture(tmp_path):
    """A writable copy of a fixture, for tests that change the data between two discoveries."""

    def copy(case: str) -> Path:
        dest = tmp_path / case
        shutil.copytree(FIXTURES / case, dest)
        return dest

    return copy
