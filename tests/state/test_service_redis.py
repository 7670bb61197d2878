"""The service with Redis state, through real HTTP: two `policyd serve` replicas sharing one real
redis-server. Exact quotas under concurrency, Redis killed under load, recovery, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.redisserver import RedisServer
from tests.support import PolicydProcess, write_policy

QUOTA = 'reject "at most 5 proxies per user" when len(proxies(user.user)) >= 5\n'


def new_proxy(name: str, user: str = "alice") -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "op": "NewProxy",
        "content": {
            "user": {"user": user, "metas": {}, "run_id": "run-" + user},
            "proxy_name": f"{user}.{name}",
            "proxy_type": "tcp",
            "remote_port": 0,
        },
    }


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[PolicydProcess]]:
    redis_server.flush()
    policies = write_policy(tmp_path / "policies", {"NewProxy.rules": QUOTA})
    procs = [
        PolicydProcess(
            policies,
            tmp_path / f"{name}.log",
            "--state", redis_server.url,
            "--state-replica", name,
            "--state-timeout-ms", "200",
            "--decision-log", "off",
        ).wait_ready()
        for name in ("a", "b")
    ]  # fmt: skip
    yield procs
    for p in procs:
        p.stop()


def outcome(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    return "reject" if body["reject"] else "allow"


def test_20_racing_new_proxies_over_two_replicas_allow_exactly_5(replicas: list[PolicydProcess]) -> None:
    def send(i: int) -> str:
        return outcome(replicas[i % 2].post(new_proxy(f"p{i}")))

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(send, range(20)))
    assert results.count("allow") == 5, results
    state = httpx.get(replicas[1].url + "/state?user=alice").json()
    assert len(state["users"]["alice"]["proxies"]) == 5
    assert outcome(replicas[0].post(new_proxy("x", user="bob"))) == "allow"  # quotas are per user


def test_a_replica_restart_keeps_the_counts(
    replicas: list[PolicydProcess], tmp_path: Path, redis_server: RedisServer
) -> None:
    for i in range(5):
        assert outcome(replicas[0].post(new_proxy(f"p{i}"))) == "allow"
    replicas[0].stop()
    again = PolicydProcess(
        tmp_path / "policies", tmp_path / "a2.log", "--state", redis_server.url, "--state-replica", "a"
    ).wait_ready()
    try:
        assert outcome(again.post(new_proxy("p9"))) == "reject"
    finally:
        again.stop()
        replicas[0] = replicas[1]  # the fixture stops each once


def test_redis_killed_under_load_fails_closed_fast_and_recovers(
    replicas: list[PolicydProcess], redis_server: RedisServer
) -> None:
    a = replicas[0]
    assert outcome(a.post(new_proxy("p0"))) == "allow"
    redis_server.stop()
    try:
        # Every one is answered (a hang would be the client's timeout, far past any state
        # timeout), refused: state failure closed.
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: a.post(new_proxy(f"q{i}"), timeout=30), range(64)))
        assert [outcome(r) for r in answers] == ["reject"] * 64
        assert {r.json()["reject_reason"] for r in answers} == {"policy error"}
        ready = httpx.get(a.url + "/readyz")
        assert ready.status_code == 503 and "state backend" in ready.json()["reason"]
        status = httpx.get(a.url + "/status").json()["state"]
        assert status["healthy"] is False and status["failures"].get("closed", 0) >= 64
        assert 'policyd_state_failures_total{mode="closed"}' in httpx.get(a.url + "/metrics").text
        # Ops whose rules read no state do not wait on Redis at all.
        ping = a.post({"version": "0.1.0", "op": "Ping", "content": {"user": {"user": "alice"}}})
        assert outcome(ping) == "allow"
    finally:
        redis_server.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(a.url + "/readyz").status_code != 200:
        time.sleep(0.1)
    assert httpx.get(a.url + "/readyz").status_code == 200
    assert outcome(a.post(new_proxy("after"))) == "allow"  # recovered by itself (Redis came back empty)


def test_a_frozen_redis_never_holds_the_event_loop(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis accepts but never answers (SIGSTOP): decisions waiting on it run in the thread pool
    until their timeout (2 s here, so they surely still wait); the event loop answers meanwhile."""
    import os
    import signal

    redis_server.flush()
    policies = write_policy(tmp_path / "policies", {"NewProxy.rules": QUOTA})
    a = PolicydProcess(
        policies, tmp_path / "slow.log", "--state", redis_server.url, "--state-timeout-ms", "2000",
        "--decision-log", "off",
    ).wait_ready()  # fmt: skip
    try:
        assert outcome(a.post(new_proxy("p0"))) == "allow"
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(16) as pool:

                def post(i: int) -> tuple[httpx.Response, float]:
                    response = a.post(new_proxy(f"q{i}"), timeout=60)
                    return response, time.monotonic()

                waiting = [pool.submit(post, i) for i in range(16)]
                time.sleep(0.1)
                health = httpx.get(a.url + "/healthz", timeout=60)
                health_done = time.monotonic()
                answers = [f.result() for f in waiting]
            assert health.status_code == 200
            # The loop answered /healthz while the decisions still waited on Redis ...
            assert health_done < min(done for _, done in answers)
            # ... and each of them was answered: failed closed at its timeout, none hung.
            assert [outcome(r) for r, _ in answers] == ["reject"] * 16
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
    finally:
        a.stop()
