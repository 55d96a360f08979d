"""What a real `azd up` needs that a parse alone does not show (issue 11): no Flex-rejected site properties, the
principal type azd passes, Customer Insights' and the deployer's roles on the export container, resource ordering."""

from __future__ import annotations

import json

from tests.infra.test_bicep import (
    MAIN,
    PARAMETERS_FILE,
    body,
    function_app,
    path_of,
    resolve,
    role_assignments,
    role_id,
    template,
)

# Built-in role definition ids (Microsoft's built-in roles list; the same in every tenant).
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"


def assignments_for(principal: str) -> dict[str, dict]:
    tree = template()
    return {
        name: {"role": role_id(a, tree), "scope": path_of(a["scope"]),
               "type": a["properties"]["principalType"], "condition": tree["resources"][name]["config"]["condition"]}
        for name, a in role_assignments(tree).items()
        if path_of(a["properties"]["principalId"]) == principal
    }


def condition_text(condition: object) -> str:
    return json.dumps(condition, sort_keys=True, default=str)


# --- the site ---------------------------------------------------------------------------------------------------


def test_site_sets_no_ftps_state_which_flex_rejects():
    site_config = function_app()["properties"]["siteConfig"]
    assert "ftpsState" not in site_config
    code = "\n".join(line.split("//")[0] for line in MAIN.read_text().splitlines())  # comments may explain why
    assert "ftpsState" not in code


def test_ftp_stays_off_through_the_publishing_credentials_policy():
    (ftp,) = [res for res in template()["resources"].values()
              if res["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies" and body(res)["name"] == "ftp"]
    assert body(ftp)["properties"]["allow"] is False


def test_site_is_created_after_its_deployment_container():
    assert "deploymentContainer" in function_app()["dependsOn"]


# --- who deploys --------------------------------------------------------------------------------------------------


def test_azd_passes_the_principal_type_defaulting_to_user():
    parameters = json.loads(PARAMETERS_FILE.read_text())["parameters"]
    assert parameters["principalType"] == {"value": "${AZURE_PRINCIPAL_TYPE=User}"}
    allowed = next(d["argument"] for d in template()["parameters"]["principalType"]["decorators"]
                   if d["type"] == "allowed")
    assert {"User", "ServicePrincipal"} <= set(allowed)


def test_every_deployer_grant_uses_the_principal_type_parameter():
    grants = assignments_for("principalId")
    assert grants and {g["type"] for g in grants.values()} == {"principalType"}


def test_deployer_may_write_the_export_container_when_it_is_in_the_app_account():
    grants = [g for g in assignments_for("principalId").values() if g["scope"] == "ciExportContainer"]
    assert [g["role"] for g in grants] == [STORAGE_BLOB_DATA_CONTRIBUTOR]
    condition = condition_text(grants[0]["condition"])
    assert "principalId" in condition and "useExternalCiAccount" in condition


# --- Customer Insights ----------------------------------------------------------------------------------------------


def test_customer_insights_principal_is_an_optional_parameter():
    parameter = template()["parameters"]["customerInsightsPrincipalId"]
    assert parameter["default"] == ""
    mapped = json.loads(PARAMETERS_FILE.read_text())["parameters"]["customerInsightsPrincipalId"]
    assert mapped == {"value": "${CUSTOMER_INSIGHTS_PRINCIPAL_ID}"}


def test_customer_insights_gets_write_on_the_container_and_delegator_on_the_account():
    grants = {(g["role"], g["scope"]) for g in assignments_for("customerInsightsPrincipalId").values()}
    assert grants == {(STORAGE_BLOB_DATA_CONTRIBUTOR, "ciExportContainer"), (STORAGE_BLOB_DELEGATOR, "storage")}


def test_customer_insights_grants_exist_only_when_named_and_without_an_external_account():
    grants = assignments_for("customerInsightsPrincipalId")
    assert {condition_text(g["condition"]) for g in grants.values()} == {'"grantCustomerInsights"'}
    # grantCustomerInsights = !empty(customerInsightsPrincipalId) && !useExternalCiAccount
    rule = template()["variables"]["grantCustomerInsights"]["value"]["operator"]
    assert rule["type"] == "and"
    left, right = rule["operands"]["operand_1"]["operator"], rule["operands"]["operand_2"]["operator"]
    assert left["type"] == "not" and "customerInsightsPrincipalId" in condition_text(left)
    assert "empty" in condition_text(left)
    assert right == {"type": "not", "operands": {"bool_value": "useExternalCiAccount"}}


def test_customer_insights_is_granted_as_a_service_principal():
    assert {g["type"] for g in assignments_for("customerInsightsPrincipalId").values()} == {"ServicePrincipal"}


def test_role_ids_the_template_names_are_the_built_in_ones():
    variables = template()["variables"]
    assert resolve(variables["storageBlobDataContributorRoleId"]["value"]) == STORAGE_BLOB_DATA_CONTRIBUTOR
    assert resolve(variables["storageBlobDelegatorRoleId"]["value"]) == STORAGE_BLOB_DELEGATOR
