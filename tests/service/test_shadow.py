"""The shadow policy through a real server: both policies decide, only the main one answers;
disagreements are logged and counted; a broken, failing or slow shadow never touches an answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from policyd.engine import decide
from policyd.rules.decision import Op
from policyd.service import shadow as shadow_module
from policyd.service.decisionlog import DecisionLog
from policyd.service.metrics import Metrics
from policyd.service.settings import Settings
from policyd.service.shadow import ShadowPolicy, ShadowRunner, shadow_options
from policyd.service.store import PolicyStore
from tests.helpers import metric, wait_until
from tests.support import PolicydProcess, fixture, write_policy

Start = Callable[..., PolicydProcess]
PING = fixture("Ping-basic")
MAIN_PING = 'reject "banned" when user.user == "mallory"\n'


def ping(user: str) -> dict[str, Any]:
    body = fixture("Ping-basic")
    body["content"]["user"]["user"] = user
    return body


def shadow_counts(server: PolicydProcess, op: str = "Ping") -> dict[str, float]:
    scrape = server.client.get("/metrics").text
    return {
        a: metric(scrape, "policyd_shadow_decisions_total", op=op, agreement=a)
        for a in ("same", "different", "error")
    }


def lines_of(server: PolicydProcess, count: int) -> list[dict[str, Any]]:
    lines = server.decision_lines(count)
    assert len(lines) >= count, server.logs()
    return lines


def policies(tmp_path: Path, main: str, shadow: str) -> tuple[Path, Path]:
    return (
        write_policy(tmp_path / "policies", {"Ping.rules": main}),
        write_policy(tmp_path / "candidate", {"Ping.rules": shadow}),
    )


def test_same_and_different_decisions_are_counted_and_logged(policyd_server: Start, tmp_path: Path) -> None:
    main, candidate = policies(tmp_path, MAIN_PING, MAIN_PING + 'reject "no bobs" when user.user == "bob"\n')
    server = policyd_server(main, "--shadow-policies", str(candidate))
    assert server.post(ping("alice")).json() == {"reject": False, "unchange": True}
    assert server.post(ping("bob")).json() == {"reject": False, "unchange": True}  # the shadow would reject
    alice, bob = lines_of(server, 2)
    assert "shadow" not in alice
    assert (
        bob["outcome"] == "allow"
        and bob["policy_version"] == server.client.get("/readyz").json()["policy_version"]
    )
    status = server.client.get("/status").json()["shadow"]
    assert bob["shadow"] == {
        "outcome": "reject",
        "reason": "no bobs",
        "rule": "Ping.rules:2",
        "policy_version": status["policy"]["version"],
        "eval_us": bob["shadow"]["eval_us"],
    }
    assert shadow_counts(server) == {"same": 1, "different": 1, "error": 0}
    assert status["directory"] == str(candidate) and status["decisions"] == {
        "same": 1,
        "different": 1,
        "error": 0,
    }
    scrape = server.client.get("/metrics").text
    assert metric(scrape, "policyd_shadow_policy_info", version=status["policy"]["version"]) == 1
    assert metric(scrape, "policyd_shadow_last_reload_ok") == 1


def test_a_rewrite_the_shadow_would_make_differently_is_a_disagreement(
    policyd_server: Start, tmp_path: Path
) -> None:
    main = write_policy(tmp_path / "policies", {"NewProxy.rules": 'set content.subdomain = "a"\n'})
    candidate = write_policy(tmp_path / "candidate", {"NewProxy.rules": 'set content.subdomain = "b"\n'})
    server = policyd_server(main, "--shadow-policies", str(candidate))
    answer = server.post(fixture("NewProxy-http")).json()
    assert answer["content"]["subdomain"] == "a"
    [line] = lines_of(server, 1)
    assert line["shadow"]["outcome"] == "rewrite"
    assert line["shadow"]["changes"] == [{"field": "subdomain", "before": "blog", "after": "b"}]
    assert shadow_counts(server, "NewProxy")["different"] == 1


def test_a_disagreement_is_logged_even_where_allows_are_sampled_out(
    policyd_server: Start, tmp_path: Path
) -> None:
    main, candidate = policies(tmp_path, "allow\n", 'reject "no" when user.user == "bob"\n')
    server = policyd_server(main, "--shadow-policies", str(candidate), "--decision-log-sample", "Ping=0")
    for user in ("alice", "bob", "carol"):
        server.post(ping(user))
    wait_until(lambda: sum(shadow_counts(server).values()) == 3, "three shadow decisions")
    time.sleep(0.3)  # past the decision log's batching
    assert [line["user"] for line in server.decision_lines()] == ["bob"]


def test_a_broken_shadow_edit_keeps_the_last_good_shadow(policyd_server: Start, tmp_path: Path) -> None:
    main, candidate = policies(tmp_path, "allow\n", 'reject "v1" when user.user == "bob"\n')
    server = policyd_server(main, "--shadow-policies", str(candidate))
    good = server.client.get("/status").json()["shadow"]["policy"]["version"]
    (candidate / "Ping.rules").write_text('reject "v2" when user.usr == "bob"\n')
    server.wait_for_log("shadow policy reload FAILED after change of Ping.rules")
    assert server.post(ping("bob")).json() == {"reject": False, "unchange": True}
    [line] = lines_of(server, 1)
    assert (line["shadow"]["reason"], line["shadow"]["policy_version"]) == ("v1", good)
    status = server.client.get("/status").json()["shadow"]
    assert status["reloads"]["last_attempt"]["ok"] is False
    assert status["reloads"]["last_attempt"]["errors"][0]["location"] == "Ping.rules:1:23"
    assert metric(server.client.get("/metrics").text, "policyd_shadow_last_reload_ok") == 0
    (candidate / "Ping.rules").write_text('reject "v3" when user.user == "bob"\n')
    server.wait_for_log("shadow policy")
    wait_until(
        lambda: server.client.get("/status").json()["shadow"]["policy"]["version"] != good, "the good edit"
    )
    server.post(ping("bob"))
    assert lines_of(server, 2)[1]["shadow"]["reason"] == "v3"


def test_a_shadow_that_does_not_load_at_start_up_does_not_stop_the_service(
    policyd_server: Start, tmp_path: Path
) -> None:
    main, candidate = policies(tmp_path, MAIN_PING, "reject when\n")
    server = policyd_server(main, "--shadow-policies", str(candidate))
    assert "no shadow decisions until an edit loads" in server.logs()
    assert server.post(ping("mallory")).json() == {"reject": True, "reject_reason": "banned"}
    status = server.client.get("/status").json()["shadow"]
    assert status["policy"] is None and status["reloads"]["last_attempt"]["ok"] is False
    scrape = server.client.get("/metrics").text
    assert metric(scrape, "policyd_shadow_skipped_total", reason="not_loaded") == 1
    assert metric(scrape, "policyd_shadow_last_reload_ok") == 0
    [line] = lines_of(server, 1)
    assert line["reason"] == "banned" and "shadow" not in line  # logged all the same
    (candidate / "Ping.rules").write_text('reject "shadowed"\n')
    wait_until(lambda: server.client.get("/status").json()["shadow"]["policy"] is not None, "the first load")
    server.post(ping("alice"))
    assert lines_of(server, 2)[1]["shadow"]["reason"] == "shadowed"


def test_a_shadow_rule_error_does_not_touch_the_main_answer(policyd_server: Start, tmp_path: Path) -> None:
    main, candidate = policies(tmp_path, MAIN_PING, 'reject "x" when user.user + 1\n')
    server = policyd_server(main, "--shadow-policies", str(candidate))
    assert server.post(ping("mallory")).json() == {"reject": True, "reject_reason": "banned"}
    assert server.post(ping("alice")).json() == {"reject": False, "unchange": True}
    for line in lines_of(server, 2):
        assert line["shadow"]["outcome"] == "error"
        assert line["shadow"]["error"]["code"] == "eval_error"
        assert line["shadow"]["reason"] == "policy error"
    assert shadow_counts(server)["error"] == 2
    assert "shadow Ping: rule error (eval_error)" in server.logs()


# Runs until a budget stops it, building nothing (the step limit is raised past the time budget).
SLOW = 'reject "never" when any(any(j < 0 for j in range(9999)) for i in range(9999))\n'
STEPS = ("--max-steps", "1000000000")


def test_a_shadow_over_its_budget_is_an_error_not_a_slower_answer(
    policyd_server: Start, tmp_path: Path
) -> None:
    main, candidate = policies(tmp_path, MAIN_PING, SLOW)
    server = policyd_server(
        main, "--shadow-policies", str(candidate), "--shadow-eval-budget-ms", "400", *STEPS
    )
    started = time.perf_counter()
    assert server.post(ping("mallory")).json() == {"reject": True, "reject_reason": "banned"}
    answered_after_s = time.perf_counter() - started
    [line] = lines_of(server, 1)
    assert line["shadow"]["error"] == {
        "code": "limit_error",
        "message": "evaluation ran out of time",
    }
    # The answer did not wait for its own shadow decision, which took the whole budget (had
    # it waited, it would have come after at least that long, however busy the machine):
    assert line["shadow"]["eval_us"] >= 400_000
    assert answered_after_s * 1e6 < line["shadow"]["eval_us"]
    assert shadow_counts(server)["error"] == 1


def test_a_slow_shadow_gives_way_to_requests_within_its_share(policyd_server: Start, tmp_path: Path) -> None:
    """A shadow that takes its whole budget on every request uses its share of the serving
    thread (SHADOW_MAX_SHARE) and then lets requests go unshadowed, counted, instead of making
    each answer wait for the one before's shadow decision."""
    main, candidate = policies(tmp_path, MAIN_PING, SLOW)
    server = policyd_server(
        main, "--shadow-policies", str(candidate), "--shadow-eval-budget-ms", "200", *STEPS
    )
    started = time.perf_counter()
    for _ in range(30):
        assert server.post(ping("alice")).json() == {"reject": False, "unchange": True}
    scrape = server.client.get("/metrics").text
    decided = metric(scrape, "policyd_shadow_decisions_total", op="Ping", agreement="error")
    skipped = metric(scrape, "policyd_shadow_skipped_total", reason="time_share")
    assert decided + skipped == 30 and skipped >= 20
    lines = lines_of(server, 30)  # every request logged, shadowed or not
    assert len(lines) == 30
    # The shadow held the serving thread for no more than its share of the time that passed
    # (a slower machine only makes that longer), the burst it may use at once, and the one
    # decision it started with credit left.
    spent_s = server.client.get("/status").json()["shadow"]["spent_s"]
    elapsed = time.perf_counter() - started
    longest_s = max(line["shadow"]["eval_us"] for line in lines if "shadow" in line) / 1e6
    share = shadow_module.SHADOW_MAX_SHARE * elapsed + shadow_module.SHADOW_BURST_S
    assert spent_s <= share + longest_s + 0.05, (spent_s, share, longest_s)


