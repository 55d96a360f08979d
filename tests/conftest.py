"""Run-wide set-up shared by every test directory: the one Azurite of a (possibly parallel) run, and the marker that
keeps the multi-process host scenarios away from the parallel part of the run.

pytest-xdist runs these hooks in the controlling process and in every worker; see tests/azure/azurite_support.py.
"""

from __future__ import annotations

import sys

import pytest

from tests.azure import azurite_support

# Tests that start several worker processes of the app (tests/azure/concurrent_host.py's ConcurrentHost) measure
# throughput against a time-scaled budget and each keep both cores busy, so they must not share the machine with
# other tests: ./dev test runs everything else in parallel first, then `-m multiprocess_host` on its own, serially.
# In a developer's parallel run (`./dev test <args>`) `--dist loadgroup` at least keeps them on one worker, one after
# another. Any test module that uses ConcurrentHost is in the group; nothing to register per test.
MULTIPROCESS_HOST = "multiprocess_host"
_CONCURRENT_HOST_MODULE = "tests.azure.concurrent_host"
# A module using ConcurrentHost that sets ``SHARES_THE_MACHINE = True`` asserts outcomes only (what reached Omnisend,
# the state, the report), never a request rate, and was checked to pass on a loaded machine: it joins the parallel
# part in this xdist group instead (keeping the suite under 10 minutes).
SHARED_MACHINE_GROUP = "concurrent_host_outcomes"


def pytest_configure(config: pytest.Config) -> None:
    azurite_support.configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    azurite_support.unconfigure(config)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the marker added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    stand_in = sys.modules.get(_CONCURRENT_HOST_MODULE)
    if stand_in is None:
        return
    uses_stand_in: dict[object, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module not in uses_stand_in:
            uses_stand_in[module] = any(value is stand_in.ConcurrentHost for value in vars(module).values())
        if uses_stand_in[module]:
            if getattr(module, "SHARES_THE_MACHINE", False):
                # Correctness scenarios (no throughput floor): they run in the parallel part, one after another on
                # one worker, so two of them never compete for the cores.
                item.add_marker(pytest.mark.xdist_group(SHARED_MACHINE_GROUP))
            else:
                item.add_marker(MULTIPROCESS_HOST)
                item.add_marker(pytest.mark.xdist_group(MULTIPROCESS_HOST))
