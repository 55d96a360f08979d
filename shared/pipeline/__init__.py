"""The four stages of an export run: plan, send, verify, finalise, plus starting a run and reading its status.

Both orchestrators call these and nothing else: the local CLI (shared/local_runner.py, a thread pool) and the
Azure Functions app (function_app.py, one queue message per batch). Every stage is idempotent: it finds the
markers an earlier call left (shared/runs.py) and does nothing twice, so redelivered messages, racing workers
and re-runs after a crash are safe. One module per stage; this package re-exports what callers use.
"""

from shared.pipeline.context import Context, RunOptions, StartedRun
from shared.pipeline.finalise import FinaliseBusy, finalise, record_untag_failure, untag_chunk
from shared.pipeline.plan import _BatchWriter, _key_of, dry_run, plan
from shared.pipeline.send import record_batch_failure, record_batch_unconfirmed, send_batch
from shared.pipeline.start import (
    active_run,
    beat,
    fail_run,
    is_interrupted,
    is_superseded,
    read_started,
    start_run,
    supersede_run,
)
from shared.pipeline.status import list_runs, run_status
from shared.pipeline.verify import VerifyOutcome, _run_listing, verify

__all__ = [
    "Context",
    "FinaliseBusy",
    "RunOptions",
    "StartedRun",
    "VerifyOutcome",
    "_BatchWriter",
    "_key_of",
    "_run_listing",
    "active_run",
    "beat",
    "dry_run",
    "fail_run",
    "finalise",
    "is_interrupted",
    "is_superseded",
    "list_runs",
    "plan",
    "read_started",
    "record_batch_failure",
    "record_batch_unconfirmed",
    "record_untag_failure",
    "run_status",
    "send_batch",
    "start_run",
    "supersede_run",
    "untag_chunk",
    "verify",
]