def test_with_workers_the_shadow_counts_are_summed(policyd_server: Start, tmp_path: Path) -> None:
    main, candidate = policies(tmp_path, "allow\n", 'reject "no"\n')
    server = policyd_server(main, "--shadow-policies", str(candidate), "--workers", "2")
    for _ in range(6):
        server.post(ping("alice"))
    wait_until(lambda: shadow_counts(server)["different"] == 6, "six disagreements")


# -- in-process: the runner's bounds ------------------------------------------------------------
def runner_for(
    tmp_path: Path, main_files: dict[str, str], shadow_files: dict[str, str], **bounds: Any
) -> tuple[ShadowRunner, list[bytes], PolicyStore]:
    main = PolicyStore(write_policy(tmp_path / "main", main_files))
    shadow_dir = write_policy(tmp_path / "shadow", shadow_files)
    settings = Settings(policies=main.directory, shadow_policies=shadow_dir, decision_log="off")
    lines: list[bytes] = []
    decisions = DecisionLog(lines.append)
    metrics = Metrics(main, handler_path="/handler")
    runner = ShadowRunner(
        main, ShadowPolicy(shadow_dir, settings), shadow_options(settings), decisions, metrics, **bounds
    )
    return runner, lines, main


def submit(runner: ShadowRunner, store: PolicyStore, op: Op, body: dict[str, Any]) -> None:
    decision = decide(store.policy, op, body["content"], now=1.0)
    runner.submit(decision, body["content"], "r", 1.0, 100)


