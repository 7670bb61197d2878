"""`policyd eval --state-preset`, test cases that preset state, `policyd state`, and the parsing of
frps's API answers (shapes from frp's server/http/model: v0.70's /api/v2/*, older /api/proxy/{type})."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from policyd.cli import main
from policyd.state.frpsapi import NotFound, read_frps
from tests.redisserver import RedisServer
from tests.support import PolicydProcess, write_policy

QUOTA = 'reject "at most 1 proxy per user" when len(proxies(user.user)) >= 1\n'
NEW_PROXY = {
    "user": {"user": "alice", "metas": {}, "run_id": "r"},
    "proxy_name": "alice.b",
    "proxy_type": "tcp",
}


def test_eval_decides_with_a_preset_state(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": QUOTA})
    preset = tmp_path / "state.toml"
    preset.write_text('[[proxies.alice]]\nname = "alice.a"\n')
    args = ["eval", "--policies", str(policies), "--op", "NewProxy", "--content", json.dumps(NEW_PROXY)]
    empty = CliRunner().invoke(main, args)
    assert empty.exit_code == 0 and json.loads(empty.output.splitlines()[0]) == {
        "reject": False,
        "unchange": True,
    }
    full = CliRunner().invoke(main, [*args, "--state-preset", str(preset)])
    assert json.loads(full.output.splitlines()[0])["reject_reason"] == "at most 1 proxy per user"


def test_a_test_case_presets_state(tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path,
        {
            "NewProxy.rules": QUOTA,
            "tests/quota.toml": (
                'op = "NewProxy"\n[[case]]\nname = "second proxy"\n'
                "content = { user = { user = 'alice', run_id = 'r' }, proxy_name = 'alice.b' }\n"
                'state = { proxies = { alice = [{ name = "alice.a" }] } }\nexpect = "reject"\n'
                '[[case]]\nname = "first proxy"\n'
                "content = { user = { user = 'alice', run_id = 'r' }, proxy_name = 'alice.b' }\n"
                'expect = "allow"\n'
                '[[case]]\nname = "bad preset"\ncontent = {}\nstate = { proxy = {} }\nexpect = "allow"\n'
            ),
        },
    )
    result = CliRunner().invoke(main, ["test", str(policies)])
    assert "2 passed, 1 failed" in result.output and "unknown key 'proxy'" in result.output


def test_policyd_state_lists_a_running_services_memory_state(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": QUOTA})
    proc = PolicydProcess(policies, tmp_path / "log", "--decision-log", "off").wait_ready()
    try:
        assert (
            proc.post({"version": "0.1.0", "op": "NewProxy", "content": NEW_PROXY}).json()["reject"] is False
        )
        result = CliRunner().invoke(main, ["state", "--url", proc.url, "--format", "json"])
        assert result.exit_code == 0, result.output
        (proxy,) = json.loads(result.output)["users"]["alice"]["proxies"]
        assert proxy["name"] == "alice.b"
    finally:
        proc.stop()


def test_policyd_state_reads_redis_directly(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flush()
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": QUOTA})
    proc = PolicydProcess(policies, tmp_path / "log", "--state", redis_server.url).wait_ready()
    try:
        proc.post({"version": "0.1.0", "op": "NewProxy", "content": NEW_PROXY})
    finally:
        proc.stop()
    result = CliRunner().invoke(main, ["state", "--state", redis_server.url])
    assert (
        result.exit_code == 0 and "alice: 1 session(s), 1 proxy(ies)"
    )  # the session learnt from its NewProxy in result.output
    assert "proxy alice.b tcp" in result.output


def test_policyd_state_says_when_it_cannot_reach_the_service() -> None:
    result = CliRunner().invoke(main, ["state", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot read state" in result.output


# -- frps's API -------------------------------------------------------------------------------
V2_CLIENTS = {
    "total": 1,
    "page": 1,
    "pageSize": 500,
    "items": [
        {
            "key": "k1",
            "user": "alice",
            "clientID": "c1",
            "runID": "run-1",
            "hostname": "h",
            "clientIP": "203.0.113.5",
            "firstConnectedAt": 1,
            "lastConnectedAt": 2,
            "online": True,
            "status": {"phase": "online", "curConns": 0, "proxyCount": 2},
        },
        {
            "key": "k2",
            "user": "bob",
            "clientID": "c2",
            "runID": "run-2",
            "hostname": "h",
            "online": False,
            "firstConnectedAt": 1,
            "lastConnectedAt": 2,
        },
    ],
}
V2_PROXIES = {
    "total": 2,
    "page": 1,
    "pageSize": 500,
    "items": [
        {
            "name": "alice.ssh",
            "type": "tcp",
            "user": "alice",
            "clientID": "c1",
            "spec": {"name": "ssh", "type": "tcp", "remotePort": 6022},
            "status": {"phase": "online", "curConns": 1},
        },
        {
            "name": "alice.web",
            "type": "http",
            "user": "alice",
            "clientID": "c1",
            "spec": {"customDomains": ["a.example.com"], "subdomain": "a"},
            "status": {"phase": "offline"},
        },
    ],
}
OLD_TCP = {
    "proxies": [
        {
            "name": "alice.ssh",
            "conf": {"proxy_name": "alice.ssh", "proxy_type": "tcp", "remote_port": 6022},
            "todayTrafficIn": 0,
            "todayTrafficOut": 0,
            "curConns": 0,
            "lastStartTime": "",
            "lastCloseTime": "",
            "status": "online",
        },
        {"name": "bob.db", "conf": None, "status": "offline"},
    ]
}


def fetcher(answers: dict[str, Any]) -> Any:
    def fetch(path: str) -> Any:
        key, _, query = path.partition("?")
        if key.startswith("/api/v2/"):  # frps answers 400 to a page over 200
            assert "pageSize=200" in query, path
        if key not in answers:
            raise NotFound(path)
        return answers[key]

    return fetch


def test_v070_api_lists_online_proxies_and_clients_with_their_run_ids() -> None:
    view = read_frps(fetcher({"/api/v2/clients": V2_CLIENTS, "/api/v2/proxies": V2_PROXIES}))
    assert [(c.user, c.run_id, c.client_address) for c in view.clients or ()] == [
        ("alice", "run-1", "203.0.113.5")
    ]
    (proxy,) = view.proxies
    assert (proxy.user, proxy.name, proxy.type, proxy.remote_port, proxy.run_id) == (
        "alice", "alice.ssh", "tcp", 6022, "run-1"
    )  # fmt: skip


def test_v2_pages_are_read_until_the_total() -> None:
    items = [
        {"name": f"u.p{i}", "type": "tcp", "user": "u", "status": {"phase": "online"}} for i in range(450)
    ]
    pages = {}

    def fetch(path: str) -> Any:
        key, _, query = path.partition("?")
        params = dict(p.split("=") for p in query.split("&"))
        page, size = int(params["page"]), int(params["pageSize"])
        pages[key] = page
        chosen = items if key == "/api/v2/proxies" else []
        return {"total": len(chosen), "page": page, "pageSize": size,
                "items": chosen[(page - 1) * size : page * size]}  # fmt: skip

    view = read_frps(fetch)
    assert len(view.proxies) == 450 and pages["/api/v2/proxies"] == 3


def test_old_api_lists_proxies_per_type_and_no_clients() -> None:
    view = read_frps(fetcher({"/api/proxy/tcp": OLD_TCP, "/api/proxy/http": {"proxies": None}}))
    assert view.clients is None
    assert [(p.user, p.name, p.remote_port) for p in view.proxies] == [("alice", "alice.ssh", 6022)]


@pytest.mark.parametrize("bad", [[], {"items": "x"}, {"proxies": 3}])
def test_an_unexpected_answer_is_an_error(bad: Any) -> None:
    from policyd.state.frpsapi import FrpsApiError

    with pytest.raises(FrpsApiError):
        read_frps(fetcher({"/api/v2/clients": bad, "/api/v2/proxies": bad, "/api/proxy/tcp": bad}))


def test_the_state_session_in_cli_md_is_what_policyd_state_prints(redis_server: RedisServer) -> None:
    from policyd.state.redisstore import RedisBackend
    from policyd.state.tracking import Expiry, Preset
    from tests.test_docs import session

    redis_server.flush()
    since, run_id = 1764590000, "3f1c0a7d9e2b4c6a"
    preset = {
        "sessions": {"alice": [{"run_id": run_id, "client_address": "203.0.113.5:40000", "since": since}]},
        "proxies": {
            "alice": [
                {"name": "alice.ssh", "type": "tcp", "remote_port": 6022, "run_id": run_id, "since": since},
                {"name": "alice.web", "type": "http", "run_id": run_id, "since": since + 1},
            ]
        },
    }
    backend = RedisBackend(redis_server.url, Expiry(), 1.0, "docs")
    backend.preset(Preset.parse(preset, since), since)
    backend.renew()  # the writing replica is alive: its entries are live
    backend.close()
    result = CliRunner().invoke(main, ["state", "--state", redis_server.url, "--user", "alice"])
    assert result.stdout.splitlines() == session("cli.md", "policyd state --user alice")


def test_the_consoles_live_state_snapshot_has_the_shape_it_documents(tmp_path: Path) -> None:
    import time

    from policyd.service.settings import Settings
    from policyd.service.statesvc import StateService
    from policyd.state.tracking import Preset

    service = StateService(Settings(policies=tmp_path))
    now = time.time()
    service.backend.preset(
        Preset.parse(
            {"proxies": {u: [{"name": f"{u}.ssh", "remote_port": 6022}] for u in ("alice", "bob")}}, now
        ),
        now,
    )
    for _ in range(3):
        service.backend.rate("login:203.0.113.7", 10, 60, now)
    doc = service.snapshot(1)
    assert set(doc) == {"backend", "healthy", "detail", "users", "rates", "truncated"}
    assert (doc["backend"], doc["healthy"], doc["truncated"]) == ("memory", True, True)
    (user,) = doc["users"]
    assert user["user"] == "alice" and user["proxies"][0]["name"] == "alice.ssh" and user["sessions"] == []
    assert doc["rates"] == [{"key": "login:203.0.113.7", "count": 3, "per_s": 60}]
    assert json.loads(json.dumps(doc)) == doc
