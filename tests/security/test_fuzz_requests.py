"""Random request bodies never produce a 500: every answer is one of frps's three shapes or a 4xx.

Bodies are built from the ops' own field names with values of every JSON type (wrong types, nulls,
huge numbers, deep nesting, any unicode), plus arbitrary JSON and arbitrary bytes. Volume goes
through the ASGI app in-process; a smaller sample goes through a real `policyd serve`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.rules.decision import Op
from policyd.rules.schema import SCHEMAS, USER, Field, Kind
from tests.security.harness import TestClient, app_client, assert_valid_answer
from tests.support import PolicydProcess, fixture, write_policy

FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Rules that read, compare, render and rewrite every kind of field, so odd values reach all of it.
RULES = {
    "Login.rules": (
        'warn "login {content.user} {content.metas} {content.client_spec} {content.pool_count}"\n'
        'reject "no team" when not content.metas.team\n'
        'reject "bad name" when not regex("^[a-z0-9_.-]*$", content.user)\n'
        "set content.metas.checked = str(content.timestamp > 0)\n"
    ),
    "NewProxy.rules": (
        'warn "{content.proxy_name} {content.remote_port} {content.custom_domains} {user.metas}"\n'
        'reject "port" when content.proxy_type in ("tcp", "udp") and content.remote_port > 7000\n'
        'reject "domain" when any(not glob("*.example.com", d) for d in content.custom_domains)\n'
        'reject "future" when content["future_option"] == 1\n'
        "set content.metas.team = user.metas.team when user.metas.team\n"
        "set content.subdomain = lower(content.subdomain) when content.subdomain\n"
        'set content.headers["X-Proxy"] = content.proxy_name\n'
    ),
    "NewUserConn.rules": 'reject "blocked" when cidr(content.remote_addr, "10.0.0.0/8", "2001:db8::/32")\n',
    "Ping.rules": 'reject "old" when content.timestamp < 0\nreject "{user.user}" when user.metas.ban\n',
    "NewWorkConn.rules": 'reject "run" when len(content.run_id) > 64 or content.run_id.startswith("x")\n',
    "CloseProxy.rules": 'warn "closed {content.proxy_name}"\n',
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "tcp", "udp", "http", "10.1.2.3:5", "[2001:db8::1]:80", "\u202e", "a" * 2000])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def field_values(f: Field) -> st.SearchStrategy[Any]:
    """Mostly the right shape, often not: frps's older versions send null, fuzzers send anything."""
    right: st.SearchStrategy[Any]
    if f.kind is Kind.RECORD:
        right = st.fixed_dictionaries({}, optional={k: field_values(v) for k, v in f.fields.items()})
    elif f.kind is Kind.STR_MAP:
        right = st.dictionaries(st.text(max_size=8), st.text(max_size=12) | json_values, max_size=4)
    elif f.kind is Kind.STR_LIST:
        right = st.lists(st.text(max_size=12) | json_values, max_size=4)
    elif f.kind is Kind.INT:
        right = st.integers(-(2**63), 2**63 - 1)
    elif f.kind is Kind.BOOL:
        right = st.booleans()
    else:
        right = st.text(max_size=30)
    return st.one_of(right, right, json_values)


def plugin_body(op: Op) -> st.SearchStrategy[dict[str, Any]]:
    content = field_values(SCHEMAS[op]).filter(lambda c: isinstance(c, dict))
    if op is not Op.LOGIN:
        content = st.tuples(content, field_values(USER)).map(lambda t: {**t[0], "user": t[1]})
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=3)
    content = st.tuples(content, extra).map(lambda t: {**t[1], **t[0]})
    return st.fixed_dictionaries(
        {"op": st.just(op.value), "content": content},
        optional={"version": st.just("0.1.0") | json_values, "extra": json_values},
    )


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


bodies = (
    st.sampled_from(list(Op)).flatmap(plugin_body).map(lambda b: json.dumps(b).encode())
    | st.sampled_from(list(Op))
    .flatmap(plugin_body)
    .map(lambda b: json.dumps({**b, "content": {**b["content"], "deep": nested(600)}}).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=300)
    | st.sampled_from(
        [
            b'{"op": "Ping", "content": {"timestamp": 1e999}}',
            b'{"op": "Ping", "content": {"timestamp": NaN}}',
            b'{"op": "Ping", "content": {"user": {"user": "\\ud800"}}}',
            b'{"op": "Ping", "content": {}, "op": "Login"}',
            b'{"op": "NewProxy", "content": {"remote_port": 123456789012345678901234567890}}',
            b"\xef\xbb\xbf{}",
            b'{"op": "Login", "content": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        ]
    )
)
query_ops = st.none() | st.sampled_from([op.value for op in Op]) | st.text(max_size=10)


@pytest.fixture(scope="module")
def policies() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield write_policy(Path(tmp), RULES)


@pytest.fixture(scope="module")
def client(policies: Path) -> Iterator[TestClient]:
    with app_client(policies) as c:
        yield c


def op_of(body: bytes, query_op: str | None) -> dict[str, str]:
    if query_op is not None:
        return {"op": query_op, "version": "0.1.0"}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    op = doc.get("op") if isinstance(doc, dict) else None
    return {"op": op, "version": "0.1.0"} if isinstance(op, str) else {}


@FUZZ
@given(body=bodies, query_op=query_ops)
def test_random_bodies_get_a_valid_answer_in_process(
    client: TestClient, body: bytes, query_op: str | None
) -> None:
    response = client.post("/handler", params=op_of(body, query_op), content=body)
    assert_valid_answer(response.status_code, response.content)


@pytest.fixture(scope="module")
def server(policies: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicydProcess]:
    process = PolicydProcess(policies, tmp_path_factory.mktemp("fuzz") / "policyd.log")
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@settings(FUZZ, max_examples=150)
@given(body=bodies, query_op=query_ops)
def test_random_bodies_get_a_valid_answer_from_a_real_server(
    server: PolicydProcess, body: bytes, query_op: str | None
) -> None:
    response = server.client.post("/handler", params=op_of(body, query_op), content=body)
    assert_valid_answer(response.status_code, response.content)


def test_real_server_still_answers_after_the_fuzzing(server: PolicydProcess) -> None:
    assert server.post(fixture("Ping-basic")).json() == {"reject": False, "unchange": True}
    assert "Traceback" not in server.logs()
