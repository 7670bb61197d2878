"""The suite's stand-in for a real frps: every answer policyd gives in a test is decoded as frps would.

Each answer is run through `policyd.frpsdecoder` for every frps version in
`schema.TESTED_VERSIONS` that sends its op; an answer frps would fail, crash on, or read other
content from than the rules made fails the test, with the decoder's report. It is wired in
three places, so no test has to ask for it:

- in-process: `install()` (run by tests/conftest.py before any test module is imported) wraps
  `engine.decide` to remember each decision's request and `protocol.encode_answer` to check each
  encoded answer against it, with the decision's own changes as the only ones allowed. Every
  caller gets the wrapped names: the ASGI app's route, `policyd eval`, tests calling them.
- over HTTP: `checked_client()` / `checked_asgi_client()` (tests/support.py's PolicydProcess
  uses the first) check every 200 answer to a plugin request against the request body.
- the findings of all three are also collected, and tests/conftest.py fails a test that
  produced any, even where the check ran in a thread or inside the app.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx

from policyd import engine, protocol
from policyd.frpsdecoder import FrpsAnswer, decode_answer
from policyd.rules.decision import OPS, Decision, Op
from policyd.rules.schema import TESTED_VERSIONS, op_sent_by

REMEMBERED_DECISIONS = 256  # requests kept for decisions not yet encoded (most are at once)

_lock = threading.Lock()
_failures: list[str] = []
_checked = [0]  # answers checked so far, for the wiring's own tests
_requests: OrderedDict[int, tuple[Decision, dict[str, Any]]] = OrderedDict()


class FrpsWouldRefuse(AssertionError):
    """Raised when an answer fails the oracle: frps would fail, crash or misread it."""


def frps_answers(
    op: Op, request: Mapping[str, Any] | None, body: bytes, *, changes: Collection[str] | None = None
) -> list[FrpsAnswer]:
    """`body` decoded by every tested frps version that sends `op`."""
    return [
        decode_answer(op, body, version=version, request=request, changes=changes)
        for version in TESTED_VERSIONS
        if op_sent_by(op, version)
    ]


def check_answer(
    op: Op,
    request: Mapping[str, Any] | None,
    body: bytes,
    *,
    changes: Collection[str] | None = None,
    where: str = "",
) -> None:
    """Raise FrpsWouldRefuse (and record it) unless every tested frps takes `body` as intended."""
    with _lock:
        _checked[0] += 1
    bad = [answer for answer in frps_answers(op, request, body, changes=changes) if not answer.ok]
    if not bad:
        return
    message = "\n".join(
        [
            f"policyd's answer to {op}{f' ({where})' if where else ''} fails the frps oracle:",
            f"  answer:  {body[:2000]!r}",
            f"  request: {json.dumps(request)[:2000] if request is not None else '(not known)'}",
            *(answer.explain() for answer in bad),
        ]
    )
    with _lock:
        _failures.append(message)
    raise FrpsWouldRefuse(message)


def checked_count() -> int:
    """How many answers the oracle has checked in this session."""
    with _lock:
        return _checked[0]


def take_failures() -> list[str]:
    """The oracle failures recorded since the last call (tests/conftest.py calls it per test)."""
    with _lock:
        failures = list(_failures)
        _failures.clear()
    return failures


# -- in-process: decide() and encode_answer() -------------------------------------------------

_original_decide = engine.decide
_original_encode = protocol.encode_answer


@functools.wraps(_original_decide)
def _remembering_decide(policy: Any, op: Op, content: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    decision = _original_decide(policy, op, content, *args, **kwargs)
    with _lock:
        _requests[id(decision)] = (decision, content)
        while len(_requests) > REMEMBERED_DECISIONS:
            _requests.popitem(last=False)
    return decision


@functools.wraps(_original_encode)
def _checked_encode(decision: Decision) -> bytes:
    body = _original_encode(decision)
    with _lock:
        entry = _requests.get(id(decision))
    request = entry[1] if entry is not None and entry[0] is decision else None
    changes = [change.path for change in decision.changes] if request is not None else None
    check_answer(decision.op, request, body, changes=changes, where="encode_answer")
    return body


def install() -> None:
    """Put the checking decide/encode_answer in place of the real ones, for every importer.

    Modules imported later bind the wrapped names; ones already imported are patched too.
    """
    import sys

    engine.decide = _remembering_decide
    protocol.encode_answer = _checked_encode
    for name, module in list(sys.modules.items()):
        if not (name.startswith("policyd") or name.startswith("tests")) or module is None:
            continue
        if getattr(module, "decide", None) is _original_decide:
            setattr(module, "decide", _remembering_decide)  # noqa: B010 - any module that has it
        if getattr(module, "encode_answer", None) is _original_encode:
            setattr(module, "encode_answer", _checked_encode)  # noqa: B010


# -- over HTTP: httpx clients -----------------------------------------------------------------


def _plugin_request(request: httpx.Request) -> tuple[Op, dict[str, Any]] | None:
    """(op, content) when `request` is a plugin call policyd answers, else None."""
    if request.method != "POST":
        return None
    try:
        doc = json.loads(request.content)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("content"), dict):
        return None
    op = OPS.get(doc.get("op") or request.url.params.get("op") or "")
    return (op, doc["content"]) if op is not None else None


def _check_exchange(response: httpx.Response) -> None:
    if response.status_code != 200:
        return
    plugin = _plugin_request(response.request)
    if plugin is not None:
        op, content = plugin
        check_answer(op, content, response.content, where=f"HTTP {response.request.url.path}")


def _sync_hook(response: httpx.Response) -> None:
    response.read()
    _check_exchange(response)


async def _async_hook(response: httpx.Response) -> None:
    await response.aread()
    _check_exchange(response)


def add_hook(client: httpx.Client) -> httpx.Client:
    """Check every plugin answer `client` receives (e.g. a Starlette TestClient)."""
    client.event_hooks = {**client.event_hooks, "response": [*client.event_hooks["response"], _sync_hook]}
    return client


def checked_client(**options: Any) -> httpx.Client:
    """An httpx.Client that checks every plugin answer it receives."""
    return httpx.Client(event_hooks={"response": [_sync_hook]}, **options)


def checked_asgi_client(app: Callable[..., Any], **transport_options: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient on the ASGI app in-process, checking every plugin answer."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, **transport_options),
        base_url="http://policyd",
        event_hooks={"response": [_async_hook]},
    )
