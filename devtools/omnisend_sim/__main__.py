"""Command line: ``python -m devtools.omnisend_sim --port 8787 --key dev-key``. Runs until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from .config import SimConfig
from .server import Simulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.omnisend_sim",
        description=(
            "Local Omnisend API simulator on 127.0.0.1. Serves the v3 API under /v3 (X-API-KEY) and the "
            "2026-03-15 API under /api (Authorization: Omnisend-API-Key <key> + Omnisend-Version). "
            "Inspect and steer it with GET /_sim/state, POST /_sim/config, POST /_sim/reset, POST /_sim/contacts. "
            "See docs/simulator.md."
        ),
    )
    parser.add_argument("--port", type=int, default=8787, help="port on 127.0.0.1 (0 = any free port; default 8787)")
    parser.add_argument("--key", action="append", dest="keys", metavar="KEY",
                        help="accepted API key; repeat for several (default: dev-key)")  # fmt: skip
    parser.add_argument("--batch-delay", type=float, default=0.2, help="seconds until a batch is finished")
    parser.add_argument("--rpm", type=int, default=400, help="requests per rate window per key (default 400)")
    parser.add_argument("--rate-window", type=float, default=60.0, help="rate window length in seconds (default 60)")
    parser.add_argument("--tags-rpm", type=int, default=60, help="2026 /contacts/tags requests per window")
    parser.add_argument("--error-5xx-rate", type=float, default=0.0, help="fraction of requests answered 500/503")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="fraction of requests whose connection drops")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    parser.add_argument("--seed", type=int, default=0, help="seed for the fault-injection random draws")
    parser.add_argument("--auth-status", type=int, choices=(401, 403), default=401, help="status for a bad key")
    parser.add_argument("--retry-after-header", action="store_true", help="2026: also send Retry-After on 429")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = SimConfig(
        api_keys=tuple(args.keys or ["dev-key"]),
        port=args.port,
        batch_delay=args.batch_delay,
        requests_per_minute=args.rpm,
        rate_window_seconds=args.rate_window,
        tags_requests_per_minute=args.tags_rpm,
        error_5xx_rate=args.error_5xx_rate,
        drop_rate=args.drop_rate,
        latency=args.latency,
        seed=args.seed,
        auth_status=args.auth_status,
        retry_after_header=args.retry_after_header,
    )
    sim = Simulator(config).start()
    print(sim.base_url, flush=True)
    print(f"  2026-03-15: {sim.base_url}/api   v3: {sim.base_url}/v3   state: {sim.base_url}/_sim/state", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
