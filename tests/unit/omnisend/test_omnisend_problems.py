"""Reading both error-body shapes into evidence, with emails masked."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.omnisend.problems import MAX_FIELD_ERRORS, MAX_MESSAGE_CHARS, MAX_SCAN_CHARS, mask_emails, parse_problem

FIXTURES = Path(__file__).parents[2] / "fixtures" / "omnisend"


def load(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def test_v3_error_with_field_messages():
    problem = parse_problem(load("v3_batch_item_missing_channels.json"), 400)

    assert problem.status == 400
    assert problem.request_id is None
    assert problem.message == (
        "1 error(s) found. Check 'fields' array for details. "
        "(identifiers[0].channels: field required but not found in Json)"
    )


def test_2026_validation_problem_lists_every_field_and_masks_emails():
    problem = parse_problem(load("v2026_validation_problem.json"), 400)

    assert problem.request_id == "urn:omnisend:request:6f1c2a9e-4d0b-4a57-9d0e-1b2c3d4e5f60"
    assert problem.message == (
        "Validation failed: Request body has 2 invalid fields (items: must have at most 100 items; "
        "items[3].identifiers[0].id: 'j***@example' is not a valid email)"
    )


def test_2026_rate_limit_problem_carries_retry_after():
    problem = parse_problem(load("v2026_rate_limited.json"), 429)

    assert problem.retry_after == 7.0
    assert problem.request_id == "urn:omnisend:request:0a1b2c3d-0000-4000-8000-000000000429"


def test_v3_unauthorized_body():
    problem = parse_problem(load("v3_unauthorized.json"), 401)

    assert problem.message.startswith("Unauthorized - authorization error")


def test_a_body_that_is_not_json_still_gives_a_problem():
    problem = parse_problem(None, 502)

    assert (problem.status, problem.message, problem.retry_after) == (502, "no message", None)


def test_bad_retry_after_values_are_ignored():
    assert parse_problem({"retryAfter": "soon"}).retry_after is None
    assert parse_problem({"retryAfter": -3}).retry_after is None
    assert parse_problem({"retryAfter": True}).retry_after is None


def test_very_long_messages_are_cut():
    problem = parse_problem({"error": "x" * 5000}, 400)

    assert len(problem.message) == 500


def test_mask_emails_keeps_the_first_letter_and_the_domain():
    assert mask_emails("contact john.doe+vip@example.co.uk exists") == "contact j***@example.co.uk exists"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("'jane@example' is not a valid email", "'j***@example' is not a valid email"),
        ("to:jane@example.com", "to:j***@example.com"),
        ("a@b@c", "a***@b@c"),
        ("@handle and x@y", "@handle and x***@y"),
        ("(bob@example.com), [eve@example.org]; <amy@example.net>", "(b***@example.com), [e***@example.org]; "
         "<a***@example.net>"),
        ("no address here", "no address here"),
    ],
)
def test_mask_emails_masks_every_address_and_nothing_else(text, masked):
    assert mask_emails(text) == masked


def best_of_three(fn) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.mark.parametrize(
    "body",
    [
        "a" * 1_000_000,  # one endless word: the old pattern re-scanned it from every position (quadratic)
        "a" * 999_999 + "@",
        ("x" * 50 + "@") * 20_000,
        "jane.doe@example.com " * 50_000,
    ],
    ids=["no-separator", "no-separator-then-at", "many-ats", "many-addresses"],
)
def test_masking_a_1_mb_body_is_linear_and_capped(body):
    # A complexity bound, not a speed target: 1 MB took minutes with the backtracking pattern.
    assert best_of_three(lambda: mask_emails(body)) < 0.05
    assert len(mask_emails(body)) <= MAX_SCAN_CHARS + 1


def test_a_text_cut_at_the_scan_cap_leaves_no_half_address_unmasked():
    text = "x " * (MAX_SCAN_CHARS // 2 - 3) + "jane.doe@example.com is refused"
    masked = mask_emails(text)
    assert masked.endswith("…")
    assert "jane" not in masked and "ane.doe" not in masked


def test_a_huge_error_body_gives_a_short_message_quickly():
    body = {"title": "Validation failed", "detail": "y" * 1_000_000,
            "errors": [{"field": f"items[{i}].identifiers[0].id", "message": f"'p{i}@example.com' is invalid"}
                       for i in range(100_000)]}
    assert best_of_three(lambda: parse_problem(body, 400).message) < 0.05
    problem = parse_problem(body, 400)
    assert len(problem.message) <= MAX_MESSAGE_CHARS and len(problem.field_errors) <= MAX_FIELD_ERRORS
