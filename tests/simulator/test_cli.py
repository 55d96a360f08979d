"""``python -m devtools.omnisend_sim``: help text, and a real run that prints its base URL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_main_options():
    result = subprocess.run(
        [sys.executable, "-m", "devtools.omnisend_sim", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip

    for option in ("--port", "--key", "--batch-delay", "--rpm", "--error-5xx-rate", "--drop-rate", "--latency"):
        assert option in result.stdout


def test_cli_prints_base_url_and_serves_both_versions():
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.omnisend_sim", "--port", "0", "--key", "dev-key"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base_url = process.stdout.readline().strip()
        v3 = requests.get(base_url + "/v3/contacts", headers={"X-API-KEY": "dev-key"}, timeout=10)
        headers = {"Authorization": "Omnisend-API-Key dev-key", "Omnisend-Version": "2026-03-15"}
        v2026 = requests.get(base_url + "/api/contacts", headers=headers, timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert base_url.startswith("http://127.0.0.1:")
    assert (v3.status_code, v2026.status_code) == (200, 200)
