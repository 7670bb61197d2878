"""What a decision gets when the state backend cannot answer: closed, open, a taken lock, a
frozen Redis (no answer at all), and memory state refused with several workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from policyd.engine import EvalOptions, StateBinding, decide
from policyd.errors import StateError
from policyd.policy import load_policy
from policyd.rules.decision import Op, Outcome
from policyd.state.backend import Failure, StateUnavailable
from policyd.state.redisstore import BREAKER_S, PREFIX, RedisBackend
from policyd.state.tracking import Expiry
from tests.redisserver import RedisServer
from tests.support import free_port, write_policy

QUOTA = 'reject "at most 1 proxy" when len(proxies(user.user)) >= 1\n'
RATE = 'reject "slow down" when not rate("k", 0, "1m")\n'


def new_proxy(name: str = "a") -> dict[str, Any]:
    return {
        "user": {"user": "alice", "metas": {}, "run_id": "r"},
        "proxy_name": "alice." + name,
        "proxy_type": "tcp",
    }


def dead_backend() -> RedisBackend:
    return RedisBackend(f"redis://127.0.0.1:{free_port()}/0", Expiry(), 0.2, "t")


def test_closed_fails_the_op_closed_and_open_answers_empty(tmp_path: Path) -> None:
    p = load_policy(write_policy(tmp_path, {"NewProxy.rules": QUOTA + RATE}))
    backend = dead_backend()
    closed = decide(p, Op.NEW_PROXY, new_proxy(), state=StateBinding(backend))
    assert (closed.outcome, closed.reason) == (Outcome.REJECT, "policy error")
    assert isinstance(closed.error, StateError) and closed.error.code == "state_error"
    # A fail-open op allows, counted as a fail-open.
    options = EvalOptions(fail_open_ops=frozenset({Op.NEW_PROXY}))
    failed_open = decide(p, Op.NEW_PROXY, new_proxy(), options=options, state=StateBinding(backend))
    assert failed_open.outcome is Outcome.ALLOW and failed_open.failed_open
    # Open: proxies() is empty, and rate() under the limit even at limit 0.
    opened = decide(p, Op.NEW_PROXY, new_proxy(), state=StateBinding(backend, failure=Failure.OPEN))
    assert opened.outcome is Outcome.ALLOW and opened.error is None
    assert backend.stats.failures["closed"] >= 2 and backend.stats.failures["open"] >= 1
    assert backend.health().ok is False


def test_a_lock_that_stays_taken_is_a_state_failure_within_the_timeout(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.flush()
    p = load_policy(write_policy(tmp_path, {"NewProxy.rules": QUOTA}))
    backend = RedisBackend(redis_server.url, Expiry(), 0.2, "t")
    backend.client.set(PREFIX + "lock:u:alice", "someone else", px=5000)  # a replica died holding it
    decision = decide(p, Op.NEW_PROXY, new_proxy(), state=StateBinding(backend))
    assert decision.outcome is Outcome.REJECT and isinstance(decision.error, StateError)
    assert "not free within 0.2s" in decision.error.message
    backend.client.delete(PREFIX + "lock:u:alice")
    assert decide(p, Op.NEW_PROXY, new_proxy(), state=StateBinding(backend)).outcome is Outcome.ALLOW
    backend.close()


BREAKER = "redis unavailable ("  # what a call refused by the open breaker says


def test_a_frozen_redis_costs_one_timeout_then_the_breaker_answers_at_once(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    assert server.proc is not None
    p = load_policy(write_policy(tmp_path / "p", {"NewProxy.rules": QUOTA}))
    backend = RedisBackend(server.url, Expiry(), 0.2, "t")
    try:
        assert decide(p, Op.NEW_PROXY, new_proxy("a"), state=StateBinding(backend)).outcome is Outcome.ALLOW
        os.kill(server.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
        started = time.monotonic()
        first = decide(p, Op.NEW_PROXY, new_proxy("b"), state=StateBinding(backend))
        first_s = time.monotonic() - started
        started = time.monotonic()
        rest = [decide(p, Op.NEW_PROXY, new_proxy(f"c{i}"), state=StateBinding(backend)) for i in range(20)]
        rest_s = time.monotonic() - started
        assert first.outcome is Outcome.REJECT and first_s >= 0.19, first_s  # it waited one timeout
        assert first.error is not None and "Timeout" in first.error.message
        # ... and the next twenty are refused by the open breaker, not by twenty timeouts: at
        # most one waits per BREAKER_S (a machine slower than that reopens it once a period).
        assert all(d.outcome is Outcome.REJECT for d in rest)
        waited = [d.error.message for d in rest if d.error is None or BREAKER not in d.error.message]
        assert len(waited) <= rest_s // BREAKER_S, (waited, rest_s)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # Redis runs what it had queued when it thaws: the timed-out decision's lock is taken until
    # its lease (max(2 s, 4 x timeout)) ends. Recovery then needs nothing from anyone.
    deadline = time.monotonic() + backend.lock_lease_s + 3
    outcome = Outcome.REJECT
    while time.monotonic() < deadline and outcome is Outcome.REJECT:
        with contextlib.suppress(StateUnavailable):
            backend.renew()  # what the upkeep thread does every second
        outcome = decide(p, Op.NEW_PROXY, new_proxy("a"), state=StateBinding(backend)).outcome
        time.sleep(0.1)
    assert outcome is Outcome.ALLOW
    backend.close()
    server.stop()


def test_memory_state_with_several_workers_refuses_a_policy_that_calls_a_state_function(
    tmp_path: Path,
) -> None:
    policies = write_policy(tmp_path, {"NewProxy.rules": "allow when content.remote_port == 1\n" + QUOTA})
    run = subprocess.run(
        [sys.executable, "-m", "policyd", "serve", "--policies", str(policies), "--workers", "2",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "NewProxy.rules:2:" in run.stderr and "memory state is one per process" in run.stderr
    assert "--state redis://" in run.stderr


def test_a_reload_cannot_bring_state_into_memory_workers(tmp_path: Path) -> None:
    from policyd.service.settings import Settings
    from policyd.service.statesvc import workers_problem
    from policyd.service.store import PolicyStore

    settings = Settings(policies=tmp_path, workers=2)
    write_policy(tmp_path, {"NewProxy.rules": 'reject "x" when content.remote_port == 1\n'})
    store = PolicyStore(tmp_path, check=lambda policy: workers_problem(settings, policy))
    version = store.policy.version
    write_policy(tmp_path, {"NewProxy.rules": QUOTA})
    attempt = store.reload()
    assert not attempt.ok and store.policy.version == version
    assert "memory state is one per process" in str(attempt.errors[0])
    shared = Settings(policies=tmp_path, workers=2, state="redis://127.0.0.1:1/0")
    assert workers_problem(shared, store.policy) == []
