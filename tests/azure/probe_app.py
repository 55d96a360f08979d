"""A throw-away Functions app for the concurrent host stand-in's own tests (tests/azure/test_concurrent_host.py).

Its queue function does what the message body says, so a test can make a delivery succeed, raise, hold for a while
or kill its own process: {"action": "ok" | "raise" | "die" | "hold", "seconds": 1.0, "untilDequeue": 2}. With
``untilDequeue`` the action applies to deliveries up to that dequeue count, later ones succeed. The timer function
enqueues one "ok" message (to show a timer fire feeding the workers).
"""

from __future__ import annotations

import json
import os
import signal
import time

import azure.functions as func

QUEUE = "probe"
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
# Set by bootstrap(): where the timer enqueues (the test's queue prefix applied).
_wiring: dict[str, object] = {}


def bootstrap(queue_prefix: str, connection_string: str) -> None:
    from shared.queues import StageQueues

    _wiring["queues"] = StageQueues.from_connection_string(connection_string)
    _wiring["prefix"] = queue_prefix


@app.queue_trigger(arg_name="msg", queue_name=QUEUE, connection="AzureWebJobsStorage")
def probe(msg: func.QueueMessage) -> None:
    body = json.loads(msg.get_body())
    if msg.dequeue_count > int(body.get("untilDequeue", 1_000_000)):
        return
    action = body.get("action", "ok")
    if action == "raise":
        raise RuntimeError(f"asked to fail (delivery {msg.dequeue_count})")
    if action == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hold":
        time.sleep(float(body.get("seconds", 1.0)))


@app.queue_trigger(arg_name="msg", queue_name=QUEUE + "-poison", connection="AzureWebJobsStorage")
def probe_poison(msg: func.QueueMessage) -> None:
    json.loads(msg.get_body())  # a poison handler that can read what it got


@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
def probe_timer(timer: func.TimerRequest) -> None:
    _wiring["queues"].send(f"{_wiring['prefix']}{QUEUE}", {"id": "from-timer", "action": "ok"})
