"""Azurite for tests: reuse one that already answers on 127.0.0.1:10000, else start one for the whole pytest run and
stop it when the run ends.

Used by tests/azure/conftest.py and by tests/unit/test_storage_contract.py (tests/unit has no conftest of ours),
so the fixture lives here and both import it; tests/conftest.py calls ``configure``/``unconfigure`` for the run.

Parallel runs (pytest-xdist): ONE Azurite serves every worker, not one per worker. Every test already works in
its own container/queue names (``unique_name``), so workers cannot see each other's data, and one Node process
costs far less on a 2-core machine than one per worker; ./dev and CI start that one before pytest, which is why
the tests (and the app's settings) keep the standard ports. When nothing answers, the first worker that needs
storage starts Azurite under a file lock (the others wait on the lock and then find it running), and the
controlling process, which outlives every worker, stops it at the end. The lock and the "we started it" mark live
in a directory the controller creates and hands to the workers through ``RUN_DIR_ENV`` (workers inherit its
environment), so two pytest runs on one machine never share them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
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
RUN_DIR_ENV = "TESTS_AZURITE_RUN_DIR"
_STARTED_MARK = "started-by-this-run"
_LOCK = "start.lock"
_owns_run_dir = pytest.StashKey[bool]()  # set in the process that created the run directory (and so cleans it up)


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def configure(config: pytest.Config) -> None:
    """In the controlling process (the only one without xdist): create the run's directory for the workers."""
    if not _is_worker(config) and RUN_DIR_ENV not in os.environ:
        os.environ[RUN_DIR_ENV] = tempfile.mkdtemp(prefix="pytest-azurite-")
        config.stash[_owns_run_dir] = True


def unconfigure(config: pytest.Config) -> None:
    """In the controlling process, after every worker has finished: stop Azurite if this run started it."""
    if not config.stash.get(_owns_run_dir, False):
        return
    run_dir = Path(os.environ[RUN_DIR_ENV])
    try:
        if (run_dir / _STARTED_MARK).exists():
            _run([str(SCRIPT), "stop"], START_TIMEOUT_SECONDS)
    finally:
        del os.environ[RUN_DIR_ENV]
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_dir() -> Path:
    # Set by configure(); a process that imports this module without tests/conftest.py gets a private one.
    if RUN_DIR_ENV not in os.environ:
        os.environ[RUN_DIR_ENV] = tempfile.mkdtemp(prefix="pytest-azurite-")
    return Path(os.environ[RUN_DIR_ENV])


def ensure_azurite() -> str:
    """The Azurite connection string, once blob and queue ports answer; fails the test with the reason otherwise."""
    if port_answers(10000):
        return AZURITE_CONNECTION_STRING
    run_dir = _run_dir()
    with open(run_dir / _LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes; another worker may have started it meanwhile
        if not port_answers(10000):
            if not AZURITE_BIN.exists():
                # package-lock.json pins azurite; `npm ci` would also do, `install` tolerates an existing node_modules.
                _run(["npm", "install", "--no-audit", "--no-fund"], NPM_INSTALL_TIMEOUT_SECONDS)
            (run_dir / _STARTED_MARK).touch()  # before starting: a start that half-succeeds is still stopped
            _run([str(SCRIPT), "start"], START_TIMEOUT_SECONDS)
            if not port_answers(10000):
                # Fail now rather than let every storage call retry against a closed port.
                pytest.fail(f"{SCRIPT} start succeeded but nothing answers on 127.0.0.1:10000", pytrace=False)
    return AZURITE_CONNECTION_STRING


def _run(command: list[str], timeout: float) -> None:
    env = {**os.environ, "AZURITE_STATE_DIR": str(_run_dir() / "azurite")}  # this run's PID file and log
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)


def unique_name(prefix: str) -> str:
    """A container/queue name no other test uses (lowercase letters, digits, dashes; 3-63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """Azurite's connection string; Azurite runs until the whole run (every xdist worker) has finished."""
    yield ensure_azurite()