def test_requests_past_the_queue_are_answered_unshadowed_and_still_logged(tmp_path: Path) -> None:
    runner, lines, store = runner_for(
        tmp_path, {"Ping.rules": "allow\n"}, {"Ping.rules": 'reject "x"\n'}, queue_max=2
    )

    async def run() -> None:
        runner.start(watch=False)
        for _ in range(5):  # no yield in between: the worker has no turn yet
            submit(runner, store, Op.PING, PING)
        await asyncio.sleep(0.05)
        await runner.stop()
        runner.decisions.flush()

    asyncio.run(run())
    assert runner.skipped["queue_full"] == 3 and runner.counts["different"] == 2
    logged = [orjson.loads(line) for batch in lines for line in batch.splitlines()]
    assert len(logged) == 5 and sum("shadow" in line for line in logged) == 2


def test_stopping_logs_what_still_waits_for_the_shadow(tmp_path: Path) -> None:
    runner, lines, store = runner_for(tmp_path, {"Ping.rules": "allow\n"}, {"Ping.rules": 'reject "x"\n'})

    async def run() -> None:
        runner.start(watch=False)
        for _ in range(3):
            submit(runner, store, Op.PING, PING)
        await runner.stop()  # before the worker had a turn
        runner.decisions.flush()

    asyncio.run(run())
    assert sum(runner.counts.values()) == 0
    assert len([line for batch in lines for line in batch.splitlines()]) == 3


