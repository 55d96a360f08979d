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


def _answer(answer) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(answer.body, ensure_ascii=False), status_code=answer.status,
                             headers=answer.headers, mimetype="application/json")


def _caller(req: func.HttpRequest):
    """Who is calling, with which roles (shared/management/access.py)."""
    from shared.management.access import caller_from_headers

    return caller_from_headers(dict(req.headers), orchestrator().ctx.settings)


def _refused(exc) -> func.HttpResponse:
    return _json(exc.status, {"error": str(exc)})


def management():
    from shared import pipeline
    from shared.management.api import Management

    orch = orchestrator()
    ctx = orch.ctx
    return Management(ctx.settings, ctx.state_store, clock=ctx.clock,
                      on_change=getattr(orch.load_exports, "forget", None),
                      list_runs=lambda export: pipeline.list_runs(ctx, export))


def _message(msg: func.QueueMessage):
    from shared.queues import StageMessage

    return StageMessage.parse(msg.get_body())


# ------------------------------------------------------------------------------------------------ starting


@app.timer_trigger(schedule="%EXPORT_SCHEDULE%", arg_name="timer", run_on_startup=False)
def export_timer(timer: func.TimerRequest) -> None:
    """Start a run for every export whose newest snapshot has not been exported (schedule: EXPORT_SCHEDULE)."""
    from shared.health import timer_fired

    orch = orchestrator()
    started = orch.on_timer()
    timer_fired(orch.ctx.state_store, orch.load_exports(), started, orch.ctx.clock)  # for /api/health and alerts
    log.info("timer pastDue=%s started=%s", timer.past_due, started)


@app.route(route="exports/{name}/runs", methods=["POST"])
def start_export_run(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/exports/{name}/runs, optional body {"force", "dryRun", "fullResync", "allowMassExit", "supersede"}."""
    from shared.http_input import BadRequest, check_export_name, start_options
    from shared.management.access import Forbidden
    from shared.pipeline import RunOptions

    name = req.route_params["name"]
    try:
        check_export_name(name)
        options = RunOptions(trigger="http", **start_options(req.get_body()))
    except BadRequest as exc:
        return _json(exc.status, {"error": str(exc)})
    try:  # Exports.Admin, or Exports.Operator on a connection that allows it (and operatorsMayForce to force)
        management().authorize_run(_caller(req), name, options)
    except Forbidden as exc:
        return _refused(exc)
    status, result = orchestrator().start(name, options)
    if "runId" in result and status in (200, 202, 409):
        base = req.url.split("/api/", 1)[0]
        result["statusUrl"] = f"{base}/api/exports/{name}/runs/{result['runId']}"
    return _json(status, result)


@app.route(route="exports/{name}/runs/{runId}", methods=["GET"])
def get_export_run(req: func.HttpRequest) -> func.HttpResponse:
    """Stage, counts, progress and ETA of a run; its report once finished."""
    from shared.http_input import BadRequest, check_export_name, check_run_id
    from shared.management.access import READ_ROLES, Forbidden

    name, run_id = req.route_params["name"], req.route_params["runId"]
    try:  # before any storage access: these values become blob names
        check_export_name(name)
        check_run_id(run_id)
    except BadRequest as exc:
        return _json(exc.status, {"error": str(exc)})
    try:
        _caller(req).require(*READ_ROLES, what="reading a run")
    except Forbidden as exc:
        return _refused(exc)
    status = orchestrator().status(name, run_id)
    if status is None:
        return _json(404, {"error": "no such run"})
    return _json(200, status)


@app.route(route="exports", methods=["GET"])
def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    """The configured exports and their last runs."""
    from shared.management.access import READ_ROLES, Forbidden

    try:
        _caller(req).require(*READ_ROLES, what="listing exports")
    except Forbidden as exc:
        return _refused(exc)
    return _json(200, {"exports": orchestrator().overview()})


# ------------------------------------------------------------------------------------------------ management


@app.route(route="exports/{name}", methods=["GET", "PUT", "DELETE"])
def manage_export(req: func.HttpRequest) -> func.HttpResponse:
    """GET (with ETag), PUT (If-Match to change, none to create) or DELETE (?purgeState=true) one export."""
    return _answer(management().handle(_caller(req), req.method.upper(), "exports", req.route_params["name"],
                                       dict(req.headers), req.get_body(), dict(req.params)))


@app.route(route="connections", methods=["GET"])
def list_connections(req: func.HttpRequest) -> func.HttpResponse:
    """The connections (Omnisend brands), without keys: only the secret or variable name each key comes from."""
    return _answer(management().handle(_caller(req), "GET", "connections", None, dict(req.headers), b"", {}))


@app.route(route="connections/{name}", methods=["GET", "PUT", "DELETE"])
def manage_connection(req: func.HttpRequest) -> func.HttpResponse:
    """GET (with ETag), PUT or DELETE one connection: Exports.Admin only to change; 409 while exports use it."""
    return _answer(management().handle(_caller(req), req.method.upper(), "connections", req.route_params["name"],
                                       dict(req.headers), req.get_body(), dict(req.params)))


@app.route(route="audit", methods=["GET"])
def read_audit(req: func.HttpRequest) -> func.HttpResponse:
    """Every change made through this API, newest first: ?limit=50&after=<the previous page's next>."""
    return _answer(management().audit(_caller(req), dict(req.params)))


@app.route(route="health", methods=["GET"])
def health_check(req: func.HttpRequest) -> func.HttpResponse:
    """Can this deployment run an export? Each check ok/error with a reason; 200 if all pass, else 503."""
    from shared.health import run_from_settings

    report = run_from_settings()
    return _json(report.http_status, report.to_dict())


# Erasure requests are rare and touch every export's data: an admin (host) key, not a function key.
FORGET_MAX_EMAILS = 1000


@app.route(route="forget", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def forget_people(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/forget {"emails": [...]}: erase people from every state and kept run file (shared/forget.py)."""
    from shared.errors import ConfigError
    from shared.forget import RunsInFlight, forget
    from shared.management.access import ADMIN, Forbidden

    try:
        _caller(req).require(ADMIN, what="forgetting people")
    except Forbidden as exc:
        return _refused(exc)
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


@app.queue_trigger(arg_name="msg", queue_name=names.FINALISE_QUEUE, connection=names.STORAGE_CONNECTION)
def finalise_stage(msg: func.QueueMessage) -> None:
    orchestrator().on_finalise(_message(msg))


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


@app.queue_trigger(arg_name="msg", queue_name=names.FINALISE_QUEUE + names.POISON_SUFFIX,
                   connection=names.STORAGE_CONNECTION)
def finalise_poison(msg: func.QueueMessage) -> None:
    orchestrator().on_poison(names.FINALISE_QUEUE + names.POISON_SUFFIX, msg.get_body())
