"""Connections and export definitions from the command line, as an operator runs them: a real process, real files, the
Omnisend simulator serving two brands (one key each). Changes are validated as a whole document, shown as a diff and
written only when confirmed; a key is never printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from tests.integration.test_cli import REPO, SAMPLE

FIXTURES = REPO / "tests" / "fixtures" / "connections"
EU_KEY, US_KEY = "eu-brand-key-0001", "us-brand-key-0002"


def run(*args: str, root: Path, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """``python -m shared ARGS`` with no terminal (standard input is ``stdin``, a pipe)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISEND_", "KEY_VAULT", "AzureWebJobs"))}
    base.update({"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO)})
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "shared", *args],
        cwd=REPO,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


@pytest.fixture
def root(tmp_path):
    shutil.copytree(SAMPLE / "data" / "ciexports", tmp_path / "ciexports")
    return tmp_path


@pytest.fixture
def two_brands(tmp_path) -> Path:
    path = tmp_path / "exports.json"
    shutil.copy(FIXTURES / "sample_two_brands.json", path)
    return path


@pytest.fixture
def old_file(tmp_path) -> Path:
    path = tmp_path / "old-exports.json"
    shutil.copy(SAMPLE / "exports.json", path)
    return path


@pytest.fixture(scope="module")
def brands():
    with Simulator(SimConfig(api_keys=(EU_KEY, US_KEY), separate_brands=True, batch_delay=0.05)) as sim:
        yield sim


def brand_env(sim: Simulator, **keys: str) -> dict[str, str]:
    env = {"OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY_EU": EU_KEY, "OMNISEND_API_KEY_US": US_KEY}
    env.update(keys)
    return env


def added(diff: str) -> list[str]:
    """The lines a diff adds, without the "+" and the indentation."""
    return [line[1:].strip().rstrip(",") for line in diff.splitlines() if line.startswith("+") and line[:3] != "+++"]


NEW_EXPORT = {
    "connection": "us-store",
    "source": {"container": "ciexports", "file": "flat/lapsed.csv"},
    "mapping": {"email": "Email"},
    "tags": ["ci-lapsed"],
}


# --- exports set / delete -----------------------------------------------------------------------------------------


def test_set_with_yes_adds_the_export_after_showing_the_diff_and_runs_nothing(root, two_brands):
    result = run(
        "exports", "set", "lapsed", "--config", str(two_brands), "--yes", root=root, stdin=json.dumps(NEW_EXPORT)
    )

    assert result.returncode == 0, result.stderr
    assert '+      "name": "lapsed",' in result.stdout and '+      "connection": "us-store",' in result.stdout
    assert 'export "lapsed" created' in result.stdout and "nothing was run" in result.stdout
    written = json.loads(two_brands.read_text())
    assert [e["name"] for e in written["exports"]] == ["vip-eu", "vip-us", "lapsed"]
    assert written["exports"][2] == {"name": "lapsed", **NEW_EXPORT}
    assert not (root / "exporter-runs").exists()


def test_set_without_a_terminal_and_without_yes_shows_the_diff_and_writes_nothing(root, two_brands):
    before = two_brands.read_bytes()

    result = run("exports", "set", "lapsed", "--config", str(two_brands), root=root, stdin=json.dumps(NEW_EXPORT))

    assert result.returncode == 2
    assert '+      "name": "lapsed",' in result.stdout
    assert "add --yes to write it" in result.stderr
    assert two_brands.read_bytes() == before


def test_set_of_an_invalid_export_lists_every_problem_and_writes_nothing(root, two_brands):
    before = two_brands.read_bytes()
    bad = {
        "connection": "us-stroe",
        "source": {"container": "ciexports", "file": "a.csv"},
        "mapping": {},
        "tags": ["a:b"],
    }

    result = run("exports", "set", "lapsed", "--config", str(two_brands), "--yes", root=root, stdin=json.dumps(bad))

    assert result.returncode == 2
    assert 'exports[2].mapping: "email" is required' in result.stderr
    assert 'exports[2].tags[0]: "a:b": tags use only letters' in result.stderr
    assert 'exports[2].connection: no connection named "us-stroe"; did you mean "us-store"?' in result.stderr
    assert two_brands.read_bytes() == before


def test_set_replaces_an_existing_export_in_place_from_a_file(root, two_brands, tmp_path):
    replacement = tmp_path / "vip-eu.json"
    original = json.loads(two_brands.read_text())["exports"][0]
    replacement.write_text(json.dumps({**original, "tags": ["ci-vip-eu", "ci-2026"]}))

    result = run(
        "exports", "set", "vip-eu", "--config", str(two_brands), "--file", str(replacement), "--yes", root=root
    )

    assert result.returncode == 0, result.stderr
    assert '"ci-2026"' in added(result.stdout) and 'export "vip-eu" replaced' in result.stdout
    written = json.loads(two_brands.read_text())["exports"]
    assert [e["name"] for e in written] == ["vip-eu", "vip-us"] and written[0]["tags"] == ["ci-vip-eu", "ci-2026"]


def test_set_dry_run_shows_the_diff_and_writes_nothing(root, two_brands):
    before = two_brands.read_bytes()

    result = run(
        "exports", "set", "lapsed", "--config", str(two_brands), "--dry-run", root=root, stdin=json.dumps(NEW_EXPORT)
    )

    assert result.returncode == 0
    assert '+      "name": "lapsed",' in result.stdout and "dry run" in result.stdout
    assert two_brands.read_bytes() == before


def test_set_refuses_an_object_named_otherwise(root, two_brands):
    result = run(
        "exports",
        "set",
        "lapsed",
        "--config",
        str(two_brands),
        "--yes",
        root=root,
        stdin=json.dumps({**NEW_EXPORT, "name": "other"}),
    )

    assert result.returncode == 2
    assert 'the export is named "other", not "lapsed"' in result.stderr


def test_set_of_what_is_already_there_changes_nothing(root, two_brands):
    vip_us = json.loads(two_brands.read_text())["exports"][1]

    result = run("exports", "set", "vip-us", "--config", str(two_brands), root=root, stdin=json.dumps(vip_us))

    assert result.returncode == 0 and "no change" in result.stdout


def test_delete_removes_the_export_and_keeps_its_runs(root, two_brands):
    runs = root / "exporter-runs" / "vip-us"
    runs.mkdir(parents=True)
    (runs / "kept.txt").write_text("a run file")

    result = run("exports", "delete", "vip-us", "--config", str(two_brands), "--yes", root=root)

    assert result.returncode == 0, result.stderr
    assert '-      "name": "vip-us",' in result.stdout and "runs and state are kept" in result.stdout
    assert [e["name"] for e in json.loads(two_brands.read_text())["exports"]] == ["vip-eu"]
    assert (runs / "kept.txt").exists()


def test_the_last_export_cannot_be_deleted(root, old_file):
    result = run("exports", "delete", "vip-customers", "--config", str(old_file), "--yes", root=root)

    assert result.returncode == 2
    assert "exports: the list is empty; define at least one export" in result.stderr


def test_delete_of_an_unknown_export_suggests_the_closest(root, two_brands):
    result = run("exports", "delete", "vip-uss", "--config", str(two_brands), "--yes", root=root)

    assert result.returncode == 2 and 'did you mean "vip-us"?' in result.stderr


# --- exports list / show ------------------------------------------------------------------------------------------


def test_list_shows_each_export_with_its_connection(root, two_brands):
    result = run("exports", "list", "--config", str(two_brands), "--json", root=root)

    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(e["name"], e["connection"], e["dataTransferAcknowledged"]) for e in listed] == [
        ("vip-eu", "eu-store", True),
        ("vip-us", "us-store", True),
    ]


