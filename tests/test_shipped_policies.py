"""Every request fixture (tests/fixtures, copied from shared/fixtures) decided by the shipped policies."""

from __future__ import annotations

import copy

import orjson
import pytest

from policyd.engine import decide
from policyd.policy import Policy, load_policy
from policyd.protocol import encode_answer
from policyd.rules.decision import Op, Outcome
from tests.helpers import ALLOW, REJECT, SHIPPED_ANSWERS
from tests.support import SHIPPED_POLICIES, fixture, fixture_names


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return load_policy(SHIPPED_POLICIES)


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(SHIPPED_ANSWERS) == fixture_names()


@pytest.mark.parametrize("name", sorted(SHIPPED_ANSWERS))
def test_fixture_decision(shipped: Policy, name: str) -> None:
    body = fixture(name)
    original = copy.deepcopy(body["content"])
    decision = decide(shipped, Op(body["op"]), body["content"], reqid="0123456789abcdef")
    assert body["content"] == original, "decide() must not modify the request"
    assert decision.error is None
    kind, expected = SHIPPED_ANSWERS[name]
    assert decision.outcome.value == kind
    if kind == REJECT:
        assert decision.reason == expected
        answer = orjson.loads(encode_answer(decision))
        assert answer == {"reject": True, "reject_reason": expected}
        assert answer["reject"] is True
    elif kind == ALLOW:
        assert encode_answer(decision) == b'{"reject":false,"unchange":true}'
    else:
        assert decision.outcome is Outcome.REWRITE
        content = decision.content
        assert content is not None
        # Every field frps sent is still there, unchanged unless a rule changed it, same types.
        for key, value in original.items():
            if key in expected:
                continue
            assert content[key] == value and type(content[key]) is type(value), key
        for key, value in expected.items():
            assert content[key] == value
        assert set(content) == set(original) | set(expected)


def test_future_fields_survive_a_rewrite(shipped: Policy) -> None:
    body = fixture("NewProxy-future-field")
    decision = decide(shipped, Op.NEW_PROXY, body["content"])
    assert decision.content is not None
    assert decision.content["future_option"] == {"mode": "x", "level": 3}
    assert decision.content["remote_port"] == 6023


def test_warns_are_collected_without_changing_the_outcome(shipped: Policy) -> None:
    decision = decide(shipped, Op.NEW_PROXY, fixture("NewProxy-udp-bandwidth")["content"])
    assert [w.message for w in decision.warnings] == ["proxy alice.dns of team red has no encryption"]
    assert str(decision.warnings[0].rule) == "NewProxy.rules:22:1"
    login = decide(shipped, Op.LOGIN, fixture("Login-reconnect")["content"])
    assert login.outcome is Outcome.ALLOW
    assert [w.message for w in login.warnings] == [
        "login of team blue from [2001:db8::42]:61000 without a token"
    ]


def test_close_proxy_is_always_answered_allow(shipped: Policy) -> None:
    decision = decide(shipped, Op.CLOSE_PROXY, fixture("CloseProxy-basic")["content"])
    assert [w.message for w in decision.warnings] == ["proxy alice.ssh of alice (team red) closed"]
    assert encode_answer(decision) == b'{"reject":false,"unchange":true}'
