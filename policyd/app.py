"""The HTTP service frps calls: one plugin route, plus health endpoints.

The plugin route reads the raw body and answers raw bytes: no per-request model validation beyond
what the wire format needs, so the request path stays lean.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from policyd.engine import decide
from policyd.protocol import BadRequest, encode_answer, error_body, parse_request
from policyd.settings import Settings
from policyd.store import PolicyStore
from policyd.watcher import PolicyWatcher

log = logging.getLogger("policyd")
JSON = "application/json"


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


def create_app(settings: Settings, store: PolicyStore, *, watch: bool = True) -> FastAPI:
    """Build the service around an already loaded store (a broken policy fails before this)."""
    options = settings.eval_options

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if watch:
            watcher = PolicyWatcher(
                store.directory,
                store.reload,
                debounce=settings.reload_debounce_s,
                poll=settings.reload_poll_s,
            )
            watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()

    app = FastAPI(title="policyd", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.state.settings = settings

    @app.post(settings.handler_path)
    async def handler(request: Request) -> Response:
        try:
            body = await _read_body(request, settings.max_body_bytes)
            plugin_request = parse_request(body, request.query_params.get("op"))
        except BadRequest as e:
            log.warning("bad request from %s: %s", request.client.host if request.client else "?", e.message)
            return Response(error_body(e.message), status_code=e.status, media_type=JSON)
        decision = decide(
            store.policy,
            plugin_request.op,
            plugin_request.content,
            reqid=request.headers.get("x-frp-reqid", ""),
            options=options,
        )
        if decision.error is not None:
            log.error(
                "%s %s: rule error (%s): %s",
                plugin_request.op.value,
                "failed OPEN" if decision.failed_open else "rejected",
                decision.error.code,
                decision.error,
            )
        for warning in decision.warnings:
            log.warning("%s warn (%s): %s", plugin_request.op.value, warning.rule, warning.message)
        return Response(encode_answer(decision), media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(
            b'{"status":"ready","policy_version":"%s"}' % store.policy.version.encode(),
            media_type=JSON,
        )

    return app
