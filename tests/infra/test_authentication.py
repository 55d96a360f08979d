"""infra/main.bicep's optional App Service Authentication agrees with the code (shared/management/access.py): it is
on exactly when an app registration is named, validates tokens for that registration, and tells the app so."""

from __future__ import annotations

from tests.infra.test_bicep import app_settings, body, resources_of_type, template


def auth_settings() -> dict:
    (auth,) = [
        res
        for res in resources_of_type(template(), "Microsoft.Web/sites/config").values()
        if body(res)["name"] == "authsettingsV2"
    ]
    return body(auth)["properties"]


def conditional(node: dict) -> dict:
    assert node["operator"]["type"] == "conditional", node
    return node["operator"]["operands"]


def test_authentication_is_on_exactly_when_an_app_registration_is_named():
    parameters = template()["parameters"]
    assert parameters["authClientId"]["default"] == ""
    assert parameters["allowFunctionKeyAdmin"]["default"] is False
    enabled = template()["variables"]["authEnabled"]["value"]["operator"]
    assert enabled["type"] == "not"
    assert enabled["operands"]["bool_value"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": "authClientId"},
    }


def test_the_entra_provider_validates_tokens_of_that_registration_from_this_tenant():
    auth = auth_settings()
    assert auth["platform"]["enabled"] == "authEnabled"
    provider = auth["identityProviders"]["azureActiveDirectory"]
    assert provider["enabled"] == "authEnabled"
    assert provider["registration"]["clientId"] == "authClientId"
    assert provider["registration"]["openIdIssuer"] == (
        "${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0"
    )
    assert conditional(provider["validation"]["allowedAudiences"])["condition"] == "authEnabled"
    assert auth["httpSettings"]["requireHttps"] is True


def test_unauthenticated_requests_get_401_unless_function_key_automation_is_allowed():
    validation = auth_settings()["globalValidation"]
    assert validation["requireAuthentication"]["operator"] == {
        "type": "not",
        "operands": {"bool_value": "allowFunctionKeyAdmin"},
    }
    assert conditional(validation["unauthenticatedClientAction"]) == {
        "condition": "allowFunctionKeyAdmin",
        "true_value": "AllowAnonymous",
        "false_value": "Return401",
    }


def test_the_app_trusts_the_principal_header_only_with_authentication_on():
    settings = app_settings()
    assert settings["AUTH_ENABLED"]["function"] == {"type": "string", "parameters": {"value_to_convert": "authEnabled"}}
    value = settings["ALLOW_FUNCTION_KEY_ADMIN"]["function"]["parameters"]["value_to_convert"]
    # without authentication a function key stays admin, as before
    assert conditional(value) == {
        "condition": "authEnabled",
        "true_value": "allowFunctionKeyAdmin",
        "false_value": True,
    }
