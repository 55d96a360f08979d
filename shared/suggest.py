"""Small helpers for messages about a JSON document: the closest valid name, and what kind of value was given.

Shared by the export-definition and connection validators (shared/exports.py, shared/connections.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``word`` (ignoring case), or None when nothing is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean "X"?' for the closest of ``choices``, or "" when nothing is close."""
    near = closest(word, choices)
    return f'; did you mean "{near}"?' if near else ""


def type_name(value: Any) -> str:
    """How a JSON value is named in a message: "a string", "a number", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
