"""Answers JSON cannot carry fail closed with a 200, never a 500 frps cannot explain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policyd.rules.decision import Op
from tests.security.harness import app_client
from tests.support import write_policy

POLICY_ERROR = {"reject": True, "reject_reason": "policy error"}
DEEP = json.loads("[" * 300 + "]" * 300)  # orjson reads 1,024 levels but writes only 255


def post(policies: Path, op: str, content: dict[str, Any], **settings: Any) -> tuple[int, Any]:
    with app_client(policies, **settings) as client:
        response = client.post(
            "/handler", params={"op": op}, json={"version": "0.1.0", "op": op, "content": content}
        )
        return response.status_code, response.json()


@pytest.mark.parametrize(
    ("rules", "content"),
    [
        ('reject "\\ud800"', {}),  # a lone surrogate is not UTF-8
        ("reject \"{'\\udfff' * 3}\"", {}),
        ("set content.remote_port = 2**70", {"proxy_type": "tcp"}),  # past 64 bits
        ('set content.subdomain = "x"', {"future_field": DEEP}),  # rewrite carries it back
    ],
    ids=["surrogate-reason", "surrogate-template", "int-over-64-bits", "deep-unknown-field"],
)
def test_unencodable_answer_fails_closed(tmp_path: Path, rules: str, content: dict[str, Any]) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": rules})
    assert post(policies, "NewProxy", content) == (200, POLICY_ERROR)


def test_unencodable_answer_of_a_fail_open_op_allows(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "\\ud800"'})
    status, answer = post(policies, "Ping", {}, fail_open_ops=frozenset({Op.PING}))
    assert (status, answer) == (200, {"reject": False, "unchange": True})


def test_deep_content_without_a_rewrite_is_answered_normally(tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "p", {"NewProxy.rules": 'reject "no" when content["future_field"] == 1'}
    )
    assert post(policies, "NewProxy", {"future_field": DEEP}) == (200, {"reject": False, "unchange": True})


def test_unencodable_answer_is_counted_and_logged_as_the_error_frps_got(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": 'reject "\\ud800"'})
    with app_client(policies, decision_log="stdout") as client:
        response = client.post("/handler", json={"version": "0.1.0", "op": "NewProxy", "content": {}})
        assert response.json() == POLICY_ERROR
        metrics = client.get("/metrics").text
    assert 'policyd_decisions_total{op="NewProxy",outcome="error"} 1.0' in metrics
    assert 'outcome="reject"} 1.0' not in metrics
    [line] = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    assert line["outcome"] == "error" and line["reason"] == "policy error"
    assert "cannot be encoded as JSON" in line["error"]["message"]
    assert line["rule"] == "NewProxy.rules:1"