def test_ops_whose_files_are_the_same_in_both_are_not_decided_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"Ping.rules": "allow\n", "data/x.toml": "a = 1\n"}
    runner, _, store = runner_for(
        tmp_path, {**files, "NewProxy.rules": "allow\n"}, {**files, "NewProxy.rules": 'reject "x"\n'}
    )
    calls: list[Op] = []

    def counting(policy: Any, op: Op, *args: Any, **kwargs: Any) -> Any:
        calls.append(op)
        return decide(policy, op, *args, **kwargs)

    monkeypatch.setattr(shadow_module, "decide_again", counting)

    async def run() -> None:
        runner.start(watch=False)
        submit(runner, store, Op.PING, PING)
        submit(runner, store, Op.NEW_PROXY, fixture("NewProxy-tcp"))
        submit(runner, store, Op.LOGIN, fixture("Login-basic"))  # no rule file in either
        await asyncio.sleep(0.05)
        await runner.stop()

    asyncio.run(run())
    assert calls == [Op.NEW_PROXY]
    assert runner.counts == {"same": 2, "different": 1, "error": 0}


def test_a_shadow_decision_that_raises_is_an_error_and_the_line_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, lines, store = runner_for(tmp_path, {"Ping.rules": "allow\n"}, {"Ping.rules": 'reject "x"\n'})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(shadow_module, "decide_again", broken)

    async def run() -> None:
        runner.start(watch=False)
        submit(runner, store, Op.PING, PING)
        await asyncio.sleep(0.05)
        await runner.stop()
        runner.decisions.flush()

    asyncio.run(run())
    [line] = [orjson.loads(line) for batch in lines for line in batch.splitlines()]
    assert line["outcome"] == "allow" and line["shadow"]["error"]["code"] == "shadow_failed"
    assert runner.counts["error"] == 1


def test_the_shadow_reads_state_and_never_changes_it(policyd_server: Start, tmp_path: Path) -> None:
    """rate() in the shadow answers as if it counted, without counting: the main policy's limit
    of 3 holds exactly, and no shadow-only key is ever stored."""
    main, candidate = policies(
        tmp_path,
        'reject "slow down" when not rate("ping:" + user.user, 3, "1m")\n',
        'reject "slow down" when not rate("ping:" + user.user, 100, "1m")'
        ' or not rate("shadow:" + user.user, 1, "1m")\n',
    )
    server = policyd_server(main, "--shadow-policies", str(candidate))
    answers = [server.post(ping("alice")).json() for _ in range(5)]
    assert [a["reject"] for a in answers] == [False, False, False, True, True]
    wait_until(lambda: sum(shadow_counts(server).values()) == 5, "five shadow decisions")
    # The shadow allows all five (limit 100, and its own key never passes 0 counted hits).
    assert shadow_counts(server) == {"same": 3, "different": 2, "error": 0}
    rates = server.client.get("/state", params={"rates": ""}).json()["rates"]
    assert {key: hits["count"] for key, hits in rates.items()} == {"ping:alice": 5}
