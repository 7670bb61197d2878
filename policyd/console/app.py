"""The console's routes: five pages of static files and the JSON APIs they (and scripts) call.

The service builds it with what it needs passed in (`ConsoleServices`): the store, the service's
EvalOptions, the admin allowlist, the token file, the feed the plugin route fills, the /status
document, the live state and the state layer's non-recording view of it (what the playground
decides with). The console imports nothing of the service at run time.

Pages (`/ui/`, `/ui/decisions`, `/ui/playground`, `/ui/policy`, `/ui/state`) are plain HTML with
their script in `static/js/`; every figure on them comes from the APIs below, documented in
docs/console.md:

    GET  /ui/api/overview            the serving policy, the last reload (errors with carets), mode,
                                     the shadow policy and its agreement counts, the history's links
    GET  /ui/api/charts              per-second decisions, p50/p99 decision time, reloads: 15 min
    GET  /ui/api/decisions           recent decisions, newest first (?after=SEQ&op=&user=&outcome=&shadow=)
    GET  /ui/api/decisions/{seq}     one decision, with its masked request
    GET  /ui/api/files               the policy's files;  GET /ui/api/file?path=...  one file
    GET  /ui/api/examples            example requests: built in, and the policy's tests/requests
    GET  /ui/api/state               the live state (sessions, proxies, rate counts)
    POST /ui/api/eval                the playground: decide a request, maybe with a rule file edited
    POST /ui/api/whoami              the token's name                           (edit mode, token)
    POST /ui/api/check               what saving a file would do, without saving (edit mode, token)
    POST /ui/api/save                save a file if the policy it makes loads   (edit mode, token)
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from policyd import __version__
from policyd.console.editing import check_edit, diagnostics, save_edit
from policyd.console.errors import ConsoleError
from policyd.console.files import file_kind, list_files, read_file, read_only_reason
from policyd.console.guard import ConsoleGuard
from policyd.console.playground import evaluate, read_playground_request
from policyd.console.rings import OUTCOMES, ConsoleFeed
from policyd.console.tokens import TokenFile
from policyd.engine import EvalOptions, StateBinding
from policyd.errors import PolicydError
from policyd.policy import MAX_POLICY_FILE_BYTES, policy_sources, read_policy_file
from policyd.rules.decision import Op
from policyd.rules.diagnostics import Diagnostic, jsonable

if TYPE_CHECKING:
    from policyd.service.store import PolicyStore

log = logging.getLogger("policyd.console")

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLES = STATIC / "examples"
UPLOT = (
    '\n  <link rel="stylesheet" href="static/vendor/uplot/uPlot.min.css">'
    '\n  <script src="static/vendor/uplot/uPlot.iife.min.js" defer></script>'
)


@dataclass(frozen=True, slots=True)
class Page:
    """One console page: its body (static/pages/NAME.html) in the shared layout, with its script."""

    path: str  # under /ui/
    name: str  # static/pages/NAME.html and static/js/NAME.js
    title: str
    head: str = ""


PAGES = (
    Page("", "overview", "Overview", UPLOT),
    Page("decisions", "decisions", "Decisions"),
    Page("playground", "playground", "Playground"),
    Page("policy", "policy", "Policy"),
    Page("state", "state", "Live state"),
)


def _nav(current: Page) -> str:
    items = []
    for page in PAGES:
        mark = ' aria-current="page"' if page is current else ""
        items.append(f'        <li><a href="{page.path or "./"}"{mark}>{page.title}</a></li>')
    return "\n".join(items)


def render_pages() -> dict[str, bytes]:
    """Every page's HTML, by path: static/layout.html around static/pages/NAME.html, the page
    marked in the navigation. Built once, when the console starts: there is no build step."""
    layout = string.Template((STATIC / "layout.html").read_text(encoding="utf-8"))
    out = {}
    for page in PAGES:
        main = (STATIC / "pages" / f"{page.name}.html").read_text(encoding="utf-8")
        html = layout.substitute(
            title=page.title, head=page.head, script=page.name, nav=_nav(page), main=main
        )
        out[page.path] = html.encode()
    return out


MAX_API_BODY_BYTES = MAX_POLICY_FILE_BYTES + 64 * 1024  # a whole policy file, JSON-escaped, and a little
MAX_DECISION_ROWS = 1000
MAX_STATE_ENTRIES = 500  # users (and rate keys) the state page lists
STATE_TIMEOUT_S = 2.0
DEFAULT_EDIT_OFF = "the console runs in read mode (console = read)"
SHADOW_DISAGREE = "disagree"  # GET /ui/api/decisions?shadow=disagree


class ConsoleMode(enum.StrEnum):
    """The `console` setting."""

    OFF = "off"
    READ = "read"
    EDIT = "edit"


class LiveState(Protocol):
    """What the Live state page reads: the state backend of stateful rules (policyd/state).

    `snapshot(limit)` is called in a worker thread, at most every few seconds while the page is
    open, and must return within STATE_TIMEOUT_S. It returns JSON-ready data, at most `limit`
    users and `limit` rate keys:

        {"backend": "memory", "healthy": true, "detail": "",
         "users": [{"user": "alice",
                    "sessions": [{"run_id": ..., "client_address": ..., "since": ..., "last_seen": ...}],
                    "proxies": [{"name": ..., "type": ..., "remote_port": ..., "subdomain": ...,
                                 "custom_domains": [...], "run_id": ..., "since": ...}]}],
         "rates": [{"key": "login:203.0.113.7", "count": 3, "per_s": 60}],
         "truncated": false}
    """

    def snapshot(self, limit: int) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ConsoleServices:
    """Everything the console takes from the service."""

    mode: ConsoleMode
    store: PolicyStore
    options: EvalOptions
    feed: ConsoleFeed
    allows: Callable[[str | None], bool]  # admin_allow
    status: Callable[[], dict[str, Any]]  # the /status document
    tokens: TokenFile | None = None  # required for edit mode
    # The live state and the view the playground decides with: the same backend, not recording
    # (rate() answers as if it counted; nothing is counted, registered or forgotten).
    state: LiveState | None = None
    state_view: StateBinding | None = None
    shadow: Callable[[], dict[str, Any]] | None = None  # the shadow policy's /status, when one runs
    versions_path: str | None = None  # GET {versions_path}/{version}: a version's files (the history)
    hosts: tuple[str, ...] = ()  # names besides IP addresses and localhost the console answers to
    pause: Callable[[], Callable[[], None]] | None = None  # makes a pacer for loading candidates
    workers: int = 1


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = orjson.dumps(doc, default=jsonable, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
    return Response(body, status, headers=headers, media_type="application/json")


def _error(message: str, status: int, code: str, **extra: Any) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="policyd console"'} if status == 401 else None
    return _json({"error": message, "code": code, **extra}, status, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, as JSON errors like every other console error."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code, code)


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _body(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_API_BODY_BYTES:
        raise _Refused(_error(f"body exceeds the limit of {MAX_API_BODY_BYTES} bytes", 413, "too_large"))
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_API_BODY_BYTES:
            raise _Refused(_error(f"body exceeds the limit of {MAX_API_BODY_BYTES} bytes", 413, "too_large"))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise _Refused(_error(f"body is not valid JSON: {e}", 400, "bad_json")) from None


Endpoint = Callable[[Request], Awaitable[Response]]


def _refusals(endpoint: Endpoint) -> Endpoint:
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _Refused as e:
            return e.response
        except ConsoleError as e:
            return _error(e.message, e.status, e.kind)

    return run


class Console:
    """The console's state and handlers; `asgi()` is what the service mounts at /ui."""

    def __init__(self, services: ConsoleServices) -> None:
        if services.mode is ConsoleMode.EDIT and services.tokens is None:
            raise ValueError("console edit mode needs a token file")
        self.s = services
        self.directory = services.store.directory
        # One candidate policy is loaded at a time: the playground and saves share the CPU with
        # frps's requests, so a burst of them queues instead of piling up.
        self._candidates = asyncio.Lock()
        self._pages = render_pages()

    # -- who may edit ----------------------------------------------------------------------------
    def edit_off_reason(self) -> str:
        """Why editing is off ("" when it is on): the mode, or a read-only policy directory."""
        if self.s.mode is not ConsoleMode.EDIT:
            return DEFAULT_EDIT_OFF
        return read_only_reason(self.directory)

    def _editor(self, request: Request) -> str:
        """The token's name for an edit call; raises _Refused (403 edit off, 401 no/bad token)."""
        reason = self.edit_off_reason()
        if reason:
            raise _Refused(_error(f"editing is off: {reason}", 403, "edit_off"))
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _Refused(
                _error("this call needs the edit token: Authorization: Bearer <token>", 401, "no_token")
            )
        assert self.s.tokens is not None
        who = self.s.tokens.who(presented.strip())
        if who is None:
            client = request.client.host if request.client else "?"
            log.warning("console: a wrong edit token from %s", client)  # the token itself never
            raise _Refused(_error("the edit token is not valid", 401, "bad_token"))
        return who

    def _pause(self) -> Callable[[], None] | None:
        return self.s.pause() if self.s.pause is not None else None

    def state_in_use(self) -> bool:
        """Whether the serving policy keeps state: read on every call, so a reload that starts or
        stops calling a state function shows at once."""
        return self.s.state is not None and bool(self.s.store.policy.state_functions)

    # -- pages ------------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        name = request.path_params.get("page", "")
        html = self._pages.get(name)
        if html is None:
            return _error(f"no console page {name!r}", 404, "not_found")
        return Response(html, media_type="text/html; charset=utf-8")

    # -- read APIs --------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        store = self.s.store
        status = self.s.status()
        last = store.stats.last
        last_reload = None
        if last is not None:
            sources = policy_sources(self.directory)
            last_reload = {
                **(status["reloads"]["last_attempt"] or {}),
                "errors": diagnostics(map(Diagnostic.of, last.errors), sources),
            }
        reason = self.edit_off_reason()
        return _json(
            {
                "policyd_version": __version__,
                "mode": self.s.mode.value,
                "edit": {"enabled": not reason, "reason": reason},
                "policy": status["policy"],
                "reloads": {**status["reloads"], "last_attempt": last_reload},
                "started_at": status["started_at"],
                "uptime_s": status["uptime_s"],
                "worker": {"pid": os.getpid(), "workers": self.s.workers},
                "state": self.state_in_use(),
                "shadow": self.s.shadow() if self.s.shadow is not None else None,
                "history": self._history(status["policy"]["version"]),
            }
        )

    def _history(self, version: str) -> dict[str, str] | None:
        """Where the version history serves a version's files (the serving one is always kept)."""
        path = self.s.versions_path
        if path is None:
            return None
        return {"versions": path, "serving": f"{path}/{version}"}

    async def charts(self, request: Request) -> Response:
        return _json(self.s.feed.charts())

    async def decisions(self, request: Request) -> Response:
        query = request.query_params
        try:
            after = int(query.get("after", "0") or 0)
            limit = min(int(query.get("limit", "200") or 200), MAX_DECISION_ROWS)
        except ValueError:
            return _error("'after' and 'limit' are integers", 400, "bad_query")
        op, outcome = query.get("op", ""), query.get("outcome", "")
        if op and op not in {o.value for o in Op}:
            return _error(f"unknown op {op!r}", 400, "bad_query")
        if outcome and outcome not in OUTCOMES:
            return _error(f"outcome is one of {', '.join(OUTCOMES)}", 400, "bad_query")
        shadow = query.get("shadow", "")
        if shadow not in ("", SHADOW_DISAGREE):
            return _error(
                f"shadow is {SHADOW_DISAGREE!r} (the rows the shadow decided otherwise)", 400, "bad_query"
            )
        rows, last = self.s.feed.decisions(
            after=after,
            limit=limit,
            op=op,
            outcome=outcome,
            user=query.get("user", ""),
            disagree=shadow == SHADOW_DISAGREE,
        )
        doc = {"decisions": rows, "last": last, "kept": self.s.feed.kept, "shadow": self.s.shadow is not None}
        return _json(doc)

    async def decision(self, request: Request) -> Response:
        seq = request.path_params["seq"]
        row = self.s.feed.row(seq)
        if row is None:
            return _error(
                f"decision {seq} is no longer kept (only the last {self.s.feed.kept} are)", 404, "gone"
            )
        return _json(row)

    async def files(self, request: Request) -> Response:
        policy = self.s.store.policy
        rules = {f.path: f.rule_count for f in policy.rules.values()}
        listed = [{**f.to_dict(), "rules": rules.get(f.path)} for f in list_files(self.directory)]
        missing = [f"{op.value}.rules" for op in Op if f"{op.value}.rules" not in {f["path"] for f in listed}]
        return _json({"directory": str(self.directory), "files": listed, "missing_rule_files": missing})

    async def file(self, request: Request) -> Response:
        rel = request.query_params.get("path", "")
        kind = file_kind(rel)
        text, digest = read_file(self.directory, rel)
        return _json({"path": rel, "kind": kind.value, "text": text, "sha256": digest})

    async def examples(self, request: Request) -> Response:
        found: list[dict[str, Any]] = []
        sources = [("policyd", EXAMPLES), ("policy", self.directory / "tests" / "requests")]
        for origin, folder in sources:
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    doc = json.loads(read_policy_file(path, path.name, folder))
                except (PolicydError, ValueError):
                    continue
                if (
                    isinstance(doc, dict)
                    and isinstance(doc.get("content"), dict)
                    and doc.get("op") in set(Op)
                ):
                    found.append(
                        {"name": path.stem, "from": origin, "op": doc["op"], "content": doc["content"]}
                    )
        return _json({"examples": found})

    async def state(self, request: Request) -> Response:
        live = self.s.state
        if live is None or not self.state_in_use():
            return _json({"in_use": False, "reason": "stateful rules are not in use"})
        try:
            reading = asyncio.to_thread(live.snapshot, MAX_STATE_ENTRIES)
            snapshot = await asyncio.wait_for(reading, STATE_TIMEOUT_S)
        except TimeoutError:
            return _error(
                f"the state backend did not answer within {STATE_TIMEOUT_S} s", 503, "state_timeout"
            )
        except Exception as e:
            log.exception("console: reading the live state failed")
            return _error(f"the state backend failed: {type(e).__name__}: {e}", 503, "state_error")
        return _json({"in_use": True, **snapshot})

    # -- POST APIs --------------------------------------------------------------------------------
    async def eval(self, request: Request) -> Response:
        playground = read_playground_request(await _body(request))
        serving = self.s.store.policy
        async with self._candidates:
            result = await asyncio.to_thread(
                evaluate,
                playground,
                root=self.directory,
                serving=serving,
                options=self.s.options,
                state=self.s.state_view,
                pause=self._pause(),
            )
        return _json(result)

    async def whoami(self, request: Request) -> Response:
        return _json({"name": self._editor(request)})

    def _edit_request(self, doc: Any) -> tuple[str, str]:
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("path"), str)
            or not isinstance(doc.get("text"), str)
        ):
            raise _Refused(_error("expected a JSON object {path, text, ...}", 400, "bad_request"))
        file_kind(doc["path"])
        return doc["path"], doc["text"]

    async def check(self, request: Request) -> Response:
        self._editor(request)
        rel, text = self._edit_request(await _body(request))
        serving = self.s.store.policy
        async with self._candidates:
            report = await asyncio.to_thread(
                check_edit, self.directory, rel, text, serving, pause=self._pause()
            )
        return _json(report.to_dict())

    async def save(self, request: Request) -> Response:
        who = self._editor(request)
        doc = await _body(request)
        rel, text = self._edit_request(doc)
        base = doc.get("base_sha256")
        if base is not None and not isinstance(base, str):
            return _error(
                "'base_sha256' is the opened file's sha256, or null for a new file", 400, "bad_request"
            )
        allow_failing = doc.get("allow_failing_tests", False) is True
        serving = self.s.store.policy
        async with self._candidates:
            try:
                report = await asyncio.to_thread(
                    save_edit,
                    self.directory,
                    rel,
                    text,
                    base_sha256=base,
                    serving=serving,
                    who=who,
                    allow_failing_tests=allow_failing,
                    pause=self._pause(),
                )
            except ConsoleError as e:
                log.warning("console save by %s refused: %s", who, e.message)
                return _error(e.message, e.status, e.kind, report=e.report)
        return _json(report.to_dict())

    # -- the app ----------------------------------------------------------------------------------
    def asgi(self) -> ASGIApp:
        routes = [
            Route("/", self.page),
            Route("/{page:str}", self.page),
            Route("/api/overview", _refusals(self.overview)),
            Route("/api/charts", _refusals(self.charts)),
            Route("/api/decisions", _refusals(self.decisions)),
            Route("/api/decisions/{seq:int}", _refusals(self.decision)),
            Route("/api/files", _refusals(self.files)),
            Route("/api/file", _refusals(self.file)),
            Route("/api/examples", _refusals(self.examples)),
            Route("/api/state", _refusals(self.state)),
            Route("/api/eval", _refusals(self.eval), methods=["POST"]),
            Route("/api/whoami", _refusals(self.whoami), methods=["POST"]),
            Route("/api/check", _refusals(self.check), methods=["POST"]),
            Route("/api/save", _refusals(self.save), methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
        return ConsoleGuard(app, allows=self.s.allows, hosts=self.s.hosts)


def create_console(services: ConsoleServices) -> ASGIApp:
    """The console's ASGI app, for the service to mount at /ui."""
    return Console(services).asgi()
