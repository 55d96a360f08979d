"""Local Omnisend API simulator (v3 and 2026-03-15) for tests, the CLI and benchmarks. See docs/simulator.md."""

from .config import SimConfig
from .server import Simulator

__all__ = ["SimConfig", "Simulator"]
