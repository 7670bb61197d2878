"""Resource bounds: request size, per-request time, memory with large data, and no leaks on reload."""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policyd.engine import decide
from policyd.errors import PolicyLoadError
from policyd.policy import MAX_POLICY_FILE_BYTES, load_policy
from policyd.rules.decision import Op
from policyd.rules.functions import _re2, regex
from policyd.rules.sandbox import REGEX_CACHE_SIZE
from policyd.service.store import PolicyStore
from tests.support import SHIPPED_POLICIES, PolicydProcess, fixture, write_policy

Start = Callable[..., PolicydProcess]
POLICY_ERROR = {"reject": True, "reject_reason": "policy error"}


def test_chunked_body_over_the_limit_is_413_and_the_server_keeps_serving(policyd_server: Start) -> None:
    """Without a Content-Length the limit is enforced while streaming, not after buffering it all."""
    server = policyd_server(SHIPPED_POLICIES, "--max-body-bytes", "1000")

    def chunks() -> Iterator[bytes]:
        yield b'{"op": "Ping", "content": {"user": {"user": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}}}'

    response = server.client.post("/handler", params={"op": "Ping"}, content=chunks())
    assert response.status_code == 413
    assert "exceeds the limit of 1000 bytes" in response.json()["error"]
    assert server.post(fixture("Ping-basic")).json() == {"reject": False, "unchange": True}


def test_a_rule_over_the_time_budget_fails_closed_over_http(policyd_server: Start, tmp_path: Path) -> None:
    slow = 'reject "x" when len([1 for a in range(10000) for b in range(10000) if a == b + 1]) >= 0'
    policies = write_policy(tmp_path / "p", {"Ping.rules": slow, "Login.rules": 'reject "fast"'})
    server = policyd_server(policies, "--eval-budget-ms", "20")
    assert server.post(fixture("Ping-basic")).json() == POLICY_ERROR
    server.wait_for_log("out of time")
    assert server.post(fixture("Login-basic")).json() == {"reject": True, "reject_reason": "fast"}


def big_data(tmp_path: Path) -> tuple[Path, int]:
    """A policy over ~4 MB of JSON data: a ban list and a per-user table."""
    data = {
        "users": [f"user-{i:07d}" for i in range(100_000)],
        "teams": {f"user-{i:07d}": {"team": f"t{i % 50}", "ports": [6000 + i % 1000]} for i in range(50_000)},
    }
    raw = json.dumps(data)
    rules = (
        "let t = data.big.teams.get(user.user, {})\n"
        'reject "banned" when user.user in data.big.users\n'
        'reject "team {t}" when t\n'
    )
    return write_policy(tmp_path / "p", {"data/big.json": raw, "NewProxy.rules": rules}), len(raw)


def test_memory_with_a_large_data_file_is_bounded(tmp_path: Path) -> None:
    policies, size = big_data(tmp_path)
    tracemalloc.start()
    try:
        policy = load_policy(policies)
        loaded, peak = tracemalloc.get_traced_memory()
        assert peak < 25 * size, f"loading {size} bytes peaked at {peak} bytes"
        assert loaded < 10 * size, f"{size} bytes of data hold {loaded} bytes"
        for i in range(50):  # warm caches
            decide(policy, Op.NEW_PROXY, {"user": {"user": f"user-{i:07d}"}})
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(500):
            decide(policy, Op.NEW_PROXY, {"user": {"user": f"user-{i:07d}"}})
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1_000_000, f"500 decisions kept {after - before} bytes"
    assert peak - before < 1_000_000, f"one decision over big data allocated {peak - before} bytes"


def test_data_file_over_the_size_limit_is_refused_with_its_name(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"', "data/huge.json": ""})
    os.truncate(policies / "data" / "huge.json", MAX_POLICY_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(PolicyLoadError) as info:
        load_policy(policies)
    error = info.value.errors[0]
    assert error.location is not None and error.location.file == "data/huge.json"
    assert "the limit is" in error.message


def test_regex_cache_stays_bounded() -> None:
    for i in range(REGEX_CACHE_SIZE * 3):
        regex(f"^user-{i}-[a-z]+$", "user-1-x")
    assert _re2.cache_info().currsize <= REGEX_CACHE_SIZE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_reloads_leak_no_file_descriptors_or_threads(tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "p",
        {"Ping.rules": 'reject "a" when user.user in data.bans.users', "data/bans.toml": 'users = ["a"]'},
    )
    store = PolicyStore(policies)
    store.reload()
    fds, threads = open_fds(), threading.active_count()
    for i in range(1000):
        if i % 2:
            (policies / "Ping.rules").write_text(f'reject "v{i}" when user.user in data.bans.users')
        elif i % 10 == 0:
            (policies / "data" / "bans.toml").write_text("users = [")  # a failed reload, too
        else:
            (policies / "data" / "bans.toml").write_text(f'users = ["u{i}"]')
        store.reload((f"edit {i}",))
    assert (open_fds(), threading.active_count()) == (fds, threads)
    assert store.stats.successes > 500 and store.stats.failures >= 50
