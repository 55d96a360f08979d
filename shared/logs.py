"""Log helpers: masked emails and one-line structured events.

Logs leave the product (App Insights, CI output, pasted into tickets), so they never carry a full email address:
``mask_email`` keeps the first character and the domain, enough to recognise a row without exposing the person.
"""

from __future__ import annotations

MASK = "***"
# A domain name has at most 253 characters (DNS). Anything longer in an "email" is not an address worth showing,
# and cutting it keeps one hostile cell from becoming a megabyte log line.
MAX_DOMAIN_CHARS = 253


def mask_email(email: str) -> str:
    """``john@example.com`` → ``j***@example.com``; anything that is not an address → ``***``. Linear time."""
    if not isinstance(email, str):
        return MASK
    local, at, domain = email.strip().rpartition("@")
    if not at or not local or not domain:
        return MASK
    if len(domain) > MAX_DOMAIN_CHARS:
        domain = domain[:MAX_DOMAIN_CHARS] + "…"
    return f"{local[0]}{MASK}@{domain}"


def event(name: str, **fields: object) -> str:
    """One log line ``name key=value ...`` (logfmt style), easy to grep and to query in App Insights.

    Values with spaces, quotes or ``=`` are JSON-quoted; None is omitted. Callers pass counts, ids and masked
    emails only, never contact data or secrets.
    """
    parts = [name]
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
