"""Fixtures for the Omnisend client's unit tests (the fakes themselves live in omnisend_fakes.py)."""

from __future__ import annotations

import pytest
from omnisend_fakes import FakeTime, ScriptedServer


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.stop()


@pytest.fixture
def fake_time():
    return FakeTime()
