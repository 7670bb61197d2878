"""Graceful shutdown and several workers, through real processes."""

from __future__ import annotations

import json
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from policyd.policy import load_policy
from tests.helpers import metric, read_response, wait_until
from tests.oracle import checked_client
from tests.support import SHIPPED_POLICIES, PolicydProcess, fixture


def test_sigterm_lets_an_in_flight_request_finish(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    body = json.dumps(fixture("NewUserConn-tcp")).encode()
    head = (
        f"POST /handler?op=NewUserConn&version=0.1.0 HTTP/1.1\r\nHost: policyd\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body[:10])  # the handler is now waiting for the rest of the body
        wait_until(
            lambda: metric(server.client.get("/metrics").text, "policyd_http_requests_in_flight") == 2,
            "the request in flight (besides the scrape)",
        )
        server.client.close()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("Shutting down")
        sock.sendall(body[10:])
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200")
    assert json.loads(response.partition(b"\r\n\r\n")[2]) == {
        "reject": True,
        "reject_reason": "visitors from 198.51.100.23 are blocked",
    }
    # uvicorn re-raises the signal once it has shut down cleanly (systemd counts that as success).
    assert server.proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.logs()
    assert [line["op"] for line in server.decision_lines()] == ["NewUserConn"]  # its line too


def test_workers_all_serve_the_new_version_after_an_edit(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    server = policyd_server(
        policies, "--workers", "2", "--reload-debounce-s", "0.05", "--decision-log", "off"
    )
    wait_until(lambda: server.logs().count("Application startup complete") == 2, "both workers")
    assert server.logs().count("Started server process") == 2

    (policies / "Ping.rules").write_text('reject "maintenance"\n')
    new = load_policy(policies).version
    wait_until(lambda: server.logs().count(f"policy {new} active after change") == 2, "both reloads")

    requests = 60
    for _ in range(requests):
        # A fresh connection each time, so the kernel spreads them over both workers.
        with checked_client(timeout=10) as client:
            answer = client.post(f"{server.url}/handler", params={"op": "Ping"}, json=fixture("Ping-basic"))
        assert answer.headers["x-policyd-version"] == new
        assert answer.json() == {"reject": True, "reject_reason": "maintenance"}
    metrics = server.client.get("/metrics").text
    # Counters are summed over both workers, whichever one answers the scrape.
    assert metric(metrics, "policyd_decisions_total", op="Ping", outcome="reject") == requests
