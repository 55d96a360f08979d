"""Azure Functions entry point: triggers only. Each decodes its binding and calls one method of the
Orchestrator (shared/orchestrator.py); the product lives in shared/.

Nothing is built at import time: an import-time error would make every function of the app disappear, so the
settings, storage and queue clients are created on first use and reused by later invocations of this instance.
"""

from __future__ import annotations

import json
import logging
import threading

import azure.functions as func

from shared import names

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

_lock = threading.Lock()
_orchestrator = None
log = logging.getLogger("exporter")


def orchestrator():
    global _orchestrator
    with _lock:
        if _orchestrator is None:
            from shared.app import build_orchestrator

            _orchestrator = build_orchestrator()
        return _orchestrator


def _json(status: int, body: object) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, ensure_ascii=False), status_code=status, mimetype="application/json")


def _message(msg: func.QueueMessage):
    from shared.queues import StageMessage

    return StageMessage.parse(msg.get_body())


# ------------------------------------------------------------------------------------------------ starting


@app.timer_trigger(schedule="%EXPORT_SCHEDULE%", arg_name="timer", run_on_startup=False)
def export_timer(timer: func.TimerRequest) -> None:
    """Start a run for every export whose newest snapshot has not been exported (schedule: EXPORT_SCHEDULE)."""
    started = orchestrator().on_timer()
    log.info("timer pastDue=%s started=%s", timer.past_due, started)


@app.route(route="exports/{name}/runs", methods=["POST"])
def start_export_run(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/exports/{name}/runs, optional body {"force", "dryRun", "fullResync", "allowMassExit"}."""
    from shared.pipeline import RunOptions

    try:
        body = req.get_json() if req.get_body() else {}
    except ValueError:
        return _json(400, {"error": "the body must be JSON, e.g. {\"force\": true}"})
    allowed = {"force": "force", "dryRun": "dry_run", "fullResync": "full_resync", "allowMassExit": "allow_mass_exit"}
    if not isinstance(body, dict) or set(body) - set(allowed) or not all(isinstance(v, bool) for v in body.values()):
        return _json(400, {"error": f"the body may only hold booleans {sorted(allowed)}", "got": body})
    options = RunOptions(trigger="http", **{allowed[k]: v for k, v in body.items()})
    name = req.route_params["name"]
    status, result = orchestrator().start(name, options)
    if "runId" in result and status in (200, 202):
        base = req.url.split("/api/", 1)[0]
        result["statusUrl"] = f"{base}/api/exports/{name}/runs/{result['runId']}"
    return _json(status, result)


@app.route(route="exports/{name}/runs/{runId}", methods=["GET"])
def get_export_run(req: func.HttpRequest) -> func.HttpResponse:
    """Stage, counts, progress and ETA of a run; its report once finished."""
    status = orchestrator().status(req.route_params["name"], req.route_params["runId"])
    if status is None:
        return _json(404, {"error": "no such run"})
    return _json(200, status)


@app.route(route="exports", methods=["GET"])
def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    """The configured exports and their last runs."""
    return _json(200, {"exports": orchestrator().overview()})


# Erasure requests are rare and touch every export's data: an admin (host) key, not a function key.
FORGET_MAX_EMAILS = 1000


@app.route(route="forget", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def forget_people(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/forget {"emails": [...]}: erase people from every state and kept run file (shared/forget.py)."""
    from shared.errors import ConfigError
    from shared.forget import RunsInFlight, forget

    try:
        body = req.get_json()
    except ValueError:
        body = None
    emails = body.get("emails") if isinstance(body, dict) else None
    if (not isinstance(emails, list) or not 0 < len(emails) <= FORGET_MAX_EMAILS
            or not all(isinstance(e, str) for e in emails)):
        return _json(400, {"error": f'the body must be {{"emails": [1..{FORGET_MAX_EMAILS} strings]}}'})
    try:
        return _json(200, forget(orchestrator().ctx.state_store, emails))
    except RunsInFlight as exc:
        return _json(409, {"error": str(exc)})
    except ConfigError as exc:
        return _json(400, {"error": str(exc)})


# ------------------------------------------------------------------------------------------------ stages


@app.queue_trigger(arg_name="msg", queue_name=names.PLAN_QUEUE, connection=names.STORAGE_CONNECTION)
def plan_stage(msg: func.QueueMessage) -> None:
    orchestrator().on_plan(_message(msg))


@app.queue_trigger(arg_name="msg", queue_name=names.SEND_QUEUE, connection=names.STORAGE_CONNECTION)
def send_stage(msg: func.QueueMessage) -> None:
    orchestrator().on_send(_message(msg))


@app.queue_trigger(arg_name="msg", queue_name=names.VERIFY_QUEUE, connection=names.STORAGE_CONNECTION)
def verify_stage(msg: func.QueueMessage) -> None:
    orchestrator().on_verify(_message(msg))


# ------------------------------------------------------------------------------------------------ poison


@app.queue_trigger(arg_name="msg", queue_name=names.PLAN_QUEUE + names.POISON_SUFFIX,
                   connection=names.STORAGE_CONNECTION)
def plan_poison(msg: func.QueueMessage) -> None:
    orchestrator().on_poison(names.PLAN_QUEUE + names.POISON_SUFFIX, msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name=names.SEND_QUEUE + names.POISON_SUFFIX,
                   connection=names.STORAGE_CONNECTION)
def send_poison(msg: func.QueueMessage) -> None:
    orchestrator().on_poison(names.SEND_QUEUE + names.POISON_SUFFIX, msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name=names.VERIFY_QUEUE + names.POISON_SUFFIX,
                   connection=names.STORAGE_CONNECTION)
def verify_poison(msg: func.QueueMessage) -> None:
    orchestrator().on_poison(names.VERIFY_QUEUE + names.POISON_SUFFIX, msg.get_body())
