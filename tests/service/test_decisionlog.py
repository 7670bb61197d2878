"""The decision log: one JSON line per decision, secrets masked, sampled or off on request."""

from __future__ import annotations

import asyncio
import json
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Decision, Op
from policyd.rules.secrets import mask
from policyd.service.app import create_app
from policyd.service.decisionlog import DecisionLog, decision_record
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore
from tests.helpers import wait_until
from tests.oracle import checked_asgi_client, checked_client
from tests.support import (
    SHIPPED_POLICIES,
    PolicydProcess,
    decision_lines,
    fixture,
    free_port,
    stop_process,
    write_policy,
)

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
    [line] = server.decision_lines(1)
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
    [line] = server.decision_lines(1)
    assert line["outcome"] == "reject"
    assert line["rule"] == "NewUserConn.rules:2"
    assert line["reason"] == "visitors from 198.51.100.23 are blocked"
    assert line["remote_addr"].startswith("198.51.100.23:")


def test_warns_are_logged_with_their_rule(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    server.post(fixture("NewProxy-udp-bandwidth"))
    [line] = server.decision_lines(1)
    assert line["outcome"] == "rewrite"
    assert line["warnings"] == [
        {"message": "proxy alice.dns of team red has no encryption", "rule": "NewProxy.rules:26"}
    ]


def test_secrets_are_masked(policyd_server: Callable[..., PolicydProcess], tmp_path: Path) -> None:
    server = policyd_server(write_policy(tmp_path / "p", SECRETS_POLICY))
    login = {
        "op": "Login",
        "content": {"user": "eve", "privilege_key": "pk-0123456789", "metas": {"token": "tk-eve-secret"}},
    }
    server.post(login)
    server.post({"op": "Login", "content": {"user": "bob", "metas": {"token": "wrong-token-123"}}})
    eve, bob = server.decision_lines(2)
    text = server.logs()
    for secret in ("pk-0123456789", "tk-eve-secret", "rotated-secret-value", "wrong-token-123"):
        assert secret not in text
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
    lines = server.decision_lines(2)
    assert [(d["op"], d["user"], d["outcome"]) for d in lines] == [
        ("Ping", "mallory", "reject"),
        ("NewWorkConn", "alice", "allow"),
    ]


def test_decision_log_to_a_file(policyd_server: Callable[..., PolicydProcess], tmp_path: Path) -> None:
    target = tmp_path / "decisions.jsonl"
    server = policyd_server(env={"POLICYD_DECISION_LOG": str(target)})
    server.post(fixture("Ping-basic"))
    server.post(fixture("NewUserConn-tcp"))
    server.stop()  # shutdown writes what is batched
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [d["op"] for d in lines] == ["Ping", "NewUserConn"]
    assert decision_lines(server.log_path.read_text()) == []


def test_decision_log_off(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--decision-log", "off")
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


# -- batching ---------------------------------------------------------------------------------
def ping_decisions(tmp_path: Path, count: int) -> list[tuple[Decision, dict[str, Any]]]:
    policy = load_policy(write_policy(tmp_path / "p", {"Ping.rules": 'reject "no {user.user}"\n'}))
    out = []
    for i in range(count):
        content = {"user": {"user": f"user-{i}"}}
        out.append((decide(policy, Op.PING, content), content))
    return out


def users(batches: list[bytes]) -> list[str]:
    return [json.loads(line)["user"] for batch in batches for line in batch.splitlines()]


def test_lines_are_written_in_batches_of_whole_lines_up_to_the_batch_size(tmp_path: Path) -> None:
    batches: list[bytes] = []
    decisions = ping_decisions(tmp_path, 20)

    async def run() -> None:
        log = DecisionLog(batches.append, batch_bytes=1000, flush_after_s=3600)
        for decision, content in decisions:
            log.write(decision, content, REQID)
        full = list(batches)
        log.close()
        assert full and all(len(batch) <= 1000 for batch in full)
        assert len(batches) == len(full) + 1  # the rest, at close

    asyncio.run(run())
    assert all(batch.endswith(b"\n") for batch in batches)
    assert users(batches) == [f"user-{i}" for i in range(20)]


def test_a_line_longer_than_a_batch_is_written_alone(tmp_path: Path) -> None:
    batches: list[bytes] = []
    [(short, content)] = ping_decisions(tmp_path, 1)
    long_content = {"user": {"user": "x" * 500}}
    long = decide(load_policy(tmp_path / "p"), Op.PING, long_content)

    async def run() -> None:
        log = DecisionLog(batches.append, batch_bytes=300, flush_after_s=3600)
        log.write(short, content, REQID)
        log.write(long, long_content, REQID)
        log.write(short, content, REQID)
        log.close()

    asyncio.run(run())
    assert [len(batch.splitlines()) for batch in batches] == [1, 1, 1]
    assert users(batches) == ["user-0", "x" * 500, "user-0"]


def test_a_batch_is_written_after_the_flush_delay(tmp_path: Path) -> None:
    batches: list[bytes] = []
    decisions = ping_decisions(tmp_path, 3)

    async def run() -> None:
        log = DecisionLog(batches.append, flush_after_s=0.01)
        for decision, content in decisions:
            log.write(decision, content, REQID)
        assert batches == []  # nothing is written while the request is still being answered
        for _ in range(1000):
            if batches:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert len(batches) == 1
    assert users(batches) == ["user-0", "user-1", "user-2"]


def test_without_an_event_loop_each_line_is_written_at_once(tmp_path: Path) -> None:
    batches: list[bytes] = []
    log = DecisionLog(batches.append)
    for decision, content in ping_decisions(tmp_path, 2):
        log.write(decision, content, REQID)
    assert users(batches) == ["user-0", "user-1"]


def test_no_line_is_lost_on_sigterm(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server()
    for _ in range(25):
        server.post(fixture("NewUserConn-tcp"))
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=15)
    assert [line["op"] for line in server.decision_lines()] == ["NewUserConn"] * 25


def test_workers_sharing_a_stdout_pipe_write_whole_lines(tmp_path: Path) -> None:
    # Each batch is one write of at most PIPE_BUF bytes, which a pipe takes atomically: lines
    # from two workers answering at once never interleave, and none is lost at shutdown.
    assert DecisionLog.open("stdout").batch_bytes <= select.PIPE_BUF
    port, stderr = free_port(), tmp_path / "stderr.log"
    command = [sys.executable, "-m", "policyd", "serve", "--policies", str(SHIPPED_POLICIES)]
    output: list[bytes] = []
    with stderr.open("wb") as errors:
        proc = subprocess.Popen(
            [*command, "--port", str(port), "--workers", "2"], stdout=subprocess.PIPE, stderr=errors
        )
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: output.append(stdout.read()))
    reader.start()
    try:
        wait_until(lambda: stderr.read_text().count("Application startup complete") == 2, "both workers")
        body = fixture("NewProxy-tcp")

        def post(_: int) -> int:
            # A fresh connection each time, so the kernel spreads them over both workers.
            url = f"http://127.0.0.1:{port}/handler"
            with checked_client(timeout=10) as client:
                return client.post(url, params={"op": "NewProxy"}, json=body).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(300))) == {200}
    finally:
        stop_process(proc)
        reader.join()
    lines = output[0].splitlines()
    assert len(lines) == 300
    assert all(json.loads(line)["proxy_name"] == "alice.ssh" for line in lines)


