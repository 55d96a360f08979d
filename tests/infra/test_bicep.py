"""infra/main.bicep agrees with the code: settings, names, roles, and no secrets.

Parsed offline with pycep (no Bicep CLI): expressions stay symbolic, so identifiers are resolved against the
template's own parameters and variables, and resource references are compared as dotted paths
("identity.properties.principalId"). Names come from shared/names.py and shared/settings.py, never copied here.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from shared import names, settings

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "infra" / "main.bicep"
CI_READER_MODULE = REPO / "infra" / "modules" / "ci-export-reader.bicep"
PARAMETERS_FILE = REPO / "infra" / "main.parameters.json"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

# Built-in Azure role definition ids (the same in every tenant).
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"

APP_PRINCIPAL = "identity.properties.principalId"
APP_CLIENT_ID = "identity.properties.clientId"
INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


# --- parsing helpers ----------------------------------------------------------------------------------------------


@cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def template() -> dict[str, Any]:
    return parse(MAIN)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource's own properties, without the `if (...)` / `for` wrappers pycep adds around them."""
    config = resource["config"]
    while "condition" in config and "config" in config:
        config = config["config"]
    return config


def resources_of_type(tree: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in tree["resources"].items() if res["type"] == resource_type}


def resolve(value: Any, tree: dict[str, Any] | None = None) -> Any:
    """Follow a bare identifier to its variable value or parameter default; interpolate simple `${ident}`s."""
    tree = tree or template()
    if isinstance(value, str):
        if value in tree.get("variables", {}):
            return resolve(tree["variables"][value]["value"], tree)
        if value in tree.get("parameters", {}):
            return resolve(tree["parameters"][value].get("default"), tree)
        return INTERPOLATION.sub(lambda m: _interpolated(m.group(1), tree), value)
    return value


def _interpolated(expression: str, tree: dict[str, Any]) -> str:
    resolved = resolve(expression, tree)
    return resolved if isinstance(resolved, str) and resolved != expression else "${" + expression + "}"


def path_of(node: Any) -> str:
    """Render a property-access chain (identity.properties.clientId) as a dotted string; other nodes as JSON."""
    if isinstance(node, str):
        return node
    operator = node.get("operator", {}) if isinstance(node, dict) else {}
    if operator.get("type") == "property_accessor":
        operands = operator["operands"]
        return f"{path_of(operands['operand_1'])}.{path_of(operands['operand_2'])}"
    return json.dumps(node, sort_keys=True, default=str)


def app_settings() -> dict[str, Any]:
    (settings_resource,) = [
        res
        for res in resources_of_type(template(), "Microsoft.Web/sites/config").values()
        if body(res)["name"] == "appsettings"
    ]
    return body(settings_resource)["properties"]


def function_app() -> dict[str, Any]:
    (site,) = resources_of_type(template(), "Microsoft.Web/sites").values()
    return body(site)


def container_names() -> set[str]:
    containers = resources_of_type(template(), "Microsoft.Storage/storageAccounts/blobServices/containers")
    return {resolve(body(res)["name"]) for res in containers.values()}


def queue_names() -> set[str]:
    queues = resources_of_type(template(), "Microsoft.Storage/storageAccounts/queueServices/queues")
    found: set[str] = set()
    for res in queues.values():
        loop = res["config"].get("loop_type")
        if loop:  # resource queues '...' = [for queueName in queueNames: {...}]
            found.update(resolve(loop["detail"]["array_name"]))
        else:
            found.add(resolve(body(res)["name"]))
    return found


def role_assignments(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body(res) for name, res in resources_of_type(tree, "Microsoft.Authorization/roleAssignments").items()}


def role_id(assignment: dict[str, Any], tree: dict[str, Any]) -> str:
    """The GUID behind subscriptionResourceId('Microsoft.Authorization/roleDefinitions', <variable>)."""
    function = assignment["properties"]["roleDefinitionId"]["function"]
    assert function["type"] == "subscription_resource_id"
    return resolve(function["parameters"]["resource_name_1"], tree)


@cache
def function_bindings() -> tuple[dict[str, Any], ...]:
    """Bindings of every function in function_app.py, as the host sees them (function.json form)."""
    import function_app  # imported late: an import error there should fail only the binding checks

    # azure-functions 1.26 remembers the names it validated and raises "not a unique function name" on a second
    # get_functions() call for the same app (another test may have called it first); start from a clean record.
    function_app.app.functions_bindings = {}
    functions = function_app.app.get_functions()
    return tuple(binding for fn in functions for binding in json.loads(str(fn))["bindings"])


