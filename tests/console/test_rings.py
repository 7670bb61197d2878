"""The console's rings: recent decisions (masked, bounded) and 15 minutes of per-second charts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from policyd.console.rings import DECISIONS_KEPT, MAX_KEPT_BODY_BYTES, ConsoleFeed, masked_paths
from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Decision, Op
from policyd.service.decisionlog import decision_record
from tests.support import fixture, write_policy


class Clock:
    def __init__(self, now: float = 1_764_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _body(op: Op, content: dict[str, Any]) -> bytes:
    return orjson.dumps({"version": "0.1.0", "op": op.value, "content": content})


def _feed(clock: Clock, reloads: list[int] | None = None) -> ConsoleFeed:
    counts = reloads if reloads is not None else [0, 0]
    return ConsoleFeed(decision_record, reloads=lambda: (counts[0], counts[1]), clock=clock)


BAD_TOKEN = 'reject "bad token {content.metas.token} for {content.user}" when content.user == "alice"'


def _login_decision(tmp_path: Path, user: str = "alice") -> tuple[Decision, dict[str, Any]]:
    policy = load_policy(write_policy(tmp_path, {"Login.rules": BAD_TOKEN}))
    content = {**fixture("Login-basic")["content"], "user": user}
    return decide(policy, Op.LOGIN, content), content


def test_rows_hold_the_request_masked_as_the_decision_log_masks_it(tmp_path: Path) -> None:
    decision, content = _login_decision(tmp_path)
    feed = _feed(Clock())
    feed.add(decision, _body(Op.LOGIN, content), "reqid-1")
    rows, last = feed.decisions()
    assert last == 1 and len(rows) == 1
    row = rows[0]
    assert row["request"]["metas"]["token"] == "***"
    assert row["request"]["privilege_key"] == "***"
    assert row["reason"] == "bad token *** for alice"
    assert "masked" not in row and feed.row(1)["masked"] == ["privilege_key", "metas.token"]  # type: ignore[index]
    text = orjson.dumps(rows, option=orjson.OPT_UTC_Z)
    assert content["privilege_key"].encode() not in text  # type: ignore[union-attr]
    assert b"tk-alice" not in text
    assert row["op"] == "Login" and row["outcome"] == "reject" and row["rule"] == "Login.rules:1"
    assert row["reqid"] == "reqid-1" and row["seq"] == 1


def test_a_decision_waits_unmasked_only_until_the_next_tick(tmp_path: Path) -> None:
    decision, content = _login_decision(tmp_path)
    feed = _feed(Clock())
    feed.add(decision, _body(decision.op, content), "")
    assert len(feed._waiting) == 1 and not feed._rows
    feed.housekeeping()
    assert not feed._waiting and len(feed._rows) == 1
    assert feed._rows[0]["request"]["metas"]["token"] == "***"


def test_the_ring_keeps_the_newest_decisions_only(tmp_path: Path) -> None:
    decision, content = _login_decision(tmp_path)
    feed = _feed(Clock())
    for _ in range(DECISIONS_KEPT + 250):
        feed.add(decision, _body(decision.op, content), "")
    feed.housekeeping()
    rows, last = feed.decisions(limit=5000)
    assert len(rows) == DECISIONS_KEPT
    assert last == DECISIONS_KEPT  # the 250 oldest were never masked: the hand-off queue is bounded too
    for _ in range(10):
        feed.add(decision, _body(decision.op, content), "")
    newer, last = feed.decisions(after=DECISIONS_KEPT)
    assert [r["seq"] for r in newer] == list(range(last, DECISIONS_KEPT, -1)) and len(newer) == 10
    assert len(feed.decisions(limit=5000)[0]) == DECISIONS_KEPT


def test_filters_by_op_outcome_and_part_of_the_user_name(tmp_path: Path) -> None:
    policy = load_policy(
        write_policy(tmp_path, {"Login.rules": 'reject "no" when content.user == "mallory"'})
    )
    feed = _feed(Clock())
    for user in ("alice", "Mallory", "mallory", "bob"):
        content = {**fixture("Login-basic")["content"], "user": user}
        feed.add(decide(policy, Op.LOGIN, content), _body(Op.LOGIN, content), "")
    ping = fixture("Ping-basic")["content"]
    feed.add(decide(policy, Op.PING, ping), _body(Op.PING, ping), "")
    assert [r["user"] for r in feed.decisions(user="MALL")[0]] == ["mallory", "Mallory"]
    assert [r["user"] for r in feed.decisions(outcome="reject")[0]] == ["mallory"]
    assert [r["op"] for r in feed.decisions(op="Ping")[0]] == ["Ping"]
    assert len(feed.decisions(op="Login", outcome="allow")[0]) == 3
    assert feed.row(2) is not None and feed.row(2)["user"] == "Mallory"  # type: ignore[index]
    assert feed.row(99) is None


def test_charts_count_each_second_by_op_and_outcome_with_percentiles(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, {"Ping.rules": 'reject "x" when content.timestamp / 0 > 1'}))
    clock = Clock()
    reloads = [0, 0]
    feed = _feed(clock, reloads)
    login = fixture("Login-basic")["content"]
    ping = fixture("Ping-basic")["content"]
    start = int(clock.now)
    for microseconds in (10.0, 20.0, 30.0, 1000.0):
        decision = decide(policy, Op.LOGIN, login)
        decision.eval_us = microseconds
        feed.add(decision, _body(Op.LOGIN, login), "")
    clock.now += 1
    error = decide(policy, Op.PING, ping)
    assert error.error is not None
    feed.add(error, _body(Op.PING, ping), "")
    reloads[:] = [2, 1]
    clock.now += 1
    charts = feed.charts()
    assert charts["points"] == 900 and charts["start"] == int(clock.now) - 899
    at = start - charts["start"]
    assert charts["decisions"] == {
        "Login/allow": [4 if i == at else 0 for i in range(900)],
        "Ping/error": [1 if i == at + 1 else 0 for i in range(900)],
    }
    assert charts["p50_us"][at] == 30.0 and charts["p99_us"][at] == 1000.0
    assert charts["p50_us"][at - 1] is None
    assert charts["reloads_ok"][at + 2] == 2 and charts["reloads_failed"][at + 2] == 1
    assert sum(charts["reloads_ok"]) == 2


def test_seconds_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    decision, content = _login_decision(tmp_path, "bob")
    clock = Clock()
    feed = _feed(clock)
    feed.add(decision, _body(decision.op, content), "")
    clock.now += 1
    feed.housekeeping()
    assert feed._seconds
    clock.now += 900
    charts = feed.charts()
    assert charts["decisions"] == {} and not feed._seconds


def test_masked_paths_name_every_credential_field() -> None:
    content = {"user": {"metas": {"token": "x", "team": "red"}}, "sk": "s", "headers": {"Authorization": "b"}}
    assert masked_paths(content) == ["user.metas.token", "sk", "headers.Authorization"]


def test_the_snapshot_keeps_what_the_decision_log_shows(tmp_path: Path) -> None:
    rules = {
        "NewProxy.rules": 'warn "no encryption for {content.proxy_name}" when not content.use_encryption\n'
        'set content.subdomain = "red-" + content.subdomain\n'
        'set content.metas.token = "new-secret-value"\n',
        "Ping.rules": 'reject "x" when content.timestamp / 0 > 1',
    }
    policy = load_policy(write_policy(tmp_path, rules))
    feed = _feed(Clock())
    proxy = {**fixture("NewProxy-http")["content"], "use_encryption": False}
    rewrite = decide(policy, Op.NEW_PROXY, proxy)
    ping = fixture("Ping-basic")["content"]
    error = decide(policy, Op.PING, ping)
    feed.add(rewrite, _body(Op.NEW_PROXY, proxy), "r1")
    feed.add(error, _body(Op.PING, ping), "r2")
    feed.add(rewrite, b"x" * (MAX_KEPT_BODY_BYTES + 1), "r3")
    rows = {row["reqid"]: row for row in feed.decisions()[0]}
    at = datetime.fromtimestamp(feed._clock(), UTC)
    for reqid, decision, content in (("r1", rewrite, proxy), ("r2", error, ping)):
        expected = decision_record(decision, content, reqid, at)
        got = {k: v for k, v in rows[reqid].items() if k not in ("seq", "request")}
        assert orjson.dumps(got, option=orjson.OPT_UTC_Z) == orjson.dumps(expected, option=orjson.OPT_UTC_Z)
    assert rows["r1"]["changes"][1] == {"field": "metas.token", "before": "***", "after": "***"}
    assert rows["r1"]["warnings"][0]["rule"] == "NewProxy.rules:1"
    assert rows["r2"]["error"]["code"] == "eval_error" and rows["r2"]["outcome"] == "error"
    assert rows["r3"]["request"] is None and rows["r3"]["outcome"] == "rewrite"
