"""Stopping and fatal errors as an operator meets them: the CLI as a real process, signals, exit codes, stderr.

Omnisend is the simulator in this test process, so what reached it is counted exactly; the CLI is a subprocess so
that SIGINT, exit codes and wall-clock bounds are the real ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools import sample_data
from devtools.omnisend_sim import SimConfig, Simulator
from shared.local_runner import SEND_WORKERS
from tests.integration.exporting import export_definition

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key"
ROWS = 3_000  # 30 batches of 100 on API 2026-03-15
BATCHES = 30
# What the operator was promised (issue 9): an unreachable Omnisend or Key Vault stops the run within 15 s.
FATAL_WITHIN_SECONDS = 15.0
STOPPING = re.compile(r"stopping: \d+ requests? in flight")


@pytest.fixture
def omnisend():
    with Simulator(SimConfig(api_keys=(KEY,), batch_delay=0.02)) as sim:
        yield sim


@pytest.fixture
def root(tmp_path):
    sample_data.write_export(tmp_path, ROWS, messy=False)
    (tmp_path / "exports.json").write_text(json.dumps({"exports": [export_definition()]}))
    return tmp_path


def env_for(root: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISEND_", "KEY_VAULT", "AzureWebJobs"))}
    env.update({"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO), "EXPORTS_CONFIG": str(root / "exports.json")})
    env.update(settings)
    return env


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shared", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "shared", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
    return done, time.monotonic() - t0


def posts(sim: Simulator) -> int:
    return sim.stats()["requests_by_route"].get("POST /api/batches", 0)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_after_a_stop_signal_only_the_requests_in_flight_reach_omnisend_and_the_command_exits_130(
        root, omnisend, signum):
    omnisend.configure(latency=0.3)
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=omnisend.base_url)
    proc = cli("export", "vip", env=env)
    wait_for(lambda: posts(omnisend) >= 5)

    proc.send_signal(signum)
    at_signal = omnisend.stats()["requests_total"]
    _, stderr = proc.communicate(timeout=10)

    assert proc.returncode == 130, stderr
    assert STOPPING.search(stderr) and "run the same command again to resume" in stderr
    assert omnisend.stats()["requests_total"] - at_signal <= SEND_WORKERS + 1  # the senders and one poll at most
    assert posts(omnisend) < BATCHES


def test_a_run_stopped_by_sigint_is_resumed_by_the_same_command_and_delivers_every_contact_once(root, omnisend):
    omnisend.configure(latency=0.3)
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=omnisend.base_url)
    proc = cli("export", "vip", env=env)
    wait_for(lambda: posts(omnisend) >= 5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    omnisend.configure(latency=0.0)

    again, _ = run("export", "vip", "--json", "--quiet", env=env)

    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["status"] == "succeeded" and report["sent"] == ROWS
    assert posts(omnisend) == omnisend.stats()["batches_total"] == BATCHES  # no batch was submitted twice
    assert len(omnisend.contacts()) == ROWS


def test_sigint_while_planning_stops_before_any_batch_is_sent(tmp_path, omnisend):
    sample_data.write_export(tmp_path, 150_000, messy=False)  # several seconds of planning on this machine
    (tmp_path / "exports.json").write_text(json.dumps({"exports": [export_definition()]}))
    env = env_for(tmp_path, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=omnisend.base_url)
    proc = cli("export", "vip", env=env)
    wait_for(lambda: omnisend.stats()["requests_total"] >= 1)  # the preflight: planning starts now
    time.sleep(0.5)

    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)

    assert proc.returncode == 130
    assert time.monotonic() - t0 < 3.0
    assert omnisend.stats()["write_requests"] == 0
    assert not list(tmp_path.rglob("manifest.json"))  # planning itself was cut short (it resumes from scratch)


def test_a_second_sigint_abandons_the_requests_in_flight(root, omnisend):
    omnisend.configure(latency=5.0)  # every request hangs: only abandoning ends the command quickly
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=omnisend.base_url)
    proc = cli("export", "vip", env=env)
    wait_for(lambda: posts(omnisend) >= 1, timeout=60)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)

    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)

    assert proc.returncode == 130
    assert time.monotonic() - t0 < 2.0
    assert "abandoning" in stderr


def test_a_wrong_key_makes_at_most_3_requests_whatever_the_number_of_batches(root, omnisend):
    env = env_for(root, OMNISEND_API_KEY="wrong-key", OMNISEND_BASE_URL=omnisend.base_url)

    done, _ = run("export", "vip", env=env)

    assert done.returncode == 5, done.stderr
    assert "refused the API key" in done.stderr and "wrong-key" not in done.stderr
    assert omnisend.stats()["requests_total"] <= 3


def test_a_key_without_permission_to_create_batches_stops_every_sender(root, omnisend):
    omnisend.configure(forbidden_routes=["POST /batches"])
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=omnisend.base_url)

    done, _ = run("export", "vip", env=env)

    assert done.returncode == 5, done.stderr
    assert "the key was refused or lacks permission for POST /api/batches" in done.stderr
    # The preflight, then each sender's first try and its one retry after re-reading the key: not one per batch.
    assert omnisend.stats()["requests_total"] <= 1 + 2 * SEND_WORKERS


def test_an_unreachable_omnisend_stops_within_15_s_with_exit_3_naming_the_url(root):
    url = f"http://127.0.0.1:{closed_port()}"
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=url)

    done, seconds = run("export", "vip", env=env)

    assert done.returncode == 3, done.stderr
    assert seconds < FATAL_WITHIN_SECONDS
    assert f"cannot reach Omnisend at {url} – check OMNISEND_BASE_URL" in done.stderr


def test_the_stopped_run_states_why_it_failed(root):
    url = f"http://127.0.0.1:{closed_port()}"
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=url)
    run("export", "vip", env=env)

    shown, _ = run("report", "vip", "--json", env=env)

    status = json.loads(shown.stdout)
    assert status["status"] == "failed"
    assert f"cannot reach Omnisend at {url}" in status["message"]


def test_a_base_url_ending_in_api_gets_a_hint_before_anything_is_sent(root, omnisend):
    env = env_for(root, OMNISEND_API_KEY=KEY, OMNISEND_BASE_URL=omnisend.base_url + "/api")

    done, _ = run("export", "vip", env=env)

    assert done.returncode == 2, done.stderr
    assert "OMNISEND_BASE_URL should be the host only" in done.stderr
    assert "should not end in /api or /v3" in done.stderr
    assert omnisend.stats()["requests_total"] == 1 and omnisend.stats()["write_requests"] == 0


def test_an_unreachable_key_vault_exits_5_naming_the_vault(root, omnisend):
    vault = f"https://127.0.0.1:{closed_port()}"
    env = env_for(root, KEY_VAULT_URL=vault, OMNISEND_BASE_URL=omnisend.base_url)

    done, seconds = run("export", "vip", env=env)

    assert done.returncode == 5, done.stderr
    assert f"cannot reach Key Vault at {vault}" in done.stderr
    assert seconds < FATAL_WITHIN_SECONDS
    assert omnisend.stats()["requests_total"] == 0
