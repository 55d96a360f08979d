"""docs/deploy.md can be followed by pasting: its bash blocks hold no placeholders, build no URL by hand, and use
only shell variables that an earlier block sets or that `azd env get-values` provides (the template's outputs)."""

from __future__ import annotations

import re

from tests.infra.test_bicep import DEPLOY_DOC, template

BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
USED = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
ASSIGNED = re.compile(r"(?:^|[\s;(&])(?:read -rsp? \"[^\"]*\" |read -rs )?([A-Za-z_][A-Za-z0-9_]*)=")
READ = re.compile(r"\bread -rs\w* (?:\"[^\"]*\" )?([A-Za-z_][A-Za-z0-9_]*)")


def bash_blocks() -> list[str]:
    return [re.sub(r"(^|\s)#.*", "", block) for block in BLOCK.findall(DEPLOY_DOC.read_text())]


def test_guide_has_commands():
    assert len(bash_blocks()) >= 8


def test_commands_hold_no_placeholders():
    for block in bash_blocks():
        assert not re.findall(r"<[a-z][^>]*>", block), block


def test_every_url_comes_from_the_function_app_url_output():
    text = "\n".join(bash_blocks())
    assert "azurewebsites.net" not in text
    assert all("$FUNCTION_APP_URL/api/" in line for line in text.splitlines() if "/api/" in line)


def test_every_variable_a_command_uses_is_set_before():
    known = set(template()["outputs"]) | {"AZURE_RESOURCE_GROUP"}  # azd env get-values
    for block in bash_blocks():
        used = set(USED.findall(block)) - {"1"}
        assigned = set(ASSIGNED.findall(block)) | set(READ.findall(block))
        assert used - known - assigned == set(), block
        known |= assigned


def test_the_last_step_after_deploying_calls_the_health_endpoint():
    doc = DEPLOY_DOC.read_text()
    after = doc[doc.index("### After either path"):doc.index("### Verify a deployment")]
    assert '"$FUNCTION_APP_URL/api/health"' in BLOCK.findall(after)[-1]
    verify = doc[doc.index("### Verify a deployment"):doc.index("### Alerts")]
    assert verify.index("/api/health") < verify.index("az role assignment list")
