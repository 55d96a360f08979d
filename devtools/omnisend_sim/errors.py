"""Error bodies in each version's shape: v3 ``{error, fields}``, 2026 RFC 9457 Problem JSON."""

from __future__ import annotations

from typing import Any

from .util import request_instance

PROBLEM_BASE = "https://problems.omnisend.com/"

_TITLES = {
    400: ("validation-failed", "Validation failed"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    408: ("request-timeout", "Request timeout"),
    410: ("api-version-retired", "API version retired"),
    413: ("payload-too-large", "Payload too large"),
    422: ("unprocessable-entity", "Unprocessable entity"),
    429: ("rate-limit-exceeded", "Rate limit exceeded"),
    500: ("internal-server-error", "Internal server error"),
    503: ("service-unavailable", "Service unavailable"),
}

FieldError = tuple[str, str, str]  # (field, code, message)


def problem(status: int, detail: str, *, slug: str | None = None, **extra: Any) -> dict[str, Any]:
    default_slug, title = _TITLES.get(status, ("problem", "Error"))
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or default_slug),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request_instance(),
    }
    body.update(extra)
    return body


def validation_problem(errors: list[FieldError]) -> dict[str, Any]:
    return problem(
        400,
        f"{len(errors)} validation error(s)",
        errors=[{"field": f, "code": c, "message": m} for f, c, m in errors],
    )


def v3_error(message: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    return body


def v3_validation(errors: list[FieldError], key: str = "0") -> dict[str, Any]:
    """Mirrors the recorded v3 per-item error: fields {"0": ["identifiers[0].channels: field required ..."]}."""
    messages = [f"{f}: {m}" if f else m for f, _c, m in errors]
    return v3_error(f"{len(errors)} error(s) found. Check 'fields' array for details.", {key: messages})


def error_body(version: str, status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """A non-validation error for ``version`` ('v3' or a 2026 date)."""
    if version == "v3":
        return v3_error(detail)
    return problem(status, detail, **extra)


def validation_body(version: str, errors: list[FieldError]) -> dict[str, Any]:
    return v3_validation(errors) if version == "v3" else validation_problem(errors)
