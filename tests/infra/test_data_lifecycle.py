"""Run artifacts expire after runRetentionDays; the membership state never does; data-plane and Key Vault access
is logged to the workspace (issue 11, item 2)."""

from __future__ import annotations

import pytest

from shared import names, settings
from shared.runs import RunPaths
from shared.state import state_name
from tests.infra.test_bicep import app_settings, body, resolve, resources_of_type, template


def lifecycle_rules() -> list[dict]:
    (policy,) = resources_of_type(template(), "Microsoft.Storage/storageAccounts/managementPolicies").values()
    assert body(policy)["name"] == "default"  # the only name Azure accepts for an account's policy
    return body(policy)["properties"]["policy"]["rules"]


def expiring_prefixes() -> list[str]:
    (rule,) = lifecycle_rules()
    return [resolve(prefix) for prefix in rule["definition"]["filters"]["prefixMatch"]]


def matches(blob_path: str) -> bool:
    """Azure's lifecycle prefixMatch: '<container>/<blob name prefix>' compared from the start of the path."""
    return any(blob_path.startswith(prefix) for prefix in expiring_prefixes())


RUN = RunPaths("vip-customers", "r-6899bf8f0101")


SEGMENT = f"{RUN.root}/batches/0f3a9c1e2b4d5a6c/00001.seg"  # shared/batch_store.py


@pytest.mark.parametrize("blob", [RUN.started, RUN.manifest, RUN.batch(17), SEGMENT, RUN.report, RUN.rejected,
                                  RUN.failure])
def test_every_run_artifact_expires(blob):
    assert matches(f"{names.RUNS_CONTAINER}/{blob}")


@pytest.mark.parametrize("export", ["vip-customers", "exporter-runs", "x"])
def test_membership_state_never_expires(export):
    assert not matches(f"{names.STATE_CONTAINER}/{state_name(export)}")


def test_no_other_container_expires():
    containers = resources_of_type(template(), "Microsoft.Storage/storageAccounts/blobServices/containers")
    for res in containers.values():
        container = resolve(body(res)["name"])
        if container != names.RUNS_CONTAINER:
            assert not matches(f"{container}/exports.json"), container


def test_prefix_is_the_runs_container_and_its_slash():
    # Without the slash, 'exporter-runs' would also match a container named e.g. 'exporter-runs-archive'.
    assert expiring_prefixes() == [f"{names.RUNS_CONTAINER}/"]


def test_rule_deletes_block_blobs_after_the_retention_parameter():
    (rule,) = lifecycle_rules()
    assert rule["enabled"] is True and rule["type"] == "Lifecycle"
    assert rule["definition"]["filters"]["blobTypes"] == ["blockBlob"]
    assert rule["definition"]["actions"] == {"baseBlob": {"delete": {"daysAfterModificationGreaterThan":
                                                                     "runRetentionDays"}}}


def test_retention_defaults_and_bounds_agree_with_the_code():
    parameter = template()["parameters"]["runRetentionDays"]
    bounds = {d["type"]: d["argument"] for d in parameter["decorators"] if d["type"] in ("min_value", "max_value")}
    assert parameter["default"] == settings.DEFAULT_RUN_RETENTION_DAYS
    assert (bounds["min_value"], bounds["max_value"]) == settings.RUN_RETENTION_DAYS_RANGE


def test_the_app_is_told_the_same_retention():
    setting = app_settings()["RUN_RETENTION_DAYS"]["function"]
    assert setting["type"] == "string"
    assert setting["parameters"]["value_to_convert"] == "runRetentionDays"


# --- diagnostic settings ------------------------------------------------------------------------------------------


def diagnostic_categories() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for res in resources_of_type(template(), "Microsoft.Insights/diagnosticSettings").values():
        config = body(res)
        assert config["properties"]["workspaceId"]["operator"]["operands"] == {"operand_1": "logAnalytics",
                                                                              "operand_2": "id"}
        logs = config["properties"]["logs"]
        if isinstance(logs, dict) and "loop_type" in logs:  # [for category in storageLogCategories: {...}]
            assert logs["config"] == {"category": "category", "enabled": True}
            categories = set(resolve(logs["loop_type"]["detail"]["array_name"]))
        else:
            assert all(entry["enabled"] is True for entry in logs)
            categories = {entry["category"] for entry in logs}
        found[config["scope"]] = categories
    return found


def test_key_vault_audit_events_go_to_the_workspace():
    assert diagnostic_categories()["keyVault"] == {"AuditEvent"}


def test_blob_and_queue_data_plane_logs_go_to_the_workspace():
    storage_logs = {"StorageRead", "StorageWrite", "StorageDelete"}
    categories = diagnostic_categories()
    assert categories["blobService"] == storage_logs
    assert categories["queueService"] == storage_logs
