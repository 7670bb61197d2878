"""Both backends, through the engine: quotas, one session per user, rate limits, expiry, reconnects.

Every case runs on the memory backend and on a real redis-server (tests/redisserver.py), so the
Lua script and tracking.apply are held to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.engine import StateBinding, decide
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Op, Outcome
from policyd.state.backend import Backend, FrpsClient, FrpsProxy, FrpsView
from policyd.state.memory import MemoryBackend
from policyd.state.redisstore import RedisBackend
from policyd.state.tracking import PROXY_FIELDS, SESSION_FIELDS, Expiry, Preset
from tests.redisserver import RedisServer
from tests.support import write_policy

T0 = 1_700_000_000.0
EXPIRY = Expiry(idle_s=60, pending_s=10, proxy_idle_s=0)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend(EXPIRY)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    b = RedisBackend(server.url, EXPIRY, 1.0, "test-replica")
    yield b
    b.close()


def policy(tmp_path: Path, **files: str) -> Policy:
    return load_policy(write_policy(tmp_path, {f"{op}.rules": text for op, text in files.items()}))


def login(user: str, run_id: str = "", address: str = "203.0.113.5:40000") -> dict[str, Any]:
    return {
        "version": "0.70.0",
        "user": user,
        "run_id": run_id,
        "client_address": address,
        "privilege_key": "k",
    }


def new_proxy(
    user: str, name: str, run_id: str = "run-a", port: int = 0, type_: str = "tcp"
) -> dict[str, Any]:
    return {
        "user": {"user": user, "metas": {}, "run_id": run_id},
        "proxy_name": f"{user}.{name}",
        "proxy_type": type_,
        "remote_port": port,
    }


def user_op(user: str, rid: str, **more: Any) -> dict[str, Any]:
    return {"user": {"user": user, "metas": None, "run_id": rid}, **more}


def run(p: Policy, b: Backend, op: Op, content: dict[str, Any], at: float, recording: bool = True) -> Outcome:
    return decide(p, op, content, now=at, state=StateBinding(b, recording)).outcome


QUOTA = 'reject "at most 2 proxies per user" when len(proxies(user.user)) >= 2\n'
ONE_CLIENT = (
    'reject "one client per user" when any(s.run_id != content.run_id for s in sessions(user.user))\n'
)


def test_a_proxy_quota_holds_and_a_closed_proxy_frees_its_slot(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, NewProxy=QUOTA)
    assert run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a"), T0) is Outcome.ALLOW
    assert run(p, backend, Op.NEW_PROXY, new_proxy("alice", "b"), T0 + 1) is Outcome.ALLOW
    decision = decide(p, Op.NEW_PROXY, new_proxy("alice", "c"), now=T0 + 2, state=StateBinding(backend))
    assert decision.outcome is Outcome.REJECT and decision.reason == "at most 2 proxies per user"
    assert run(p, backend, Op.NEW_PROXY, new_proxy("bob", "a"), T0 + 2) is Outcome.ALLOW  # per user
    run(p, backend, Op.CLOSE_PROXY, user_op("alice", "run-a", proxy_name="alice.a"), T0 + 3)
    assert run(p, backend, Op.NEW_PROXY, new_proxy("alice", "c"), T0 + 4) is Outcome.ALLOW
    names = [x["name"] for x in backend.snapshot(T0 + 5)["alice"].proxies]
    assert names == ["alice.b", "alice.c"]


def test_a_retried_new_proxy_of_the_same_name_is_not_counted_against_itself(
    tmp_path: Path, backend: Backend
) -> None:
    p = policy(tmp_path, NewProxy=QUOTA)
    run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a"), T0)
    run(p, backend, Op.NEW_PROXY, new_proxy("alice", "b"), T0)
    # frpc retries a proxy frps failed: the proxy being decided is not in proxies().
    assert run(p, backend, Op.NEW_PROXY, new_proxy("alice", "b"), T0 + 30) is Outcome.ALLOW


def test_proxies_show_the_recorded_fields_as_rewritten(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, NewProxy="set content.remote_port = 6001 when content.remote_port == 0\n")
    # Rules that read nothing still track when another file reads state.
    p2 = policy(tmp_path / "2", NewProxy="set content.remote_port = 6001 when content.remote_port == 0\n",
                Login=ONE_CLIENT)  # fmt: skip
    assert p.tracks_sessions is False and p2.tracks_sessions is True
    run(p2, backend, Op.NEW_PROXY, new_proxy("alice", "ssh", run_id="r1"), T0)
    (proxy,) = backend.snapshot(T0 + 1)["alice"].proxies
    assert proxy == {
        "name": "alice.ssh",
        "type": "tcp",
        "remote_port": 6001,
        "subdomain": "",
        "custom_domains": [],
        "run_id": "r1",
        "since": int(T0),
    }
    # What rules see is the documented field list, in its order (tracking writes each out).
    assert tuple(proxy) == PROXY_FIELDS
    (session,) = backend.snapshot(T0 + 1)["alice"].sessions
    assert tuple(session) == SESSION_FIELDS


def test_one_client_per_user_refuses_a_second_client(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, Login=ONE_CLIENT)
    assert run(p, backend, Op.LOGIN, login("alice"), T0) is Outcome.ALLOW
    # Still pending (frps has not revealed the run_id yet): a second fresh client is refused too.
    assert run(p, backend, Op.LOGIN, login("alice"), T0 + 0.1) is Outcome.REJECT
    run(p, backend, Op.NEW_WORK_CONN, user_op("alice", "run-1", run_id="run-1"), T0 + 0.2)
    (session,) = backend.snapshot(T0 + 1)["alice"].sessions
    assert session["run_id"] == "run-1" and session["client_address"] == "203.0.113.5:40000"
    assert run(p, backend, Op.LOGIN, login("alice", address="198.51.100.9:1"), T0 + 5) is Outcome.REJECT
    assert run(p, backend, Op.LOGIN, login("bob"), T0 + 5) is Outcome.ALLOW


def test_a_reconnect_with_its_run_id_replaces_its_session_and_drops_its_proxies(
    tmp_path: Path, backend: Backend
) -> None:
    p = policy(tmp_path, Login=ONE_CLIENT, NewProxy=QUOTA)
    run(p, backend, Op.LOGIN, login("alice"), T0)
    run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a", run_id="run-1"), T0 + 1)
    # frps restarted: the client logs in again with its run_id; that is not a second client.
    assert run(p, backend, Op.LOGIN, login("alice", run_id="run-1"), T0 + 100) is Outcome.ALLOW
    state = backend.snapshot(T0 + 101)["alice"]
    assert [s["run_id"] for s in state.sessions] == ["run-1"] and state.proxies == []


def test_a_session_expires_after_idle_only_once_its_proxies_closed(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, Login=ONE_CLIENT, NewProxy=QUOTA)
    run(p, backend, Op.LOGIN, login("alice", run_id="run-1"), T0)
    run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a", run_id="run-1"), T0 + 1)
    # No heartbeats (frp >= 0.58): the proxy keeps the session alive.
    assert [s["run_id"] for s in backend.snapshot(T0 + 500)["alice"].sessions] == ["run-1"]
    run(p, backend, Op.CLOSE_PROXY, user_op("alice", "run-1", proxy_name="alice.a"), T0 + 501)
    assert backend.snapshot(T0 + 501) == {}  # idle since T0 + 1 and no proxy left
    assert run(p, backend, Op.LOGIN, login("alice"), T0 + 502) is Outcome.ALLOW


def test_heartbeats_keep_a_session_without_proxies_alive(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, Login=ONE_CLIENT)
    run(p, backend, Op.LOGIN, login("alice", run_id="run-1"), T0)
    for t in range(20, 200, 20):
        run(p, backend, Op.PING, user_op("alice", "run-1"), T0 + t)
    assert "alice" in backend.snapshot(T0 + 230)
    assert backend.snapshot(T0 + 300) == {}


def test_a_pending_session_ends_when_frps_never_confirms_it(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, Login=ONE_CLIENT)
    run(p, backend, Op.LOGIN, login("alice"), T0)  # frps then refused it (a bad token)
    assert run(p, backend, Op.LOGIN, login("alice"), T0 + 5) is Outcome.REJECT
    assert run(p, backend, Op.LOGIN, login("alice"), T0 + 16) is Outcome.ALLOW


def test_without_close_proxy_proxies_end_with_their_silent_session(tmp_path: Path) -> None:
    b = MemoryBackend(Expiry(idle_s=60, pending_s=10, proxy_idle_s=90))  # frps < 0.40
    p = policy(tmp_path, NewProxy=QUOTA)
    run(p, b, Op.NEW_PROXY, new_proxy("alice", "a", run_id="run-1"), T0)
    run(p, b, Op.PING, user_op("alice", "run-1"), T0 + 60)
    assert len(b.snapshot(T0 + 100)["alice"].proxies) == 1
    assert b.snapshot(T0 + 151) == {}


def test_rate_counts_every_evaluation_within_its_window(tmp_path: Path, backend: Backend) -> None:
    p = policy(
        tmp_path, Login='reject "slow down" when not rate("login:" + content.client_address, 3, "1m")\n'
    )
    outcomes = [run(p, backend, Op.LOGIN, login(f"u{i}"), T0 + i) for i in range(5)]
    assert outcomes == [Outcome.ALLOW] * 3 + [Outcome.REJECT] * 2
    assert backend.hits("login:203.0.113.5:40000", 60, T0 + 5) == 5  # refused ones count too
    assert run(p, backend, Op.LOGIN, login("u9"), T0 + 63.5) is Outcome.ALLOW  # the first 3 left


def test_hits_reads_without_counting_and_makes_a_lockout(tmp_path: Path, backend: Backend) -> None:
    rules = (
        'reject "locked out" when hits("bad:" + user.user, "15m") >= 2\n'
        'reject "bad token" when content.privilege_key != "good" '
        'and (rate("bad:" + user.user, 2, "15m") or True)\n'
    )
    p = policy(tmp_path, Login=rules)
    bad, good = {**login("alice"), "privilege_key": "x"}, {**login("alice"), "privilege_key": "good"}
    reasons = [decide(p, Op.LOGIN, c, now=T0 + i, state=StateBinding(backend)).reason for i, c in
               enumerate([bad, bad, good, bad])]  # fmt: skip
    assert reasons == ["bad token", "bad token", "locked out", "locked out"]
    assert backend.hits("bad:alice", 900, T0 + 10) == 2


def test_the_non_recording_view_changes_nothing_and_rate_answers_as_if_it_counted(
    tmp_path: Path, backend: Backend
) -> None:
    p = policy(
        tmp_path,
        Login='reject "slow" when not (rate("k", 2, "1m") and rate("k", 2, "1m") and rate("k", 2, "1m"))\n',
        NewProxy=QUOTA,
    )
    assert run(p, backend, Op.LOGIN, login("alice"), T0, recording=False) is Outcome.REJECT  # third call
    assert backend.hits("k", 60, T0) == 0 and backend.snapshot(T0) == {}
    assert run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a"), T0, recording=False) is Outcome.ALLOW
    assert backend.snapshot(T0 + 1) == {}


def test_presets_load_proxies_sessions_and_hits(tmp_path: Path, backend: Backend) -> None:
    preset = Preset.parse(
        {
            "proxies": {
                "alice": [{"name": "alice.a", "type": "tcp", "remote_port": 6000}, {"name": "alice.b"}]
            },
            "sessions": {"alice": [{"run_id": "r1", "client_address": "1.2.3.4:5"}]},
            "rates": {"login:1.2.3.4": 10},
        },
        T0,
    )
    backend.preset(preset, T0)
    p = policy(tmp_path, NewProxy=QUOTA, Login='reject "slow" when not rate("login:1.2.3.4", 10, "1m")\n')
    assert run(p, backend, Op.NEW_PROXY, new_proxy("alice", "c"), T0 + 1) is Outcome.REJECT
    assert run(p, backend, Op.LOGIN, login("bob"), T0 + 1) is Outcome.REJECT
    assert backend.snapshot(T0 + 1)["alice"].sessions[0]["client_address"] == "1.2.3.4:5"


def test_a_held_port_is_refused_with_its_holders_name(tmp_path: Path, backend: Backend) -> None:
    rules = (
        "let holders = [u for u in data.users if any(p.remote_port == content.remote_port "
        "for p in proxies(u))]\n"
        'reject "port {content.remote_port} is held by {holders[0]}" '
        "when content.remote_port and holders and holders[0] != user.user\n"
    )
    p = load_policy(write_policy(tmp_path, {"NewProxy.rules": rules, "data/users.json": '["alice", "bob"]'}))
    assert p.rules[Op.NEW_PROXY].reads_other_users
    run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a", port=6000), T0)
    d = decide(p, Op.NEW_PROXY, new_proxy("bob", "b", port=6000), now=T0 + 1, state=StateBinding(backend))
    assert (d.outcome, d.reason) == (Outcome.REJECT, "port 6000 is held by alice")


def test_reconcile_drops_what_frps_lacks_and_adds_what_it_has(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, NewProxy=QUOTA, Login=ONE_CLIENT)
    run(p, backend, Op.LOGIN, login("alice", run_id="r1"), T0)
    run(p, backend, Op.NEW_PROXY, new_proxy("alice", "a", run_id="r1", port=6000), T0)  # frps failed it
    view = FrpsView(
        proxies=(FrpsProxy("bob", "bob.web", "http", subdomain="bob", run_id="r2"),),
        clients=(FrpsClient("alice", "r1", "203.0.113.5:40000"), FrpsClient("bob", "r2", "198.51.100.1:2")),
    )
    result = backend.replace_from_frps(view, T0 + 60)
    assert (result.dropped_proxies, result.added_proxies, result.added_sessions) == (1, 1, 1)
    snap = backend.snapshot(T0 + 61)
    assert snap["alice"].proxies == [] and [s["run_id"] for s in snap["alice"].sessions] == ["r1"]
    assert snap["bob"].proxies[0]["name"] == "bob.web" and snap["bob"].sessions[0]["run_id"] == "r2"


def test_a_team_sum_over_redis_reads_every_member_in_the_locks_round_trip(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.flush()
    backend = RedisBackend(redis_server.url, EXPIRY, 1.0, "test-replica")
    rules = (
        "let team = user.metas.team\n"
        'reject "team {team} is full" when sum(len(proxies(u)) for u in data.teams[team]) >= 3\n'
    )
    files = {"NewProxy.rules": rules, "data/teams.json": '{"red": ["alice", "bob", "carol", "dave"]}'}
    p = load_policy(write_policy(tmp_path, files))

    def ask(user: str, name: str) -> Outcome:
        content = {**new_proxy(user, name), "user": {"user": user, "metas": {"team": "red"}, "run_id": "r"}}
        before = sum(backend.stats.latency_counts)
        outcome = decide(p, Op.NEW_PROXY, content, now=T0, state=StateBinding(backend)).outcome
        assert sum(backend.stats.latency_counts) - before == 2  # lock + every read; record + unlock
        return outcome

    assert [ask(u, "a") for u in ("alice", "bob", "carol", "dave")] == [Outcome.ALLOW] * 3 + [Outcome.REJECT]
    backend.close()


def test_rate_counts_show_each_keys_hits_and_period(tmp_path: Path, backend: Backend) -> None:
    p = policy(tmp_path, Login='reject "slow" when not rate("login:" + content.user, 5, "1m")\n')
    for i in range(3):
        run(p, backend, Op.LOGIN, login("alice"), T0 + i)
    run(p, backend, Op.LOGIN, login("bob"), T0 + 3)
    counts = backend.rate_counts(T0 + 4, "login:")
    assert {k: (c.count, c.per_s) for k, c in counts.items()} == {
        "login:alice": (3, 60.0),
        "login:bob": (1, 60.0),
    }
    assert list(backend.rate_counts(T0 + 4, "login:", limit=1)) == ["login:alice"]
