"""RUN_RETENTION_DAYS: how long run artifacts are kept (infra/main.bicep uses the same days for its lifecycle rule)."""

import pytest

from shared.errors import ConfigError
from shared.settings import DEFAULT_RUN_RETENTION_DAYS, Settings


def test_run_artifacts_are_kept_30_days_by_default():
    assert Settings.from_env({}).run_retention_days == DEFAULT_RUN_RETENTION_DAYS == 30


def test_retention_is_read_from_the_environment():
    assert Settings.from_env({"RUN_RETENTION_DAYS": "7"}).run_retention_days == 7


@pytest.mark.parametrize("value", ["0", "3651", "a week", "-1"])
def test_retention_outside_1_to_3650_days_is_refused_with_the_range(value):
    with pytest.raises(ConfigError, match="RUN_RETENTION_DAYS"):
        Settings.from_env({"RUN_RETENTION_DAYS": value})
