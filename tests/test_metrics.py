"""/metrics through real HTTP: decisions, rule and warn hits, latencies, fail-open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import PolicydProcess, fixture, write_policy
from tests.test_status import metric

POLICY = {
    "Ping.rules": (
        'warn "odd ping from {user.user}" when user.user.startswith("odd")\n'
        'reject "banned" when user.user == "mallory"\n'
        'reject "boom" when 1 / len(user.metas.team) > 5\n'
    ),
}


def ping(user: str, team: str = "red") -> dict[str, object]:
    return {"op": "Ping", "content": {"user": {"user": user, "metas": {"team": team}}}}


def test_decisions_are_counted_by_op_and_outcome(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    for name in ("NewProxy-tcp", "NewProxy-stcp", "NewProxy-http", "Ping-basic"):
        server.post(fixture(name))
    text = server.client.get("/metrics").text
    assert metric(text, "policyd_decisions_total", op="NewProxy", outcome="reject") == 2
    assert metric(text, "policyd_decisions_total", op="NewProxy", outcome="rewrite") == 1
    assert metric(text, "policyd_decisions_total", op="Ping", outcome="allow") == 1
    assert metric(text, "policyd_decisions_total", op="Login", outcome="allow") == 0
    assert metric(text, "policyd_eval_duration_microseconds_count", op="NewProxy") == 3


def test_rule_and_warn_hits_by_file_and_line(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    server = policyd_server(write_policy(tmp_path / "p", POLICY))
    server.post(ping("mallory"))
    server.post(ping("mallory"))
    server.post(ping("oddity"))
    text = server.client.get("/metrics").text
    assert metric(text, "policyd_rule_hits_total", rule="Ping.rules:2") == 2
    assert metric(text, "policyd_warn_hits_total", rule="Ping.rules:1") == 1


def test_rule_errors_count_as_error_and_fail_open(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    server = policyd_server(write_policy(tmp_path / "p", POLICY), "--fail-open-ops", "Ping")
    assert server.post(ping("alice", team="")).json() == {"reject": False, "unchange": True}
    text = server.client.get("/metrics").text
    assert metric(text, "policyd_decisions_total", op="Ping", outcome="error") == 1
    assert metric(text, "policyd_fail_open_total", op="Ping") == 1
    assert metric(text, "policyd_rule_hits_total", rule="Ping.rules:3") == 1


def test_http_requests_by_path_and_status(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    server.post(fixture("Ping-basic"))
    server.post(b"not json", op="Ping")
    server.client.get("/nowhere/a")
    server.client.get("/nowhere/b")
    text = server.client.get("/metrics").text
    assert metric(text, "policyd_http_requests_total", path="/handler", code="200") == 1
    assert metric(text, "policyd_http_requests_total", path="/handler", code="400") == 1
    assert metric(text, "policyd_http_requests_total", path="other", code="404") == 2
    assert metric(text, "policyd_http_request_duration_seconds_count", path="/handler") == 2


def test_policy_info_and_process_metrics(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    version = server.client.get("/readyz").json()["policy_version"]
    text = server.client.get("/metrics").text
    assert metric(text, "policyd_policy_info", version=version) == 1
    assert metric(text, "policyd_last_reload_success_timestamp_seconds") > 0
    assert metric(text, "process_start_time_seconds") > 0
    names = {f.name for f in text_string_to_metric_families(text)}
    assert not any(name.endswith("_created") for name in names)
