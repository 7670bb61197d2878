"""In-process benchmark of the plugin route: µs per request through the ASGI app, without HTTP.

    python -m benchmarks.route [--requests 20000]

What the route costs on top of deciding (parsing, allowlist, metrics, the decision log line), so
it can be watched apart from the rules and from uvicorn. The decision-log line is also timed on
its own (`DecisionLog.write` into a sink that drops it: masking, the record, JSON), for the
benchmark's request and for a reject at the 50-rule policy's 24th rule. Each request is the HTTP benchmark's
(benchmarks/newproxy.json, frps's headers) driven straight into the app on a running event loop,
as uvicorn would; the raw ASGI constant responder of the HTTP benchmark is timed the same way as
the floor. Best of five batches.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from starlette.types import ASGIApp, Message

from benchmarks.baselines import raw_app
from benchmarks.peers.requests import REJECT_AT_24
from policyd.engine import decide
from policyd.rules.decision import Op
from policyd.service.app import create_app
from policyd.service.decisionlog import DecisionLog
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore

HERE = Path(__file__).resolve().parent
BODY = (HERE / "newproxy.json").read_bytes()
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/handler",
    "raw_path": b"/handler",
    "query_string": b"op=NewProxy&version=0.1.0",
    "headers": [
        (b"host", b"127.0.0.1:9000"),
        (b"user-agent", b"Go-http-client/1.1"),
        (b"content-length", b"%d" % len(BODY)),
        (b"content-type", b"application/json"),
        (b"x-frp-reqid", b"0123456789abcdef"),
        (b"accept-encoding", b"gzip"),
    ],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 9000),
}
REQUEST: Message = {"type": "http.request", "body": BODY, "more_body": False}


async def _receive() -> Message:
    return REQUEST


async def _send(message: Message) -> None:
    pass


async def _us_per_request(app: ASGIApp, requests: int) -> float:
    for _ in range(min(requests, 2000)):  # warm-up: first-use caches, metric children
        await app(dict(SCOPE), _receive, _send)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(requests):
            await app(dict(SCOPE), _receive, _send)
        best = min(best, (time.perf_counter() - start) / requests * 1e6)
    return best


def _us_per_line(store: PolicyStore, content: dict[str, Any], requests: int) -> float:
    decision = decide(store.policy, Op.NEW_PROXY, content)
    log = DecisionLog(lambda batch: None)
    for _ in range(min(requests, 2000)):
        log.write(decision, content, "0123456789abcdef")
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(requests):
            log.write(decision, content, "0123456789abcdef")
        best = min(best, (time.perf_counter() - start) / requests * 1e6)
    return best


async def _run(requests: int) -> list[dict[str, Any]]:
    rows = [{"subject": "raw ASGI constant responder", "us": await _us_per_request(raw_app, requests)}]  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as empty:
        for label, policies in (("empty policy", Path(empty)), ("50-rule policy", HERE / "policy50")):
            store = PolicyStore(policies)
            for log in ("off", "/dev/null"):
                app = create_app(Settings(policies=policies, decision_log=log), store, watch=False)
                us = await _us_per_request(app, requests)
                rows.append({"subject": f"policyd, {label}, decision log {log}", "us": us})
    store = PolicyStore(HERE / "policy50")
    body = orjson.loads(BODY)["content"]
    for label, content in (("the benchmark's NewProxy", body), ("a reject at rule 24", REJECT_AT_24)):
        us = _us_per_line(store, content, requests)
        rows.append({"subject": f"decision-log line alone, {label}", "us": us})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests per timed batch")
    args = parser.parse_args(argv)
    try:
        import uvloop

        rows = uvloop.run(_run(args.requests))
    except ImportError:
        rows = asyncio.run(_run(args.requests))
    for row in rows:
        print(f"  {row['subject']:<48} {row['us']:7.2f} µs/request")


if __name__ == "__main__":
    main()
