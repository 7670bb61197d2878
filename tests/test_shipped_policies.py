"""Every request fixture (tests/fixtures, copied from shared/fixtures) decided by the shipped policies."""

from __future__ import annotations

import copy
import re
import tomllib
from typing import Any

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
    assert str(decision.warnings[0].rule) == "NewProxy.rules:26:1"


# Every op the shipped policy decides on who the client is, with alice's fixture.
IDENTITY_FIXTURES = ["Login-basic", "NewProxy-tcp", "Ping-basic", "NewWorkConn-basic"]


def _as(body: dict[str, Any], user: str, token: str | None = None) -> dict[str, Any]:
    """The fixture's content with the client's user name (and token) replaced."""
    content = copy.deepcopy(body["content"])
    record = content if body["op"] == "Login" else content["user"]
    record["user"] = user
    if token is not None:
        record["metas"]["token"] = token
    return content


@pytest.mark.parametrize("name", IDENTITY_FIXTURES)
def test_no_identity_comes_from_a_name_the_client_chooses(shipped: Policy, name: str) -> None:
    """issue 12 §7: `user = "root"` without root's token gained the admin's rights; a banned
    user got past the ban by changing name. Each name now needs its own token."""
    body = fixture(name)
    op = Op(body["op"])
    for user, token in [("root", None), ("root", "tk-alice"), ("bob", None), ("alice2", None)]:
        decision = decide(shipped, op, _as(body, user, token))
        assert (decision.outcome, decision.reason) == (Outcome.REJECT, "unknown user or bad token"), user
    assert decide(shipped, op, _as(body, "root", "tk-root")).outcome is not Outcome.REJECT


def test_the_shipped_data_holds_token_hashes_only() -> None:
    users = tomllib.loads((SHIPPED_POLICIES / "data" / "users.toml").read_text())
    for name, account in users.items():
        assert set(account) <= {"team", "token_sha256", "admin"}, name
        assert re.fullmatch(r"[0-9a-f]{64}", account["token_sha256"]), name
    shipped = load_policy(SHIPPED_POLICIES)
    assert "tk-alice" not in repr(shipped.data), "a data file holds a plaintext token"


def test_close_proxy_is_always_answered_allow(shipped: Policy) -> None:
    decision = decide(shipped, Op.CLOSE_PROXY, fixture("CloseProxy-basic")["content"])
    assert [w.message for w in decision.warnings] == ["proxy alice.ssh of alice (team red) closed"]
    assert encode_answer(decision) == b'{"reject":false,"unchange":true}'
