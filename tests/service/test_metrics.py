"""/metrics through real HTTP: decisions, rule and warn hits, latencies, fail-open."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from policyd.errors import EvaluationError, Location
from policyd.rules.decision import Decision, Op, Outcome, RuleWarning
from policyd.service.metrics import Metrics, _ClientMetrics, _Tally
from policyd.service.store import PolicyStore
from tests.helpers import metric
from tests.support import ROOT, SHIPPED_POLICIES, PolicydProcess, fixture, write_policy

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


# -- recording without prometheus-client's per-value locks ---------------------------------------
RULE = Location("Ping.rules", 2, 1)
WARN = Location("Ping.rules", 1, 1)


def decisions() -> list[Decision]:
    """A mix touching every per-decision metric, with durations on and between bucket bounds."""
    return [
        Decision(Outcome.ALLOW, Op.PING, "v1", eval_us=5.0),
        Decision(Outcome.REJECT, Op.PING, "v1", rule=RULE, eval_us=7.5),
        Decision(Outcome.REJECT, Op.PING, "v1", rule=Location("Ping.rules", 2, 9), eval_us=250_000.5),
        Decision(
            Outcome.REWRITE,
            Op.NEW_PROXY,
            "v1",
            warnings=[RuleWarning("w", WARN), RuleWarning("w", WARN)],
            eval_us=33.25,
        ),
        Decision(
            Outcome.ALLOW,
            Op.LOGIN,
            "v1",
            rule=RULE,
            error=EvaluationError("boom", RULE),
            failed_open=True,
            eval_us=0.0,
        ),
    ]


REQUESTS = [("/handler", 200, 0.0001), ("/handler", 200, 0.0003), ("other", 404, 2.0), ("/handler", 400, 0.0)]


def record(metrics: Any) -> None:
    for decision in decisions():
        metrics.observe(decision)
    for path, code, seconds in REQUESTS:
        metrics.request_started()
        metrics.request_done(path, code, seconds)
    metrics.request_started()  # one still in flight


def test_plain_numbers_export_exactly_what_prometheus_client_metrics_do() -> None:
    tally, reference = _Tally(), CollectorRegistry()
    tally_registry = CollectorRegistry()
    tally_registry.register(tally)
    record(tally)
    record(_ClientMetrics(reference))
    assert generate_latest(tally_registry).decode() == generate_latest(reference).decode()


def test_in_flight_counts_requests_started_and_not_done() -> None:
    tally = _Tally()
    tally.request_started()
    tally.request_started()
    tally.request_done("/handler", 200, 0.001)
    registry = CollectorRegistry()
    registry.register(tally)
    assert metric(generate_latest(registry).decode(), "policyd_http_requests_in_flight") == 1


def test_a_worker_records_into_the_multiprocess_directory(tmp_path: Path) -> None:
    # prometheus-client picks multiprocess mode from the environment when it is imported, as a
    # worker of `policyd serve --workers N` does; the scrape is answered from the files.
    directory = tmp_path / "metrics"
    directory.mkdir()
    worker = (
        "import sys; from tests.service.test_metrics import record, worker_metrics; "
        "record(worker_metrics(sys.argv[1]))"
    )
    subprocess.run(
        [sys.executable, "-c", worker, str(directory)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    text = worker_metrics(str(directory)).render().decode()
    assert metric(text, "policyd_decisions_total", op="Ping", outcome="reject") == 2
    assert metric(text, "policyd_decisions_total", op="Login", outcome="error") == 1
    assert metric(text, "policyd_rule_hits_total", rule="Ping.rules:2") == 3
    assert metric(text, "policyd_warn_hits_total", rule="Ping.rules:1") == 2
    assert metric(text, "policyd_fail_open_total", op="Login") == 1
    assert metric(text, "policyd_eval_duration_microseconds_bucket", op="Ping", le="10.0") == 2
    assert metric(text, "policyd_http_requests_total", path="/handler", code="200") == 2
    assert metric(text, "policyd_http_request_duration_seconds_count", path="/handler") == 3


def worker_metrics(directory: str) -> Metrics:
    return Metrics(PolicyStore(SHIPPED_POLICIES), handler_path="/handler", multiprocess_dir=directory)