# --- app settings -------------------------------------------------------------------------------------------------


def test_every_setting_the_code_reads_in_azure_is_set():
    needed = set(settings.ENV_NAMES) - set(settings.LOCAL_ONLY_SETTINGS)
    assert needed - set(app_settings()) == set()


def test_no_setting_is_set_that_neither_the_code_nor_the_host_reads():
    known = (set(settings.ENV_NAMES) - set(settings.LOCAL_ONLY_SETTINGS)) | set(settings.HOST_SETTINGS)
    assert set(app_settings()) - known == set()


def test_host_storage_is_identity_based_with_the_user_assigned_identity():
    values = app_settings()
    assert values["AzureWebJobsStorage__credential"] == "managedidentity"
    assert path_of(values["AzureWebJobsStorage__clientId"]) == APP_CLIENT_ID
    assert path_of(values["AZURE_CLIENT_ID"]) == APP_CLIENT_ID
    assert path_of(values["AzureWebJobsStorage__blobServiceUri"]) == "storage.properties.primaryEndpoints.blob"
    assert path_of(values["AzureWebJobsStorage__queueServiceUri"]) == "storage.properties.primaryEndpoints.queue"


def test_telemetry_authenticates_with_the_identity_not_a_key():
    assert app_settings()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${" + APP_CLIENT_ID + "};Authorization=AAD"
    )


def test_exports_config_points_at_the_config_container():
    expected = f"{names.BLOB_CONFIG_PREFIX}{names.CONFIG_CONTAINER}/exports.json"
    assert resolve(app_settings()["EXPORTS_CONFIG"]) == expected


def test_api_key_comes_from_the_vault_by_name_not_from_a_setting():
    values = app_settings()
    assert path_of(values["KEY_VAULT_URL"]) == "keyVault.properties.vaultUri"
    assert resolve(values["OMNISEND_API_KEY_SECRET_NAME"]) == settings.DEFAULT_SECRET_NAME
    assert "OMNISEND_API_KEY" not in values


def test_omnisend_defaults_match_the_code_defaults():
    values = app_settings()
    assert resolve(values["OMNISEND_API_VERSION"]) == settings.DEFAULT_API_VERSION
    allowed = next(
        d["argument"] for d in template()["parameters"]["omnisendApiVersion"]["decorators"] if d["type"] == "allowed"
    )
    assert set(allowed) == set(settings.API_VERSIONS)
    rpm = values["OMNISEND_REQUESTS_PER_MINUTE"]["function"]
    assert rpm["type"] == "string"  # app settings are strings
    assert resolve(rpm["parameters"]["value_to_convert"]) == settings.DEFAULT_REQUESTS_PER_MINUTE


def test_the_budget_does_not_depend_on_the_instance_count():
    # One reservation blob paces every instance (shared/budget.py); no per-instance share is configured.
    assert "OMNISEND_PACING_INSTANCES" not in app_settings()


def test_timer_schedule_defaults_to_the_code_default():
    assert resolve(app_settings()["EXPORT_SCHEDULE"]) == settings.DEFAULT_EXPORT_SCHEDULE


def test_source_blob_service_is_the_external_account_when_named_else_the_app_account():
    source = resolve(app_settings()["SOURCE_BLOB_SERVICE_URI"])
    choice = source["operator"]
    assert choice["type"] == "conditional"
    assert choice["operands"]["condition"] == "useExternalCiAccount"
    assert choice["operands"]["true_value"].startswith("https://${ciExportStorageAccountName}.blob.")
    assert path_of(choice["operands"]["false_value"]) == "storage.properties.primaryEndpoints.blob"


# --- names shared with the code and the bindings ------------------------------------------------------------------


def test_run_state_and_config_containers_exist():
    assert {names.RUNS_CONTAINER, names.STATE_CONTAINER, names.CONFIG_CONTAINER} <= container_names()


def test_ci_export_container_is_created_only_without_an_external_account():
    containers = resources_of_type(template(), "Microsoft.Storage/storageAccounts/blobServices/containers")
    (ci_container,) = [res for res in containers.values() if body(res)["name"] == "ciExportContainerName"]
    condition = ci_container["config"]["condition"]["operator"]
    assert condition["type"] == "not"
    assert condition["operands"]["bool_value"] == "useExternalCiAccount"
    assert resolve("ciExportContainerName") == "ciexports"