def test_shutdown_writes_the_batched_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = DecisionLog.open

    def open_unhurried(target: str, sample: Any = MappingProxyType({})) -> DecisionLog:
        log = opened(target, sample)
        log.flush_after_s = 3600  # only the shutdown can write the line
        return log

    monkeypatch.setattr(DecisionLog, "open", staticmethod(open_unhurried))
    target = tmp_path / "decisions.jsonl"
    app = create_app(Settings(decision_log=str(target)), PolicyStore(SHIPPED_POLICIES), watch=False)
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    said: list[str] = []

    async def tell(message: Any) -> None:
        said.append(message["type"])

    async def run() -> None:
        await lifespan.put({"type": "lifespan.startup"})
        serving = asyncio.create_task(app({"type": "lifespan", "state": {}}, lifespan.get, tell))
        while "lifespan.startup.complete" not in said:
            await asyncio.sleep(0)
        async with checked_asgi_client(app) as client:
            answer = await client.post("/handler?op=Ping", json=fixture("Ping-basic"))
        assert answer.status_code == 200
        assert target.read_text() == ""
        await lifespan.put({"type": "lifespan.shutdown"})
        await serving

    asyncio.run(run())
    assert said == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [json.loads(line)["op"] for line in target.read_text().splitlines()] == ["Ping"]


