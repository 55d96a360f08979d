"""The preflight: one read-only authenticated request before a run's first write (ARCHITECTURE §4 rule 10).

It proves the base URL, the API version and the key (OmnisendClient.preflight), so a wrong key, a wrong URL or an
unreachable Omnisend end the run before any batch is sent, instead of being found out once per batch. Both
orchestrators call it: the CLI before planning, the Functions plan stage before it queues the sends.
"""

from __future__ import annotations

import uuid

from shared import names
from shared.pipeline import Context
from shared.runs import RunPaths, dumps


def preflight(ctx: Context, export: str, run_id: str) -> None:
    """Raises AuthRejected, BaseUrlNotFound, OmnisendUnreachable (FailRun) or RetryLater. The request it made (none
    when the key was proven moments ago) is recorded where finalise counts requests, so the report's ``requests``
    still equals what Omnisend received."""
    client = ctx.client
    before = client.thread_requests
    try:
        client.preflight()
    finally:
        made = client.thread_requests - before
        if made:
            path = f"{RunPaths(export, run_id).root}/polls/preflight-{uuid.uuid4().hex}.json"
            ctx.state_store.write(names.RUNS_CONTAINER, path, dumps({"requests": made}))
