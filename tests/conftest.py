"""Run-wide set-up shared by every test directory: the one Azurite of a (possibly parallel) run, and the group that
keeps the multi-process host scenarios on one xdist worker.

pytest-xdist runs these hooks in the controlling process and in every worker; see tests/azure/azurite_support.py.
"""

from __future__ import annotations

import sys

import pytest

from tests.azure import azurite_support

# Tests that start several worker processes of the app (tests/azure/concurrent_host.py) are timing-sensitive and
# each already keeps both cores busy: `--dist loadgroup` (./dev test) sends every test of this group to the same
# worker, so they run one after another, never two at once. Any module that uses the concurrent stand-in joins it.
MULTIPROCESS_HOST_GROUP = "multiprocess-host"
_CONCURRENT_HOST_MODULE = "tests.azure.concurrent_host"


def pytest_configure(config: pytest.Config) -> None:
    azurite_support.configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    azurite_support.unconfigure(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    stand_in = sys.modules.get(_CONCURRENT_HOST_MODULE)
    if stand_in is None:
        return
    marked: dict[object, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module not in marked:
            marked[module] = any(
                value is stand_in or getattr(value, "__module__", None) == _CONCURRENT_HOST_MODULE
                for value in vars(module).values()
            )
        if marked[module]:
            item.add_marker(pytest.mark.xdist_group(MULTIPROCESS_HOST_GROUP))
