"""Wiring of the real Functions app (function_app.py) for the concurrent host stand-in's worker processes.

``wire(...)`` runs in every worker process (``HostConfig.bootstrap``) and in the test process: it builds the app's
orchestrator the way ``shared.app.build_orchestrator`` does in Azure, with the test's own pieces at the process
boundary only: Azurite, the Omnisend simulator's URL and key, queue names with the test's prefix, a budget blob of
the test's own, and time-scaled delays (named in the scenario tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def wire(*, connection_string: str, exports_config: str, base_url: str, key: str, requests_per_minute: int,
         queue_prefix: str, budget_container: str, verify_delay: int, late_tolerance: float,
         send_backoff: Sequence[int], slot_wait: float, release_lead: float,
         claim_seconds: float | None = None, brand_keys: Mapping[str, str] | None = None) -> None:
    """``claim_seconds``: the send claims', verify rounds' and finalisation leases' expiry, scaled with the stand-in's
    lease (production: longer than host.json's 10-minute functionTimeout; here, longer than the scaled lease that
    stands for it), so a killed worker's claims expire within the scenario's seconds. ``brand_keys``: the
    OMNISEND_API_KEY_<SUFFIX> variables that connections name in apiKeyEnv (several brands); each connection's
    budget blob is then made in ``budget_container`` too."""
    from azure.storage.blob import BlobServiceClient

    import function_app
    from shared.app import build_orchestrator
    from shared.brands import budget_blob_name
    from shared.budget import AzureBudgetBlob, RequestBudget
    from shared.queues import StageQueues
    from shared.secrets import StaticKeyProvider
    from shared.settings import Settings
    from tests.azure.concurrent_host import PrefixedQueues

    if claim_seconds is not None:
        import shared.leases
        import shared.orchestrator
        import shared.pipeline.send

        shared.pipeline.send.SEND_CLAIM_SECONDS = claim_seconds
        shared.orchestrator.VERIFY_ROUND_LEASE_SECONDS = claim_seconds
        shared.leases.FINALISE_LEASE_SECONDS = claim_seconds
        shared.orchestrator.FINALISE_RECHECK_MARGIN = 1  # 30 s: the margin after a lease's expiry, scaled alike

    settings = Settings(storage_connection_string=connection_string, exports_config=exports_config,
                        omnisend_base_url=base_url, omnisend_api_key=key,
                        omnisend_requests_per_minute=requests_per_minute, omnisend_api_keys=dict(brand_keys or {}))
    blobs = BlobServiceClient.from_connection_string(connection_string)
    budget = RequestBudget(AzureBudgetBlob(blobs, budget_container), requests_per_minute, max_wait=slot_wait)

    def make_budget(connection, rpm: int) -> RequestBudget:
        blob = AzureBudgetBlob(blobs, budget_container, name=budget_blob_name(connection))
        return RequestBudget(blob, rpm, max_wait=slot_wait)

    function_app._orchestrator = build_orchestrator(
        settings, queues=PrefixedQueues(StageQueues.from_connection_string(connection_string), queue_prefix),
        key_provider=StaticKeyProvider(key), budget=budget, make_budget=make_budget, verify_delay=verify_delay,
        send_backoff=tuple(send_backoff), late_tolerance=late_tolerance, release_lead=release_lead,
        # A twin that finds a live send claim looks again this much later (30 s in production).
        **({} if claim_seconds is None else {"claim_recheck_delay": 1}))
