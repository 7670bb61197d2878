"""The service through real HTTP: `policyd serve` in a subprocess on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import SHIPPED_ANSWERS
from tests.support import SHIPPED_POLICIES, PolicydProcess, fixture, free_port, write_policy

Start = Callable[..., PolicydProcess]


def test_shipped_policy_answers_every_fixture_over_http(policyd_server: Start) -> None:
    server = policyd_server()
    for name, (kind, expected) in SHIPPED_ANSWERS.items():
        body = fixture(name)
        response = server.post(body, headers={"X-Frp-Reqid": "00112233aabbccdd"})
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "application/json"
        answer = response.json()
        if kind == "reject":
            assert answer == {"reject": True, "reject_reason": expected}, name
        elif kind == "allow":
            assert answer == {"reject": False, "unchange": True}, name
        else:
            assert answer["reject"] is False and answer["unchange"] is False, name
            assert answer["content"] == {**body["content"], **expected}, name


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"[]", 400, "must be a JSON object"),
        (b'{"op": "Login", "content": 3}', 400, "'content' must be a JSON object"),
        (b'{"op": "Bogus", "content": {}}', 400, "unknown op 'Bogus'"),
        (b"", 400, "empty body"),
    ],
)
def test_malformed_request_gets_4xx_json_and_server_keeps_serving(
    policyd_server: Start, body: bytes, status: int, message: str
) -> None:
    server = policyd_server()
    response = server.client.post("/handler", content=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    good = server.post(fixture("Login-basic"))
    assert good.json() == {"reject": False, "unchange": True}


def test_body_over_the_limit_is_413(policyd_server: Start) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--max-body-bytes", "1000")
    big = {"op": "Login", "content": {"user": "x" * 2000}}
    response = server.post(big)
    assert response.status_code == 413
    assert "exceeds the limit of 1000 bytes" in response.json()["error"]
    assert server.post(fixture("Login-basic")).status_code == 200


def test_rule_error_fails_closed_over_http_and_is_logged(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x" when content.timestamp / 0'})
    server = policyd_server(policies)
    assert server.post(fixture("Ping-basic")).json() == {"reject": True, "reject_reason": "policy error"}
    server.wait_for_log("Ping.rules:1:1")


def test_fail_open_op_allows_on_rule_error(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x" when content.timestamp / 0'})
    server = policyd_server(policies, "--fail-open-ops", "Ping")
    assert server.post(fixture("Ping-basic")).json() == {"reject": False, "unchange": True}
    server.wait_for_log("failed OPEN")


def test_op_without_rule_file_is_allowed_unchanged(policyd_server: Start, tmp_path: Path) -> None:
    server = policyd_server(write_policy(tmp_path / "p", {"Login.rules": 'reject "no"'}))
    assert server.post(fixture("NewProxy-tcp")).json() == {"reject": False, "unchange": True}
    assert server.post(fixture("Login-basic")).json() == {"reject": True, "reject_reason": "no"}


def test_handler_path_is_configurable(policyd_server: Start) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--handler-path", "/frp")
    assert server.client.post("/frp", json=fixture("Login-basic")).json() == {
        "reject": False,
        "unchange": True,
    }
    assert server.client.post("/handler", json=fixture("Login-basic")).status_code in (404, 405)


def test_broken_policy_at_startup_is_a_startup_error(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": 'reject "x" when content.remote_prot'})
    result = subprocess.run(
        [sys.executable, "-m", "policyd", "serve", "--policies", str(policies), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "NewProxy.rules:1:25: error: 'content' has no field 'remote_prot'" in result.stderr
    assert "did you mean 'remote_port'?" in result.stderr
    # The same rendering as `policyd check`: the source line, a caret under the bad spot.
    assert '    reject "x" when content.remote_prot\n' + " " * 28 + "^" in result.stderr


def test_binds_loopback_by_default(policyd_server: Start) -> None:
    server = policyd_server()
    server.wait_for_log("on http://127.0.0.1:")