def test_show_prints_the_export_as_written(root, two_brands):
    result = run("exports", "show", "vip-us", "--config", str(two_brands), root=root)

    assert json.loads(result.stdout) == json.loads(two_brands.read_text())["exports"][1]


# --- connections --------------------------------------------------------------------------------------------------


def test_an_old_file_has_one_implicit_default_connection(root, old_file):
    result = run("connections", "list", "--config", str(old_file), "--json", root=root)

    [default] = json.loads(result.stdout)
    assert default["name"] == "default" and default["implicit"] is True
    assert default["exports"] == ["vip-customers"] and default["dataTransferAcknowledged"] is False


def test_show_gives_where_the_key_is_never_the_key(root, two_brands, brands):
    result = run(
        "connections", "show", "eu-store", "--config", str(two_brands), "--json", root=root, env=brand_env(brands)
    )

    shown = json.loads(result.stdout)
    assert shown["key"] == "environment variable OMNISEND_API_KEY_EU (set)"
    assert shown["apiKeySecret"] == "omnisend-eu-key" and shown["allowedRoles"] == ["Exports.Operator"]
    assert shown["exports"] == ["vip-eu"] and shown["requestsPerMinute"] == 300
    assert EU_KEY not in result.stdout + result.stderr


def test_check_makes_one_request_to_that_brand_with_its_key(root, two_brands, brands):
    before = brands.stats()["requests_total"]

    result = run("connections", "check", "us-store", "--config", str(two_brands), root=root, env=brand_env(brands))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the brand accepts the key" in result.stdout
    assert brands.stats()["requests_total"] == before + 1


