"""Shared fixtures for the integration tests (the Omnisend simulator on 127.0.0.1)."""

from __future__ import annotations

import pytest

from devtools.omnisend_sim import SimConfig, Simulator

SIM_KEY = "test-key"


@pytest.fixture
def simulator():
    """A started simulator with short batch processing; reconfigure it per test with ``simulator.configure(...)``."""
    sim = Simulator(SimConfig(api_keys=(SIM_KEY,), batch_delay=0.05)).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def export_server():
    """One simulator per module for whole-export tests: a large rate limit (pacing is the client's unit tests'
    and the benchmark's business) and near-instant batches."""
    with Simulator(SimConfig(api_keys=(SIM_KEY,), batch_delay=0.01, requests_per_minute=1_000_000,
                             tags_requests_per_minute=1_000_000)) as sim:
        yield sim


@pytest.fixture
def sim(export_server):
    """The module's simulator, emptied and back to its starting configuration."""
    export_server.reset()
    return export_server
