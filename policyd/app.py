"""The HTTP service frps calls: the plugin route, health, status and metrics endpoints.

The plugin route reads the raw body and answers raw bytes: no per-request model validation beyond
what the wire format needs, so the request path stays lean. Everything else (metrics, the decision
log, status) lives in its own module; this one only wires them to HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policyd.access import Allowlist
from policyd.decisionlog import DecisionLog
from policyd.engine import decide
from policyd.metrics import CONTENT_TYPE, Metrics
from policyd.protocol import (
    ALLOW_UNCHANGED,
    POLICY_ERROR_ANSWER,
    BadRequest,
    encode_answer,
    error_body,
    parse_request,
)
from policyd.settings import Settings
from policyd.status import readiness, status_document
from policyd.store import PolicyStore
from policyd.watcher import PolicyWatcher

log = logging.getLogger("policyd")
JSON = "application/json"
VERSION_HEADER = "x-policyd-version"  # frps ignores it; people and tests see which policy answered


class _Edge:
    """Pure ASGI wrapper: refuses peers off a path's allowlist (403) and times every request."""

    def __init__(self, app: ASGIApp, *, guards: Mapping[str, Allowlist], metrics: Metrics) -> None:
        self.app = app
        self.guards = guards
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        status = 500  # what the client gets if the app raises

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            guard = self.guards.get(path)
            peer = scope.get("client")
            if guard is not None and not guard.allows(peer[0] if peer else None):
                log.warning("refused %s from %s: not on the allowlist", path, peer[0] if peer else "?")
                body = error_body(f"client {peer[0] if peer else '?'} may not call {path}")
                await send_status(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_http(self.metrics.path_label(path), status, time.perf_counter() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes exceeds the limit of {limit} bytes", 413)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise BadRequest(f"body exceeds the limit of {limit} bytes", 413)
    return bytes(chunks)


def create_app(
    settings: Settings,
    store: PolicyStore,
    *,
    watch: bool = True,
    metrics_dir: str | None = None,
) -> FastAPI:
    """Build the service around an already loaded store (a broken policy fails before this).

    `metrics_dir` is prometheus-client's multiprocess directory when several workers serve.
    """
    options = settings.eval_options
    decisions = DecisionLog.open(settings.decision_log, settings.decision_log_sample)
    metrics = Metrics(store, handler_path=settings.handler_path, multiprocess_dir=metrics_dir)
    started_at = time.time()
    started = False

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal started
        watcher = None
        if watch:
            watcher = PolicyWatcher(
                store.directory,
                store.reload,
                debounce=settings.reload_debounce_s,
                poll=settings.reload_poll_s,
            )
            watcher.start()
        started = True
        try:
            yield
        finally:
            started = False
            if watcher is not None:
                watcher.stop()
            decisions.close()

    app = FastAPI(title="policyd", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.state.settings = settings
    guards = {settings.handler_path: Allowlist(settings.handler_allow)}
    admin = Allowlist(settings.admin_allow)
    guards.update({"/status": admin, "/metrics": admin})
    app.add_middleware(_Edge, guards={p: g for p, g in guards.items() if g}, metrics=metrics)

    @app.post(settings.handler_path)
    async def handler(request: Request) -> Response:
        try:
            body = await _read_body(request, settings.max_body_bytes)
            plugin_request = parse_request(body, request.query_params.get("op"))
        except BadRequest as e:
            log.warning("bad request from %s: %s", request.client.host if request.client else "?", e.message)
            return Response(error_body(e.message), status_code=e.status, media_type=JSON)
        reqid = request.headers.get("x-frp-reqid", "")
        decision = decide(
            store.policy, plugin_request.op, plugin_request.content, reqid=reqid, options=options
        )
        metrics.observe(decision)
        decisions.write(decision, plugin_request.content, reqid)
        try:
            answer = encode_answer(decision)
        except orjson.JSONEncodeError as e:
            # A rule can compute what JSON cannot carry (a lone surrogate "\ud800", an integer
            # over 64 bits, content nested past orjson's 255 levels); frps must still get a 200.
            fail_open = plugin_request.op in options.fail_open_ops
            log.error(
                "%s %s: the answer cannot be encoded as JSON: %s",
                plugin_request.op.value,
                "failed OPEN" if fail_open else "rejected",
                e,
            )
            answer = ALLOW_UNCHANGED if fail_open else POLICY_ERROR_ANSWER
        return Response(answer, media_type=JSON, headers={VERSION_HEADER: decision.policy_version})

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, reason = readiness(store, started)
        if not ready:
            return Response(orjson.dumps({"status": "not ready", "reason": reason}), 503, media_type=JSON)
        version = store.policy.version
        return Response(
            orjson.dumps({"status": "ready", "policy_version": version}),
            media_type=JSON,
            headers={VERSION_HEADER: version},
        )

    @app.get("/status")
    async def status() -> Response:
        doc = status_document(store, settings, started_at=started_at, now=time.time())
        return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type=JSON)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