def test_check_with_a_refused_key_exits_5_and_never_shows_the_key(root, two_brands, brands):
    result = run(
        "connections",
        "check",
        "eu-store",
        "--config",
        str(two_brands),
        root=root,
        env=brand_env(brands, OMNISEND_API_KEY_EU="eu-wrong-key-9999"),
    )

    assert result.returncode == 5
    assert "refused the API key" in result.stdout
    assert "eu-wrong-key-9999" not in result.stdout + result.stderr


def test_check_without_the_connections_variable_says_what_to_set(root, two_brands, brands):
    env = brand_env(brands)
    del env["OMNISEND_API_KEY_EU"]

    result = run("connections", "check", "eu-store", "--config", str(two_brands), root=root, env=env)

    assert result.returncode == 2
    assert "environment variable OMNISEND_API_KEY_EU, which is not set" in result.stdout


# --- runs, check-config and health per connection ----------------------------------------------------------------


def test_each_export_goes_to_its_own_connections_brand(root, two_brands, brands):
    brands.reset()
    for export in ("vip-eu", "vip-us"):
        result = run("export", export, "--config", str(two_brands), "--quiet", root=root, env=brand_env(brands))
        assert result.returncode == 0, result.stdout + result.stderr

    eu, us = brands.contacts(brand=EU_KEY), brands.contacts(brand=US_KEY)
    assert eu and set(eu) == set(us)  # the same snapshot went to both brands...
    assert all(c["tags"] == ["ci-vip-eu"] for c in eu.values())  # ...each with its own export's tag only
    assert all(c["tags"] == ["ci-vip-us"] for c in us.values())


def test_check_config_reports_each_connection_and_checks_each_key(root, two_brands, brands):
    result = run(
        "check-config",
        "--config",
        str(two_brands),
        "--json",
        root=root,
        env=brand_env(brands, OMNISEND_API_KEY_US="us-wrong-key-9999"),
    )

    report = json.loads(result.stdout)
    by_name = {c["name"]: c for c in report["connections"]}
    assert by_name["eu-store"]["keyCheck"] == "accepted" and by_name["us-store"]["keyCheck"] == "refused"
    assert by_name["us-store"]["requestsPerMinute"] == 120 and by_name["us-store"]["exports"] == ["vip-us"]
    assert [(p["check"], p["where"]) for p in report["problems"]] == [("key", 'connection "us-store"')]
    assert result.returncode == 5
    assert "us-wrong-key-9999" not in result.stdout + result.stderr


def test_health_checks_the_key_of_every_connection(root, two_brands, brands):
    env = {**brand_env(brands), "EXPORTS_CONFIG": str(two_brands)}
    del env["OMNISEND_API_KEY_US"]

    result = run("health", "--json", root=root, env=env)

    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["keyVault:eu-store"]["status"] == "ok" and checks["omnisend:eu-store"]["status"] == "ok"
    assert checks["keyVault:us-store"]["status"] == "error"
    assert "OMNISEND_API_KEY_US, which is not set" in checks["keyVault:us-store"]["reason"]
    assert checks["omnisend:us-store"]["status"] == "error"
    assert "keyVault" not in checks and result.returncode == 3
