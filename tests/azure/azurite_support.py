"""Azurite for tests: reuse one that already answers on 127.0.0.1:10000, else start ours and stop it at the end.

Used by tests/azure/conftest.py and by tests/unit/test_storage_contract.py (tests/unit has no conftest of ours),
so the fixture lives here and both import it. Start-up happens at most once per pytest process.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import AZURITE_CONNECTION_STRING

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite"
SCRIPT = REPO / "devtools" / "azurite.sh"
# npm install of azurite takes ~1 min on a cold cache; the script itself waits up to 60 s for the ports.
NPM_INSTALL_TIMEOUT_SECONDS = 600
START_TIMEOUT_SECONDS = 120

_state = {"started_by_us": False, "checked": False}


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_azurite() -> str:
    """The Azurite connection string, once blob and queue ports answer; fails the test with the reason otherwise."""
    if _state["checked"] and port_answers(10000):
        return AZURITE_CONNECTION_STRING
    if not port_answers(10000):
        if not AZURITE_BIN.exists():
            # package-lock.json pins azurite; `npm ci` would also do, `install` tolerates an existing node_modules.
            _run(["npm", "install", "--no-audit", "--no-fund"], NPM_INSTALL_TIMEOUT_SECONDS)
        _run([str(SCRIPT), "start"], START_TIMEOUT_SECONDS)
        _state["started_by_us"] = True
    _state["checked"] = True
    return AZURITE_CONNECTION_STRING


def stop_if_ours() -> None:
    if _state["started_by_us"]:
        _run([str(SCRIPT), "stop"], START_TIMEOUT_SECONDS)
        _state["started_by_us"] = False
        _state["checked"] = False


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)


def unique_name(prefix: str) -> str:
    """A container/queue name no other test uses (lowercase letters, digits, dashes; 3-63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """Azurite's connection string; Azurite runs for the whole session."""
    yield ensure_azurite()
    stop_if_ours()
