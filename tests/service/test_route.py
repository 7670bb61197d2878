"""The plugin route and the edge in front of every path, driven in-process through ASGI."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.service.app import _query_op, create_app
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore
from tests.helpers import metric
from tests.oracle import checked_asgi_client
from tests.support import SHIPPED_POLICIES, fixture, write_policy

Call = tuple[str, str, dict[str, Any]]


def serve(calls: list[Call], policies: Path = SHIPPED_POLICIES, **settings: Any) -> list[httpx.Response]:
    """Send (method, path, httpx options) one after the other; the app runs no lifespan."""
    app = create_app(Settings(decision_log="off", **settings), PolicyStore(policies), watch=False)

    async def run() -> list[httpx.Response]:
        async with checked_asgi_client(app, raise_app_exceptions=False) as client:
            return [await client.request(method, path, **options) for method, path, options in calls]

    return asyncio.run(run())


def plugin(name: str) -> Call:
    body = fixture(name)
    return ("POST", f"/handler?version=0.1.0&op={body['op']}", {"json": body})


SCRAPE: Call = ("GET", "/metrics", {})


def test_an_answer_names_the_policy_that_gave_it() -> None:
    [answer] = serve([plugin("NewUserConn-tcp")])
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-policyd-version"] == PolicyStore(SHIPPED_POLICIES).policy.version
    assert answer.json() == {"reject": True, "reject_reason": "visitors from 198.51.100.23 are blocked"}


def test_the_handler_answers_post_only() -> None:
    [answer] = serve([("GET", "/handler", {})])
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json() == {"error": "/handler answers POST only"}


def test_an_op_in_the_query_and_another_in_the_body_is_400() -> None:
    body = fixture("Ping-basic")
    [answer] = serve([("POST", "/handler?op=Login", {"json": body})])
    assert answer.status_code == 400
    assert answer.json() == {"error": "op mismatch: body says 'Ping', query says 'Login'"}


def test_a_body_streamed_past_the_limit_is_413() -> None:
    # No content-length to refuse it up front: the limit holds while the chunks arrive.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"op": "Ping", "content": {"user": "'
        yield b"x" * 2000
        yield b'"}}'

    [answer] = serve([("POST", "/handler", {"content": chunks()})], max_body_bytes=1000)
    assert answer.status_code == 413
    assert answer.json() == {"error": "body exceeds the limit of 1000 bytes"}


def test_every_answer_is_counted_by_path_and_status() -> None:
    *_, scrape = serve(
        [plugin("Ping-basic"), ("GET", "/handler", {}), ("GET", "/healthz", {}), ("GET", "/x", {}), SCRAPE]
    )
    text = scrape.text
    assert metric(text, "policyd_http_requests_total", path="/handler", code="200") == 1
    assert metric(text, "policyd_http_requests_total", path="/handler", code="405") == 1
    assert metric(text, "policyd_http_requests_total", path="/healthz", code="200") == 1
    assert metric(text, "policyd_http_requests_total", path="other", code="404") == 1
    assert metric(text, "policyd_http_request_duration_seconds_count", path="/handler") == 2
    assert metric(text, "policyd_http_requests_in_flight") == 1  # the scrape itself


def test_refused_peers_get_403_and_are_counted() -> None:
    off_list = (ipaddress.ip_network("10.0.0.0/8"),)
    refused, scrape = serve([plugin("Ping-basic"), SCRAPE], handler_allow=off_list)
    assert refused.status_code == 403
    assert refused.json() == {"error": "client 127.0.0.1 may not call /handler"}
    assert metric(scrape.text, "policyd_http_requests_total", path="/handler", code="403") == 1
    assert metric(scrape.text, "policyd_decisions_total", op="Ping", outcome="allow") == 0


def test_admin_paths_refuse_peers_off_their_allowlist() -> None:
    [refused] = serve([SCRAPE], admin_allow=(ipaddress.ip_network("10.0.0.0/8"),))
    assert (refused.status_code, refused.json()) == (403, {"error": "client 127.0.0.1 may not call /metrics"})


def test_a_failure_inside_the_route_is_counted_as_500(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr("policyd.service.app.encode_answer", broken)
    failed, scrape = serve([plugin("Ping-basic"), SCRAPE])
    assert failed.status_code == 500
    assert metric(scrape.text, "policyd_http_requests_total", path="/handler", code="500") == 1
    assert metric(scrape.text, "policyd_http_requests_in_flight") == 1


def test_a_client_gone_before_its_body_arrived_gets_no_answer() -> None:
    app = create_app(Settings(decision_log="off"), PolicyStore(SHIPPED_POLICIES), watch=False)
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/handler",
        "query_string": b"op=Ping",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent == []


def test_the_reqid_header_reaches_the_rules(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "reqid {reqid}"\n'})
    call = ("POST", "/handler?op=Ping", {"json": fixture("Ping-basic"), "headers": {"X-Frp-Reqid": "ab12"}})
    [answer] = serve([call], policies)
    assert answer.json() == {"reject": True, "reject_reason": "reqid ab12"}


QUERY_PARTS = st.sampled_from(
    ["op=NewProxy", "op=Ping", "version=0.1.0", "op=", "op", "op=a%42", "op=a+b", "x=1"]
)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.lists(QUERY_PARTS, max_size=4), st.sampled_from(["&", ";", "&&"]))
def test_query_op_reads_as_starlette_does(parts: list[str], sep: str) -> None:
    query = sep.join(parts)
    expected = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "op":
            expected = value
    assert _query_op(query.encode()) == expected
