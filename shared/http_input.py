"""Checking what HTTP callers send, before anything reaches storage or the pipeline.

Route values (export name, run id) are matched against their own patterns, so a ``..`` or an over-long value never
becomes part of a blob name. Bodies are small (four optional booleans), so anything larger, deeper or of another
shape is refused with a 400 that quotes at most a short excerpt of what was received: an answer never echoes a
caller's megabytes back.
"""

from __future__ import annotations

import json
from typing import Any

from shared.exports import EXPORT_NAME_RE
from shared.runs import RUN_ID_RE

# The start body holds at most four booleans ({"force": true, "dryRun": false, ...}: under 100 bytes); 1 KiB leaves
# room for whitespace and refuses anything that is not such a body before it is parsed.
MAX_BODY_BYTES = 1024
# How much of a refused input an answer quotes.
EXCERPT_CHARS = 80
START_OPTIONS = {"force": "force", "dryRun": "dry_run", "fullResync": "full_resync", "allowMassExit": "allow_mass_exit",
                 "supersede": "supersede"}


class BadRequest(ValueError):
    """The request is malformed (HTTP 400); the message is safe to return to the caller."""

    status = 400


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of ``value`` (JSON text for non-strings), marked when cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)[: limit + 1]
    return text if len(text) <= limit else text[:limit] + f"… (cut at {limit} characters)"


def check_export_name(name: str) -> None:
    if not EXPORT_NAME_RE.fullmatch(name):
        raise BadRequest(f"{excerpt(name)!r} is not an export name (1-63 lower-case letters, digits and hyphens)")


def check_run_id(run_id: str) -> None:
    if not RUN_ID_RE.fullmatch(run_id):
        raise BadRequest(f"{excerpt(run_id)!r} is not a run id (like r-0123456789ab)")


def start_options(body: bytes) -> dict[str, bool]:
    """The options of ``POST /api/exports/{name}/runs`` as RunOptions keyword arguments; BadRequest otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is {len(body)} bytes; it holds at most the booleans {sorted(START_OPTIONS)}")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest('the body must be JSON, e.g. {"force": true}') from None
    if (not isinstance(data, dict) or set(data) - set(START_OPTIONS)
            or not all(isinstance(v, bool) for v in data.values())):
        raise BadRequest(f"the body may only hold booleans {sorted(START_OPTIONS)}; got {excerpt(data)}")
    return {START_OPTIONS[k]: v for k, v in data.items()}
