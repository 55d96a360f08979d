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
