"""The wire format: request parsing and the three answer shapes."""

from __future__ import annotations

import orjson
import pytest

from policyd.protocol import BadRequest, encode_answer, parse_request
from policyd.rules.decision import Decision, Op, Outcome
from tests.support import fixture, fixture_names


@pytest.mark.parametrize("name", fixture_names())
def test_every_fixture_parses(name: str) -> None:
    body = fixture(name)
    request = parse_request(orjson.dumps(body), body["op"])
    assert request.op.value == body["op"]
    assert request.content == body["content"]


@pytest.mark.parametrize(
    ("body", "query_op", "message"),
    [
        (b"", None, "empty body"),
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object, not list"),
        (b'{"content": {}}', None, "missing 'op'"),
        (b'{"op": "Nope", "content": {}}', None, "unknown op 'Nope'"),
        (b'{"op": 5, "content": {}}', None, "missing 'op'"),
        (b'{"op": "Login"}', None, "'content' must be a JSON object; it is missing"),
        (b'{"op": "Login", "content": "x"}', None, "it is a str"),
        (b'{"op": "Login", "content": [1]}', None, "it is a list"),
        (b'{"op": "Login", "content": {}, "version": 1}', None, "'version' must be a string"),
        (b'{"op": "Login", "content": {}}', "Ping", "op mismatch"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body: bytes, query_op: str | None, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(body, query_op)
    assert message in info.value.message
    assert info.value.status == 400


def test_op_from_query_when_body_has_none() -> None:
    assert parse_request(b'{"content": {}}', "Ping").op is Op.PING


def test_answers_use_json_booleans() -> None:
    reject = orjson.loads(encode_answer(Decision(Outcome.REJECT, Op.LOGIN, "v", reason="no")))
    assert reject == {"reject": True, "reject_reason": "no"} and reject["reject"] is True
    allow = orjson.loads(encode_answer(Decision(Outcome.ALLOW, Op.LOGIN, "v")))
    assert allow == {"reject": False, "unchange": True}
    assert allow["reject"] is False and allow["unchange"] is True
    rewrite = orjson.loads(encode_answer(Decision(Outcome.REWRITE, Op.LOGIN, "v", content={"user": "x"})))
    assert rewrite == {"reject": False, "unchange": False, "content": {"user": "x"}}
    assert rewrite["unchange"] is False


def test_close_proxy_answer_is_always_allow() -> None:
    body = encode_answer(Decision(Outcome.REJECT, Op.CLOSE_PROXY, "v", reason="no"))
    assert orjson.loads(body) == {"reject": False, "unchange": True}
