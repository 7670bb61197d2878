"""The frps oracle is wired into every path a test gets an answer by (tests/oracle.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
import pytest
from starlette.types import Receive, Scope, Send

import policyd.service.app
import policyd.tools.eval
import policyd.tools.test
from policyd import protocol
from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Op
from tests import oracle
from tests.support import SHIPPED_POLICIES, PolicydProcess, fixture


def test_the_service_and_the_tools_call_the_checking_functions() -> None:
    for module in (policyd.service.app, policyd.tools.eval, protocol):
        assert module.encode_answer is oracle._checked_encode, module.__name__
    for module in (policyd.service.app, policyd.tools.eval, policyd.tools.test):
        assert module.decide is oracle._remembering_decide, module.__name__


def test_an_encoded_rewrite_that_drops_a_field_fails() -> None:
    body = fixture("NewProxy-tcp")
    decision = decide(load_policy(SHIPPED_POLICIES), Op.NEW_PROXY, body["content"])
    assert decision.content is not None
    protocol.encode_answer(decision)  # as decided: passes
    del decision.content["proxy_name"]
    with pytest.raises(oracle.FrpsWouldRefuse, match=r"content\.proxy_name \[dropped_field\]"):
        protocol.encode_answer(decision)
    assert len(oracle.take_failures()) == 1


def test_an_encoded_change_no_rule_made_fails() -> None:
    body = fixture("NewProxy-tcp")
    decision = decide(load_policy(SHIPPED_POLICIES), Op.NEW_PROXY, body["content"])
    assert decision.content is not None
    decision.content["remote_port"] = 6999
    with pytest.raises(oracle.FrpsWouldRefuse, match=r"content\.remote_port \[undeclared_change\]"):
        protocol.encode_answer(decision)
    oracle.take_failures()


def bad_answer_app(answer: bytes) -> Callable[[Scope, Receive, Send], object]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


def test_an_asgi_answer_frps_would_fail_on_fails() -> None:
    async def post() -> httpx.Response:
        async with oracle.checked_asgi_client(
            bad_answer_app(b'{"reject":"false","unchange":true}')
        ) as client:
            return await client.post("/handler?op=Ping", json=fixture("Ping-basic"))

    with pytest.raises(oracle.FrpsWouldRefuse, match=r"reject \[type_mismatch\]: cannot unmarshal string"):
        asyncio.run(post())
    oracle.take_failures()


def test_an_answer_checked_in_a_thread_is_still_recorded_for_the_test() -> None:
    errors: list[BaseException] = []

    async def send() -> None:
        async with oracle.checked_asgi_client(bad_answer_app(b"{}")) as client:
            await client.post("/h", json=fixture("Ping-basic"))

    def post() -> None:
        try:
            asyncio.run(send())
        except oracle.FrpsWouldRefuse as e:
            errors.append(e)

    thread = threading.Thread(target=post)
    thread.start()
    thread.join()
    assert errors
    [failure] = oracle.take_failures()
    assert "reject [flag_missing]" in failure and "unchange [flag_missing]" in failure


def test_answers_of_a_policyd_subprocess_are_checked(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server(SHIPPED_POLICIES)
    before = oracle.checked_count()
    assert server.post(fixture("NewProxy-tcp")).json()["unchange"] is False
    server.client.post("/handler", json=fixture("Ping-basic"))
    assert oracle.checked_count() == before + 2
    server.post(b"not json", op="Ping")  # a 400: nothing to check
    server.client.get("/healthz")
    assert oracle.checked_count() == before + 2