# -- why: the fields the deciding rule read, and which rule it was ----------------------------
WHY_POLICY = {
    "NewProxy.rules": (
        "let team = user.metas.team\n"
        'reject "port {content.remote_port} is not for your team"'
        ' when content.proxy_type == "tcp" and content.remote_port not in data.teams[team].ports\n'
        'reject "bad token" when user.metas.token != "expected-token-1"\n'
    ),
    "data/teams.toml": "[red]\nports = [6000, 6001]\n",
}


def test_a_line_carries_the_fields_the_deciding_rule_read(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    server = policyd_server(write_policy(tmp_path / "p", WHY_POLICY))
    user = {"user": "alice", "metas": {"team": "red", "token": "tk-alice-0123456789"}}
    server.post({"op": "NewProxy", "content": {"user": user, "proxy_type": "tcp", "remote_port": 7001}})
    server.post({"op": "NewProxy", "content": {"user": user, "proxy_type": "udp", "remote_port": 6000}})
    port, token = server.decision_lines(2)
    assert port["rule"] == "NewProxy.rules:2"
    assert port["read"] == {
        "content.proxy_type": "tcp",
        "content.remote_port": 7001,
        "user.metas.team": "red",  # through the let
    }
    assert port["rule_text"].startswith('reject "port {content.remote_port} is not for your team"')
    # The token rule reads a credential: its value is masked, and its text (which may hold one)
    # is left out; its id still names it.
    assert token["read"] == {"user.metas.token": "***"}
    assert "rule_text" not in token and len(token["rule_id"]) == 12
    assert "tk-alice-0123456789" not in server.logs() and "expected-token-1" not in server.logs()


def test_the_rule_id_survives_line_moves_and_changes_with_the_rule(tmp_path: Path) -> None:
    content = {"user": {"user": "bob"}, "proxy_type": "tcp", "remote_port": 7001}

    def deciding(rules: str) -> tuple[str, str]:
        policy = load_policy(write_policy(tmp_path / "p", {"NewProxy.rules": rules}))
        record = decision_record(decide(policy, Op.NEW_PROXY, content), content, REQID, datetime.now(UTC))
        return record["rule"], record["rule_id"]

    rule = 'reject "no port {content.remote_port}" when content.remote_port > 7000\n'
    before = deciding(rule)
    moved = deciding("# a comment\n\nallow when user.user == 'root'\n" + rule.replace(" when ", "  when  "))
    changed = deciding(rule.replace("7000", "7001 - 1"))
    assert moved[0] != before[0] and moved[1] == before[1]
    assert changed[1] != before[1]


def test_read_values_are_cut_to_what_a_line_shows(tmp_path: Path) -> None:
    policy = load_policy(
        write_policy(
            tmp_path / "p",
            {"NewProxy.rules": 'reject "x" when content.custom_domains and content.subdomain\n'},
        )
    )
    content = {
        "user": {"user": "bob"},
        "subdomain": "s" * 10_000,
        "custom_domains": [f"d{i}" for i in range(100)],
    }
    record = decision_record(decide(policy, Op.NEW_PROXY, content), content, REQID, datetime.now(UTC))
    assert record["read"]["content.subdomain"] == "s" * 256 + "…"
    assert record["read"]["content.custom_domains"] == [f"d{i}" for i in range(16)] + ["…"]


def test_a_client_cannot_censor_the_decision_log_over_http(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server()  # the shipped policy
    body = fixture("NewProxy-tcp")
    body["content"]["remote_port"] = 7999  # outside team red's range
    body["content"]["user"]["metas"].update({"token": "6500", "secret": "blue", "password": "team red"})
    reason = server.post(body).json()["reject_reason"]
    [line] = server.decision_lines(1)
    assert line["reason"] == reason and "***" not in reason


def test_the_text_diagnostic_log_has_utc_iso_times_and_escapes_separators(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path / "p", {"CloseProxy.rules": 'warn "closed {content.proxy_name}"\n'})
    server = policyd_server(policy, "--log-format", "text")
    name = "x\u2028forged\u2029line\x85more\u202eevil\u2066"
    server.post({"op": "CloseProxy", "content": {"user": {"user": "a"}, "proxy_name": name}})
    logs = server.wait_for_log("CloseProxy warn (")
    lines = [line for line in logs.splitlines() if line and not line.startswith("{")]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \w+ ")
    assert all(stamp.match(line) for line in lines), lines
    [warn] = [line for line in lines if "warn (" in line]
    assert warn.endswith("closed x\\u2028forged\\u2029line\\x85more\\u202eevil\\u2066")
