"""The HTTP service frps calls: the plugin route, health, status and metrics endpoints.

The plugin route is a raw ASGI app in front of FastAPI: it reads the raw body and answers raw
bytes, with no per-request model validation beyond what the wire format needs, so the request
path stays lean; FastAPI serves the other endpoints. Everything else (metrics, the decision log,
status) lives in its own module; this one only wires them to HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policyd.console.app import ConsoleMode, ConsoleServices, create_console
from policyd.console.rings import ConsoleFeed
from policyd.console.tokens import TokenFile
from policyd.engine import decide, fail_unencodable
from policyd.policy import Policy
from policyd.protocol import (
    ALLOW_UNCHANGED,
    POLICY_ERROR_ANSWER,
    BadRequest,
    PluginRequest,
    encode_answer,
    error_body,
    parse_request,
)
from policyd.rules.decision import Decision
from policyd.service.access import Allowlist
from policyd.service.decisionlog import DecisionLog, decision_record
from policyd.service.edge import Edge
from policyd.service.metrics import CONTENT_TYPE, Metrics
from policyd.service.recorder import RequestRecorder
from policyd.service.settings import CONSOLE_PATH, Settings
from policyd.service.shadow import open_shadow
from policyd.service.statesvc import StateService
from policyd.service.status import readiness, status_document
from policyd.service.store import PolicyStore, pacer
from policyd.service.versions import ServedVersions, open_history
from policyd.service.watcher import PolicyWatcher
from policyd.state.backend import StateUnavailable
from policyd.tools.history import HistoryError, files_document, versions_document

log = logging.getLogger("policyd")
JSON = "application/json"
VERSION_HEADER = "x-policyd-version"  # frps ignores it; people and tests see which policy answered
VERSIONS_PATH = "/versions"  # the version history: GET /versions and /versions/{version}


# The plugin route's work once the body is read: the JSON answer and the policy version, or an
# awaitable of them when the decision waits on a state backend (in a thread, see statesvc).
Answer = Callable[[bytes, "str | None", str], "tuple[bytes, str] | Awaitable[tuple[bytes, str]]"]

_JSON_TYPE = (b"content-type", b"application/json")
_ALLOW_POST = (b"allow", b"POST")
_VERSION_HEADER = VERSION_HEADER.encode()


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


def _request_headers(scope: Scope, limit: int) -> str:
    """frps's reqid (the first X-Frp-Reqid); BadRequest (413) for a declared body over `limit`."""
    reqid = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise BadRequest(f"body of {value.decode()} bytes exceeds the limit of {limit} bytes", 413)
        elif name == b"x-frp-reqid" and reqid is None:
            reqid = value.decode("latin-1")
    return reqid or ""


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, in time linear in its size however it is split (one join at the end)."""
    message = await receive()
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body exceeds the limit of {limit} bytes", 413)
        if not message.get("more_body", False):
            if not chunks:
                return bytes(chunk)  # the usual case: the whole body in one message
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
        message = await receive()


# frps sends one of a handful of query strings (`version=0.1.0&op=NewProxy`), so they are parsed
# once; the bound keeps query strings made up by others from growing it.
@lru_cache(maxsize=64)
def _query_op(query_string: bytes) -> str | None:
    """`?op=` as Starlette's query_params.get("op") reads it: the last one, percent-decoded."""
    if b"op" not in query_string:
        return None
    op = None
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "op":
            op = value
    return op


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def _answer_headers(status: int, body: bytes, version: str) -> list[tuple[bytes, bytes]]:
    headers = [_JSON_TYPE, (b"content-length", b"%d" % len(body))]
    if version:
        headers.append((_VERSION_HEADER, version.encode()))
    if status == 405:
        headers.append(_ALLOW_POST)
    return headers