def test_stage_queues_and_their_poison_queues_exist():
    expected = set(names.STAGE_QUEUES) | {queue + names.POISON_SUFFIX for queue in names.STAGE_QUEUES}
    assert queue_names() == expected


def test_every_queue_a_binding_names_exists():
    named = {b["queueName"] for b in function_bindings() if b["type"] in ("queueTrigger", "queue")}
    if not named:
        pytest.skip("function_app.py has no queue bindings yet; this check turns on when the triggers land")
    assert named - queue_names() == set()


def test_every_app_setting_a_binding_names_is_set():
    referenced = {
        m for b in function_bindings() for v in b.values() if isinstance(v, str) for m in re.findall(r"%([^%]+)%", v)
    }
    if not referenced:
        pytest.skip("function_app.py has no bindings that read an app setting (%NAME%) yet")
    assert referenced - set(app_settings()) == set()


def test_queue_bindings_use_the_identity_based_storage_connection():
    connections = {b.get("connection") for b in function_bindings() if b["type"] in ("queueTrigger", "queue")}
    if not connections:
        pytest.skip("function_app.py has no queue bindings yet; this check turns on when the triggers land")
    assert connections == {names.STORAGE_CONNECTION}


def test_flex_deploys_from_an_existing_container_with_the_identity():
    storage = function_app()["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${storage.properties.primaryEndpoints.blob}${deploymentContainerName}"
    assert resolve("deploymentContainerName") in container_names()
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert path_of(storage["authentication"]["userAssignedIdentityResourceId"]) == "identity.id"


# --- hosting ------------------------------------------------------------------------------------------------------


def test_app_runs_python_3_11_on_a_linux_flex_consumption_plan():
    (plan,) = resources_of_type(template(), "Microsoft.Web/serverfarms").values()
    assert body(plan)["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert body(plan)["properties"]["reserved"] is True
    site = function_app()
    assert site["kind"] == "functionapp,linux"
    assert site["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert site["properties"]["httpsOnly"] is True


def test_instance_memory_and_maximum_instances_are_parameters():
    scale = function_app()["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert scale == {"instanceMemoryMB": "instanceMemoryMB", "maximumInstanceCount": "maximumInstanceCount"}


def test_maximum_instances_defaults_to_the_smallest_cap():
    parameter = template()["parameters"]["maximumInstanceCount"]
    minimum = next(d["argument"] for d in parameter["decorators"] if d["type"] == "min_value")
    assert parameter["default"] == minimum == 1


def test_app_has_only_the_user_assigned_identity():
    identity = function_app()["identity"]
    assert identity["type"] == "UserAssigned"
    assert [key.strip("'") for key in identity["userAssignedIdentities"]] == ["${identity.id}"]
    assert len(resources_of_type(template(), "Microsoft.ManagedIdentity/userAssignedIdentities")) == 1


# --- roles --------------------------------------------------------------------------------------------------------


def test_app_identity_has_exactly_the_listed_roles_in_the_app_resource_group():
    granted = {
        (role_id(a, template()), path_of(a["scope"]))
        for a in role_assignments(template()).values()
        if path_of(a["properties"]["principalId"]) == APP_PRINCIPAL
    }
    assert granted == {
        (STORAGE_BLOB_DATA_OWNER, "storage"),
        (STORAGE_QUEUE_DATA_CONTRIBUTOR, "storage"),
        (KEY_VAULT_SECRETS_USER, "keyVault"),
        (MONITORING_METRICS_PUBLISHER, "appInsights"),
    }


def test_external_ci_account_gets_only_blob_read_on_just_its_container():
    (module,) = template()["modules"].values()
    assert module["detail"]["path"] == "modules/ci-export-reader.bicep"
    assert module["config"]["condition"] == "useExternalCiAccount"
    assert path_of(module["config"]["config"]["params"]["principalId"]) == APP_PRINCIPAL

    tree = parse(CI_READER_MODULE)
    (assignment,) = role_assignments(tree).values()
    assert role_id(assignment, tree) == STORAGE_BLOB_DATA_READER
    scope = tree["resources"][assignment["scope"]]
    assert scope["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"
    assert scope["existing"] is True


def test_other_role_assignments_only_exist_for_an_explicitly_named_principal():
    # The deploying principal (principalId) or Customer Insights (customerInsightsPrincipalId), each only when set.
    for name, res in resources_of_type(template(), "Microsoft.Authorization/roleAssignments").items():
        principal = path_of(body(res)["properties"]["principalId"])
        if principal == APP_PRINCIPAL:
            continue
        assert principal in ("principalId", "customerInsightsPrincipalId"), name
        condition = res["config"]["condition"]
        if isinstance(condition, str) and condition in template()["variables"]:  # if (grantCustomerInsights)
            condition = template()["variables"][condition]["value"]
        rendered = json.dumps(condition)
        assert "empty" in rendered and principal in rendered, name  # if (!empty(<that principal>) ...)


def test_role_ids_are_commented_variables():
    for path in (MAIN, CI_READER_MODULE):
        tree = parse(path)
        lines = path.read_text().splitlines()
        for name, assignment in role_assignments(tree).items():
            variable = assignment["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
            assert variable in tree["variables"], f"{path.name}:{name} uses an inline role id"
            line = next(i for i, text in enumerate(lines) if text.startswith(f"var {variable} ="))
            assert lines[line - 1].startswith("//"), f"{path.name}: var {variable} has no comment above it"


# --- locked-down resources ----------------------------------------------------------------------------------------


def test_app_storage_allows_only_entra_over_tls_1_2_and_nothing_public():
    (storage,) = resources_of_type(template(), "Microsoft.Storage/storageAccounts").values()
    props = body(storage)["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True


def test_blob_soft_delete_stays_off_where_customer_insights_exports():
    (blob_service,) = resources_of_type(template(), "Microsoft.Storage/storageAccounts/blobServices").values()
    assert body(blob_service)["properties"]["deleteRetentionPolicy"]["enabled"] is False


def test_key_vault_uses_rbac_soft_delete_and_purge_protection():
    (vault,) = resources_of_type(template(), "Microsoft.KeyVault/vaults").values()
    props = body(vault)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True


def test_application_insights_has_local_auth_off():
    (component,) = resources_of_type(template(), "Microsoft.Insights/components").values()
    assert body(component)["properties"]["DisableLocalAuth"] is True


def test_basic_publishing_credentials_are_off():
    policies = resources_of_type(template(), "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"]: body(p)["properties"]["allow"] for p in policies.values()} == {"ftp": False, "scm": False}


# --- no secrets ---------------------------------------------------------------------------------------------------

SECRET_MARKERS = (
    "listKeys",
    "listSecrets",
    "list_keys",
    "AccountKey",
    "SharedAccessSignature",
    "InstrumentationKey",
    "ConnectionString",
    "secureString",
    "secure_string",
)


def test_outputs_hold_no_secret():
    for name, output in template()["outputs"].items():
        rendered = json.dumps(output, default=str)
        assert not [m for m in SECRET_MARKERS if m in rendered], name
        assert not [d for d in output["decorators"] if d["type"] == "secure"], name


def test_template_declares_no_secret_value_or_key():
    assert not resources_of_type(template(), "Microsoft.KeyVault/vaults/secrets")
    for path in (MAIN, CI_READER_MODULE):
        code = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
        assert not [m for m in ("listKeys", "listSecrets", "AccountKey", "@secure") if m in code], path.name


def test_no_app_setting_is_a_key_or_key_vault_reference():
    # The one allowed connection string is App Insights': with local auth off it locates the resource but
    # cannot be used to send data (APPLICATIONINSIGHTS_AUTHENTICATION_STRING makes ingestion use the identity).
    allowed = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "appInsights.properties.ConnectionString"}
    for name, value in app_settings().items():
        if name in allowed:
            assert path_of(value) == allowed[name]
            continue
        rendered = json.dumps(value, default=str)
        assert "@Microsoft.KeyVault" not in rendered, name
        assert not [marker for marker in SECRET_MARKERS if marker in rendered], name


# --- parameters and docs ------------------------------------------------------------------------------------------


def test_parameters_file_names_only_template_parameters():
    mapped = set(json.loads(PARAMETERS_FILE.read_text())["parameters"])
    declared = template()["parameters"]
    assert mapped - set(declared) == set()
    required = {name for name, p in declared.items() if "default" not in p or p["default"] is None}
    assert required - mapped == set()


def test_deploy_doc_lists_every_parameter_in_a_table():
    doc = DEPLOY_DOC.read_text()
    missing = [name for name in template()["parameters"] if f"| `{name}` |" not in doc]
    assert missing == []
