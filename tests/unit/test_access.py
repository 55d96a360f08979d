"""Who is calling: roles from App Service Authentication's X-MS-CLIENT-PRINCIPAL header, and what a function key
alone is worth (shared/management/access.py)."""

from __future__ import annotations

import base64
import json

import pytest

from shared.errors import ConfigError
from shared.management.access import ADMIN, OPERATOR, READER, caller_from_headers, encode_principal
from shared.settings import Settings

AUTH_ON = Settings(auth_enabled=True)


def principal(claims: list[dict], **extra) -> str:
    return base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims, **extra}).encode()).decode()


def test_roles_come_from_the_roles_claims():
    header = principal(
        [
            {"typ": "roles", "val": OPERATOR},
            {"typ": "roles", "val": READER},
            {"typ": "preferred_username", "val": "ana@example.com"},
        ]
    )

    caller = caller_from_headers({"X-MS-CLIENT-PRINCIPAL": header}, AUTH_ON)

    assert caller.roles == {OPERATOR, READER} and caller.name == "ana@example.com" and caller.via == "entra"


def test_roles_under_the_principals_role_type_count_too():
    role_typ = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
    header = principal([{"typ": role_typ, "val": ADMIN}], role_typ=role_typ)

    assert caller_from_headers({"x-ms-client-principal": header}, AUTH_ON).roles == {ADMIN}


def test_roles_of_other_apps_are_ignored():
    header = principal([{"typ": "roles", "val": "Exports.Everything"}, {"typ": "roles", "val": "Admin"}])

    assert caller_from_headers({"X-MS-CLIENT-PRINCIPAL": header}, AUTH_ON).roles == frozenset()


@pytest.mark.parametrize(
    "header",
    ["not base64!", base64.b64encode(b"[1, 2]").decode(), base64.b64encode(b'{"claims": "x"}').decode(), "A" * 100_000],
)
def test_an_unreadable_principal_has_no_role(header):
    assert caller_from_headers({"X-MS-CLIENT-PRINCIPAL": header}, AUTH_ON).roles == frozenset()


def test_the_header_is_ignored_while_authentication_is_off():
    caller = caller_from_headers({"X-MS-CLIENT-PRINCIPAL": encode_principal("x", [READER])}, Settings())

    assert caller.via == "function-key" and caller.roles == {ADMIN}


@pytest.mark.parametrize(
    ("auth", "allow", "roles"),
    [
        (False, None, {ADMIN}),
        (True, None, set()),
        (True, True, {ADMIN}),
        (True, False, set()),
        (False, False, set()),
    ],
)
def test_what_a_function_key_alone_is_worth(auth, allow, roles):
    settings = Settings(auth_enabled=auth, allow_function_key_admin=allow)

    assert caller_from_headers({}, settings).roles == roles


def test_the_settings_are_read_from_the_environment():
    settings = Settings.from_env({"AUTH_ENABLED": "true", "ALLOW_FUNCTION_KEY_ADMIN": "False"})

    assert settings.auth_enabled is True and settings.allow_function_key_admin is False
    assert Settings.from_env({}).function_key_is_admin is True


def test_a_flag_that_is_not_a_boolean_is_a_settings_problem():
    with pytest.raises(ConfigError, match="AUTH_ENABLED='maybe'"):
        Settings.from_env({"AUTH_ENABLED": "maybe"})