class _Front:
    """The raw ASGI app in front of FastAPI: the plugin route itself, an allowlist and HTTP
    metrics for every path.

    frps waits on every answer, so the plugin route skips what it does not use of FastAPI
    (routing, dependency solving, Request and Response objects) and of a middleware stack (a
    wrapper around `send` to learn the status): about twice the requests per second for a request
    with little to decide (benchmarks/). Behaviour is the route's: 4xx JSON errors, 405 with
    Allow, the body limit, metrics, the decision log, the policy version header. FastAPI serves
    every other path behind the same allowlists (403) and metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        answer: Answer,
        limit: int,
        guards: Mapping[str, Allowlist],
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.path = path
        self.answer = answer
        self.limit = limit
        self.guards = {p: g for p, g in guards.items() if g}  # an empty allowlist allows everyone
        self.metrics = metrics
        self.edge: Edge | None = None  # the connection limits uvicorn's protocol applies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == self.path:
            await self._plugin(scope, receive, send)
        else:
            await self._other(scope, receive, send)

    def _refuses(self, scope: Scope, path: str) -> bytes | None:
        """The 403 body when the peer is off `path`'s allowlist, else None."""
        guard = self.guards.get(path)
        if guard is None and path.startswith(VERSIONS_PATH + "/"):
            guard = self.guards.get(VERSIONS_PATH)  # /versions/{version}: the same allowlist
        if guard is None:
            return None
        client = scope.get("client")
        if guard.allows(client[0] if client else None):
            return None
        log.warning("refused %s from %s: not on the allowlist", path, _peer(scope))
        return error_body(f"client {_peer(scope)} may not call {path}")

    async def _plugin(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        metrics = self.metrics
        metrics.request_started()
        status = 500  # what the client gets if this raises
        try:
            version = ""
            refusal = self._refuses(scope, self.path)
            if refusal is not None:
                answer_status, body = 403, refusal
            elif scope["method"] != "POST":
                answer_status, body = 405, error_body(f"{self.path} answers POST only")
            else:
                try:
                    reqid = _request_headers(scope, self.limit)
                    raw = await _read_body(receive, self.limit)
                    result = self.answer(raw, _query_op(scope["query_string"]), reqid)
                    body, version = result if isinstance(result, tuple) else await result
                    answer_status = 200
                except _ClientGone:
                    return
                except BadRequest as e:
                    log.warning("bad request from %s: %s", _peer(scope), e.message)
                    answer_status, body = e.status, error_body(e.message)
            headers = _answer_headers(answer_status, body, version)
            status = answer_status
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            metrics.request_done(self.path, status, time.perf_counter() - started)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path = scope["path"]
        status = 500  # what the client gets if the app raises

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.request_started()
        try:
            refusal = self._refuses(scope, path)
            if refusal is not None:
                status = 403
                headers = _answer_headers(status, refusal, "")
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": refusal})
                return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request_done(self.metrics.path_label(path), status, time.perf_counter() - started)


def create_app(
    settings: Settings,
    store: PolicyStore,
    *,
    watch: bool = True,
    metrics_dir: str | None = None,
    state: StateService | None = None,
) -> ASGIApp:
    """Build the service around an already loaded store (a broken policy fails before this).

    `metrics_dir` is prometheus-client's multiprocess directory when several workers serve;
    `state` is the process's state (made from the settings when not given).
    """
    options = settings.eval_options
    history = open_history(settings)
    versions = ServedVersions(history, store)
    decisions = DecisionLog.open(settings.decision_log, settings.decision_log_sample)
    state = state if state is not None else StateService(settings)
    binding = state.binding
    offline = dataclasses.replace(binding, offline=True)
    metrics = Metrics(store, handler_path=settings.handler_path, multiprocess_dir=metrics_dir)
    metrics.register_state(state.backend, state.counts)
    console = ConsoleMode(settings.console)
    feed = None
    if console is not ConsoleMode.OFF:
        feed = ConsoleFeed(
            decision_record,
            reloads=lambda: (store.stats.successes, store.stats.failures),
            # A shadow writes each line once it decided; the row then comes with the line.
            rows_from_shadow=settings.shadow_policies is not None,
        )
    rows = feed.add_shadowed if feed is not None else None
    shadow = open_shadow(settings, store, decisions, metrics, state, rows)
    recorder = RequestRecorder.open(settings, metrics)
    started_at = time.time()
    started = False

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal started
        watcher = None
        versions.start()
        if shadow is not None:
            shadow.start(watch=watch)
        if watch:
            watcher = PolicyWatcher(
                store.directory,
                store.reload,
                debounce=settings.reload_debounce_s,
                max_wait=settings.reload_max_wait_s,
                poll=settings.reload_poll_s,
            )
            watcher.start()
        if feed is not None:
            feed.start()
        state.start()
        started = True
        try:
            yield
        finally:
            started = False
            if feed is not None:
                feed.stop()
            if watcher is not None:
                watcher.stop()
            if shadow is not None:
                await shadow.stop()
            versions.stop()
            if recorder is not None:
                recorder.close()
            state.close()
            decisions.close()

    app = FastAPI(title="policyd", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.state.settings = settings

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Unknown paths and methods answer in the service's own shape, `{"error": "..."}`."""
        path = request.url.path[:200]  # the client's own text, echoed short
        what = {404: f"no such path: {path}", 405: f"{path} does not answer {request.method}"}
        body = error_body(what.get(exc.status_code, str(exc.detail)))
        return Response(body, exc.status_code, headers=dict(exc.headers or {}), media_type=JSON)

    guards = {settings.handler_path: Allowlist(settings.handler_allow)}
    admin = Allowlist(settings.admin_allow)
    # /versions holds every version's rule text and data: it is as private as /status.
    guards.update({"/status": admin, "/metrics": admin, "/state": admin, VERSIONS_PATH: admin})

    def answer(
        body: bytes, query_op: str | None, reqid: str
    ) -> tuple[bytes, str] | Awaitable[tuple[bytes, str]]:
        """One plugin request: the JSON answer and the policy version; BadRequest for 4xx."""
        plugin_request = parse_request(body, query_op)
        now = time.time()
        policy = store.policy  # read once: one version decides, is recorded and is shadowed
        if state.needs_thread(policy, plugin_request.op, plugin_request.content):
            return _threaded(plugin_request, policy, reqid, body, now)
        decision = decide(
            policy,
            plugin_request.op,
            plugin_request.content,
            reqid=reqid,
            now=now,
            options=options,
            state=binding,
        )
        return finish(plugin_request, decision, reqid, body, policy, now)

    async def _threaded(
        plugin_request: PluginRequest, policy: Policy, reqid: str, body: bytes, now: float
    ) -> tuple[bytes, str]:
        op, content = plugin_request.op, plugin_request.content
        decision = await state.run(
            lambda: decide(policy, op, content, reqid=reqid, now=now, options=options, state=binding),
            lambda: decide(policy, op, content, reqid=reqid, now=now, options=options, state=offline),
        )
        return finish(plugin_request, decision, reqid, body, policy, now)

    def finish(
        plugin_request: PluginRequest, decision: Decision, reqid: str, body: bytes, policy: Policy, now: float
    ) -> tuple[bytes, str]:
        try:
            encoded = encode_answer(decision)
        except orjson.JSONEncodeError as e:
            # A rule can compute what JSON cannot carry (a lone surrogate "\ud800", an integer
            # over 64 bits, content nested past orjson's 255 levels); frps must still get a 200,
            # and the metrics and decision log must show what frps got: a rule error.
            fail_open = plugin_request.op in options.fail_open_ops
            fail_unencodable(decision, f"the answer cannot be encoded as JSON: {e}", fail_open=fail_open)
            encoded = ALLOW_UNCHANGED if fail_open else POLICY_ERROR_ANSWER
        metrics.observe(decision)
        if recorder is not None:
            recorder.record(plugin_request, reqid, decision, policy)
        if shadow is None:
            decisions.write(decision, plugin_request.content, reqid)
        else:  # decided once this request's answer is sent; its log line waits for that
            shadow.submit(decision, plugin_request.content, reqid, now, len(body))
        if feed is not None:
            feed.add(decision, body, reqid)
        return encoded, decision.policy_version

    front = _Front(
        app,
        path=settings.handler_path,
        answer=answer,
        limit=settings.max_body_bytes,
        guards=guards,
        metrics=metrics,
    )
    front.edge = Edge.from_settings(settings, metrics.connection_refused)  # read by EdgeProtocol

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, reason = readiness(store, started)
        if ready:
            ready, reason = state.readiness(store.policy)
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
        # Counting live state may ask Redis: off the event loop.
        doc["state"] = await run_in_threadpool(state.status, store.policy)
        doc["history"] = {"persistent": history.directory is not None, "last_error": history.last_error}
        if shadow is not None:
            doc["shadow"] = shadow.status()
        if recorder is not None:
            doc["recording"] = recorder.status()
        return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type=JSON)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    @app.get("/state")
    async def state_endpoint(user: str | None = None, rates: str | None = None) -> Response:
        """Live sessions and proxies per user, and with `?rates=PREFIX` the hits behind rate():
        what `policyd state` and the console's live-state page read."""
        try:
            doc = await run_in_threadpool(state.listing, user, rates)
        except StateUnavailable as e:
            return Response(orjson.dumps({"error": f"state backend unavailable: {e}"}), 503, media_type=JSON)
        return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type=JSON)

    # Plain functions: FastAPI runs them in its thread pool, so reading a history directory
    # never holds up the event loop that answers frps.
    @app.get(VERSIONS_PATH)
    def versions_list() -> Response:
        doc = {"serving": store.policy.version, **versions_document(history)}
        return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type=JSON)

    @app.get(VERSIONS_PATH + "/{version}")
    def version_files(version: str) -> Response:
        try:
            doc = files_document(history.files(version))
        except HistoryError as e:
            return Response(error_body(e.message), 404, media_type=JSON)
        return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type=JSON)

    if feed is not None:
        services = ConsoleServices(
            mode=console,
            store=store,
            options=options,
            feed=feed,
            allows=admin.allows,
            status=lambda: status_document(store, settings, started_at=started_at, now=time.time()),
            tokens=TokenFile(settings.console_token_file) if settings.console_token_file else None,
            hosts=(settings.host,),
            pause=pacer,
            workers=settings.workers,
            # The Live state page follows the serving policy (it says "not in use" while no rule
            # calls a state function); the playground decides with the live state, not recording.
            state=state,
            state_view=dataclasses.replace(binding, recording=False),
            shadow=shadow.status if shadow is not None else None,
            versions_path=VERSIONS_PATH,
        )
        app.mount(CONSOLE_PATH, create_console(services))

    return front
