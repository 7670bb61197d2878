"""The decision log: one JSON line per decision, secrets masked, sampled or off on request."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policyd.decisionlog import DecisionLog, decision_record, mask
from policyd.engine import decide
from policyd.policy import load_policy
from policyd.schema import Op
from tests.support import PolicydProcess, fixture, write_policy

REQID = "0123456789abcdef"
SECRETS_POLICY = {
    "Login.rules": (
        'warn "key {content.privilege_key} token {content.metas.token}" when content.user == "eve"\n'
        'set content.metas.api_token = "rotated-secret-value" when content.user == "eve"\n'
        'set content.metas.note = "seen" when content.user == "eve"\n'
        'reject "bad token {content.metas.token}" when content.metas.token == "wrong-token-123"\n'
    ),
    "Ping.rules": 'reject "banned" when user.user == "mallory"\n',
}


def test_a_rewrite_logs_who_what_and_the_changes(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    server = policyd_server()
    body = fixture("NewProxy-tcp")
    server.post(body, headers={"X-Frp-Reqid": REQID})
    [line] = server.decision_lines()
    assert line["reqid"] == REQID
    assert (line["op"], line["user"], line["proxy_name"]) == ("NewProxy", "alice", "alice.ssh")
    assert line["run_id"] == body["content"]["user"]["run_id"]
    assert line["outcome"] == "rewrite"
    assert line["changes"] == [{"field": "metas.team", "before": "", "after": "red"}]
    assert line["policy_version"] == server.client.get("/readyz").json()["policy_version"]
    assert isinstance(line["eval_us"], float)
    assert datetime.fromisoformat(line["time"]).tzinfo is not None


def test_a_reject_logs_the_deciding_rule_and_reason(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    server.post(fixture("NewUserConn-tcp"))
    [line] = server.decision_lines()
    assert line["outcome"] == "reject"
    assert line["rule"] == "NewUserConn.rules:2"
    assert line["reason"] == "visitors from 198.51.100.23 are blocked"
    assert line["remote_addr"].startswith("198.51.100.23:")


def test_warns_are_logged_with_their_rule(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    server.post(fixture("Login-reconnect"))
    [line] = server.decision_lines()
    assert line["outcome"] == "allow"
    assert line["client_address"] == "[2001:db8::42]:61000"
    assert line["warnings"] == [
        {"message": "login of team blue from [2001:db8::42]:61000 without a token", "rule": "Login.rules:8"}
    ]


def test_secrets_are_masked(policyd_server: Callable[..., PolicydProcess], tmp_path: Path) -> None:
    server = policyd_server(write_policy(tmp_path / "p", SECRETS_POLICY))
    login = {
        "op": "Login",
        "content": {"user": "eve", "privilege_key": "pk-0123456789", "metas": {"token": "tk-eve-secret"}},
    }
    server.post(login)
    server.post({"op": "Login", "content": {"user": "bob", "metas": {"token": "wrong-token-123"}}})
    text = server.logs()
    for secret in ("pk-0123456789", "tk-eve-secret", "rotated-secret-value", "wrong-token-123"):
        assert secret not in text
    eve, bob = server.decision_lines()
    assert eve["warnings"][0]["message"] == "key *** token ***"
    assert eve["changes"] == [
        {"field": "metas.api_token", "before": "***", "after": "***"},
        {"field": "metas.note", "before": "", "after": "seen"},
    ]
    assert bob["reason"] == "bad token ***"


def test_sampling_drops_plain_allows_but_keeps_rejects(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    server = policyd_server(write_policy(tmp_path / "p", SECRETS_POLICY), "--decision-log-sample", "Ping=0")
    for _ in range(5):
        server.post({"op": "Ping", "content": {"user": {"user": "alice"}}})
    server.post({"op": "Ping", "content": {"user": {"user": "mallory"}}})
    server.post({"op": "NewWorkConn", "content": {"user": {"user": "alice"}}})
    lines = server.decision_lines()
    assert [(d["op"], d["user"], d["outcome"]) for d in lines] == [
        ("Ping", "mallory", "reject"),
        ("NewWorkConn", "alice", "allow"),
    ]


def test_decision_log_to_a_file(policyd_server: Callable[..., PolicydProcess], tmp_path: Path) -> None:
    target = tmp_path / "decisions.jsonl"
    server = policyd_server(env={"POLICYD_DECISION_LOG": str(target)})
    server.post(fixture("Ping-basic"))
    server.post(fixture("NewUserConn-tcp"))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [d["op"] for d in lines] == ["Ping", "NewUserConn"]
    assert server.decision_lines() == []


def test_decision_log_off(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server((Path(__file__).resolve().parent.parent / "policies"), "--decision-log", "off")
    assert server.post(fixture("NewUserConn-tcp")).json()["reject"] is True
    assert server.decision_lines() == []


def test_rule_errors_are_logged_with_code_and_fail_open(tmp_path: Path) -> None:
    policy = load_policy(
        write_policy(tmp_path / "p", {"Ping.rules": 'reject "x" when 1 / len(user.user) > 5\n'})
    )
    from policyd.engine import EvalOptions

    decision = decide(policy, Op.PING, {"user": {"user": ""}}, options=EvalOptions(fail_open_ops={Op.PING}))
    record = decision_record(decision, {"user": {"user": ""}}, REQID, datetime.now(UTC))
    assert record["outcome"] == "error"
    assert record["error"]["code"] == "eval_error"
    assert record["failed_open"] is True
    assert record["rule"] == "Ping.rules:1"


def test_client_text_cannot_forge_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = load_policy(
        write_policy(tmp_path / "p", {"CloseProxy.rules": 'warn "closed {content.proxy_name}"\n'})
    )
    content = {"proxy_name": "x\n2026-11-25 INFO policyd: forged\r"}
    with caplog.at_level("WARNING", logger="policyd"):
        DecisionLog(None).write(decide(policy, Op.CLOSE_PROXY, content), content, REQID)
    [message] = [r.getMessage() for r in caplog.records if "warn" in r.getMessage()]
    assert "\n" not in message and "\r" not in message
    assert message.endswith("closed x\\n2026-11-25 INFO policyd: forged\\r")


def test_write_survives_a_failing_sink(tmp_path: Path) -> None:
    def broken(line: bytes) -> None:
        raise OSError("disk full")

    policy = load_policy(write_policy(tmp_path / "p", {"Ping.rules": "allow\n"}))
    DecisionLog(broken).write(decide(policy, Op.PING, {}), {}, REQID)  # must not raise


def test_mask_walks_nested_maps() -> None:
    value: dict[str, Any] = {"team": "red", "token": "t", "nested": [{"password": "p", "x": 1}]}
    assert mask(value) == {"team": "red", "token": "***", "nested": [{"password": "***", "x": 1}]}
