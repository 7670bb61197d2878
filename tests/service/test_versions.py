"""GET /versions through a real server: every version that served, its files after later edits
and restarts, the same documents `policyd history` prints, behind admin_allow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from click.testing import CliRunner

from policyd.cli import main
from policyd.policy import load_policy
from tests.helpers import metric, wait_until
from tests.support import PolicydProcess, fixture, write_policy

Start = Callable[..., PolicydProcess]
PING = fixture("Ping-basic")


def history_cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["history", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_decision_logs_policy_version_turns_into_the_rules_that_decided(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "first"\n'})
    server = policyd_server(policies, "--history-dir", str(tmp_path / "h"))
    assert server.post(PING).json()["reject_reason"] == "first"
    (policies / "Ping.rules").write_text('reject "second"\n')
    wait_until(lambda: server.post(PING).json().get("reject_reason") == "second", "the edit")
    wait_until(lambda: any(line["reason"] == "second" for line in server.decision_lines()), "the log line")
    by_reason = {line["reason"]: line["policy_version"] for line in server.decision_lines()}
    first, second = by_reason["first"], by_reason["second"]
    # The first version's rules, after the edit replaced them on disk:
    old = server.client.get(f"/versions/{first}").json()
    assert {f["path"]: f["text"] for f in old["files"]} == {"Ping.rules": 'reject "first"\n'}
    listed = server.client.get("/versions").json()
    assert listed["serving"] == second
    assert [(v["version"], v["previous"]) for v in listed["versions"]] == [(second, first), (first, None)]
    assert listed["versions"][0]["changed"] == {"added": [], "modified": ["Ping.rules"], "removed": []}
    assert listed["versions"][0]["last_served"] is None and listed["versions"][1]["last_served"] is not None


def test_the_history_survives_a_restart_and_the_cli_agrees_with_the_api(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "a"\n'})
    history = tmp_path / "h"
    first = policyd_server(policies, "--history-dir", str(history))
    v1 = first.client.get("/readyz").json()["policy_version"]
    first.stop()
    (policies / "Ping.rules").write_text('reject "b"\n')
    server = policyd_server(policies, "--history-dir", str(history))
    listed = server.client.get("/versions").json()
    assert [v["version"] for v in listed["versions"]][1:] == [v1]
    assert listed["versions"][0]["previous"] == v1  # against what served before the restart
    offline = orjson.loads(history_cli("--history-dir", str(history), "--format", "json"))
    online = orjson.loads(history_cli("--url", server.url, "--format", "json"))
    assert offline["versions"] == listed["versions"] == online["versions"]
    assert online == listed
    shown = orjson.loads(history_cli(v1, "--history-dir", str(history), "--format", "json"))
    assert shown == server.client.get(f"/versions/{v1}").json()
    assert history_cli("--diff", v1, listed["serving"], "--url", server.url) == history_cli(
        "--diff", v1, listed["serving"], "--history-dir", str(history)
    )


def test_without_a_directory_the_service_keeps_versions_in_memory(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": "allow\n"})
    server = policyd_server(policies)
    version = load_policy(policies).version
    listed = server.client.get("/versions").json()
    assert listed["persistent"] is False and listed["max_versions"] == 20
    assert [v["version"] for v in listed["versions"]] == [version]
    assert server.client.get(f"/versions/{version[:6]}").json()["version"] == version
    missing = server.client.get("/versions/000000000000")
    assert missing.status_code == 404 and "is not in the history" in missing.json()["error"]
    scrape = server.client.get("/metrics").text
    assert metric(scrape, "policyd_http_requests_total", path="/versions/{version}", code="404") == 1
    assert metric(scrape, "policyd_http_requests_total", path="/versions/{version}", code="200") == 1


def test_versions_are_behind_admin_allow(policyd_server: Start) -> None:
    server = policyd_server(env={"POLICYD_ADMIN_ALLOW": "10.0.0.0/8"})
    assert server.client.get("/versions").status_code == 403
    refused = server.client.get("/versions/abcdef")
    assert refused.status_code == 403 and refused.json() == {
        "error": "client 127.0.0.1 may not call /versions/abcdef"
    }
    assert server.post(PING).status_code == 200


def test_a_history_directory_that_cannot_be_made_stops_start_up(
    policyd_server: Start, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = policyd_server(
        None,
        "--policies",
        str(write_policy(tmp_path / "p", {"Ping.rules": "allow\n"})),
        "--history-dir",
        str(blocker / "h"),
        wait=False,
    )
    assert server.proc.wait(timeout=30) == 2
    assert f"cannot create the history directory {blocker / 'h'}" in server.logs()
