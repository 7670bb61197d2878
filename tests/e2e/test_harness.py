"""The e2e harness's parts that need no frp binaries: versions, config writers, log patterns.

These run everywhere (CI has no frp binaries), so a config the harness would write wrong for
v0.33 or v0.70 fails here first.
"""

from __future__ import annotations

import configparser
import time
import tomllib

import pytest

from policyd.rules.decision import Op
from policyd.rules.schema import FrpsVersion
from policyd.tools.frpsconfig import version_in_output
from tests.e2e.harness import (
    LOOPBACK,
    FrpcSettings,
    FrpsSettings,
    Proxy,
    frpc_config,
    frps_config,
    http_proxy,
    login_refused,
    login_succeeded,
    plugin_ops,
    pong_refused,
    proxy_label,
    proxy_refused,
    tcp_proxy,
    wait_settled,
)
from tests.support import decision_lines

V033, V070 = FrpsVersion(0, 33, 0), FrpsVersion(0, 70, 0)


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("0.33.0\n", V033),
        ("0.70.0", V070),
        ("frps version v0.52.1 (built with go1.22)\n", FrpsVersion(0, 52, 1)),
    ],
)
def test_the_version_comes_from_frps_version_output(output: str, version: FrpsVersion) -> None:
    assert version_in_output(output) == version


def test_output_without_a_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="no frp version in 'flag provided but not defined'"):
        version_in_output("flag provided but not defined")


def test_old_frps_is_asked_only_for_the_ops_it_sends_once() -> None:
    # v0.33: no CloseProxy, and NewWorkConn would only double its Ping calls.
    assert plugin_ops(V033) == [Op.LOGIN, Op.NEW_PROXY, Op.PING, Op.NEW_USER_CONN]
    assert plugin_ops(V070) == list(Op)


def frps_settings(ops: list[Op]) -> FrpsSettings:
    return FrpsSettings(
        bind_port=7000, vhost_http_port=8080, subdomain_host="e2e.test", plugin_addr="127.0.0.1:9000", ops=ops
    )


def test_frps_070_gets_toml_with_the_plugin_table_after_every_top_level_key() -> None:
    name, text = frps_config(V070, frps_settings(plugin_ops(V070)))
    doc = tomllib.loads(text)
    assert name == "frps.toml"
    assert doc == {
        "bindAddr": LOOPBACK,
        "bindPort": 7000,
        "proxyBindAddr": LOOPBACK,
        "vhostHTTPPort": 8080,
        "subDomainHost": "e2e.test",
        "log": {"disablePrintColor": True},
        "httpPlugins": [
            {
                "name": "policyd",
                "addr": "127.0.0.1:9000",
                "path": "/handler",
                "ops": ["Login", "NewProxy", "CloseProxy", "Ping", "NewWorkConn", "NewUserConn"],
            }
        ],
    }


def test_frps_033_gets_ini_with_a_plugin_section() -> None:
    name, text = frps_config(V033, frps_settings(plugin_ops(V033)))
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert name == "frps.ini"
    assert dict(parser["common"]) == {
        "bind_addr": LOOPBACK,
        "bind_port": "7000",
        "proxy_bind_addr": LOOPBACK,
        "vhost_http_port": "8080",
        "subdomain_host": "e2e.test",
        "disable_log_color": "true",
    }
    assert dict(parser["plugin.policyd"]) == {
        "addr": "127.0.0.1:9000",
        "path": "/handler",
        "ops": "Login,NewProxy,Ping,NewUserConn",
    }


def frpc_settings(heartbeat: int | None = None) -> FrpcSettings:
    return FrpcSettings(
        server_port=7000,
        user="alice",
        metas={"team": "red", "token": "tk"},
        admin_port=7400,
        proxies={
            "ssh": tcp_proxy(2222, 6022),
            "blog": http_proxy(8000, subdomain="blog"),
            "site": Proxy(
                "http", 8001, custom_domains=("a.example.org", "b.example.org"), metas={"owner": "x"}
            ),
        },
        heartbeat_interval=heartbeat,
    )


def test_frpc_070_gets_toml_with_metadatas_heartbeats_admin_api_and_proxies() -> None:
    name, text = frpc_config(V070, frpc_settings(heartbeat=1))
    doc = tomllib.loads(text)
    assert name == "frpc.toml"
    assert {k: v for k, v in doc.items() if k != "proxies"} == {
        "serverAddr": LOOPBACK,
        "serverPort": 7000,
        "user": "alice",
        "loginFailExit": True,
        "metadatas": {"team": "red", "token": "tk"},
        "transport": {"heartbeatInterval": 1},
        "webServer": {"addr": LOOPBACK, "port": 7400},
        "log": {"disablePrintColor": True},
    }
    assert doc["proxies"] == [
        {"name": "ssh", "type": "tcp", "localIP": LOOPBACK, "localPort": 2222, "remotePort": 6022},
        {"name": "blog", "type": "http", "localIP": LOOPBACK, "localPort": 8000, "subdomain": "blog"},
        {
            "name": "site",
            "type": "http",
            "localIP": LOOPBACK,
            "localPort": 8001,
            "customDomains": ["a.example.org", "b.example.org"],
            "metadatas": {"owner": "x"},
        },
    ]


def test_frpc_070_sends_heartbeats_only_when_asked() -> None:
    assert "transport" not in tomllib.loads(frpc_config(V070, frpc_settings())[1])


def test_frpc_033_gets_ini_with_meta_keys_and_proxy_sections() -> None:
    name, text = frpc_config(V033, frpc_settings(heartbeat=1))
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert name == "frpc.ini"
    assert dict(parser["common"]) == {
        "server_addr": LOOPBACK,
        "server_port": "7000",
        "user": "alice",
        "login_fail_exit": "true",
        "meta_team": "red",
        "meta_token": "tk",
        "heartbeat_interval": "1",
        "admin_addr": LOOPBACK,
        "admin_port": "7400",
        "disable_log_color": "true",
    }
    assert dict(parser["ssh"]) == {
        "type": "tcp",
        "local_ip": LOOPBACK,
        "local_port": "2222",
        "remote_port": "6022",
    }
    assert dict(parser["site"])["custom_domains"] == "a.example.org,b.example.org"
    assert dict(parser["site"])["meta_owner"] == "x"


def test_a_client_without_user_writes_none() -> None:
    settings = FrpcSettings(server_port=1, user="", metas={}, admin_port=2, proxies={})
    assert "user" not in tomllib.loads(frpc_config(V070, settings)[1])
    assert "user =" not in frpc_config(V033, settings)[1]


# What frpc prints, from logs of both releases (shared/frp/README.md).
V033_LOGIN = "2020/05/01 12:00:00 [E] [service.go:96] login to server failed: team red needs metadatas.token"
V070_LOGIN = (
    "2026-01-01 12:00:00.000 [E] [client/service.go:341] login to the server failed: team red needs "
    "metadatas.token. With loginFailExit enabled, no additional retries will be attempted"
)


@pytest.mark.parametrize("line", [V033_LOGIN, V070_LOGIN])
def test_a_refused_login_is_found_in_either_releases_words(line: str) -> None:
    assert login_refused("team red needs metadatas.token").search(line)
    assert not login_refused("team blue needs metadatas.token").search(line)
    assert not login_succeeded().search(line)


@pytest.mark.parametrize(
    "line",
    [
        "2020/05/01 12:00:00 [I] [service.go:282] [fa4bb5206ded3c43] login to server success, get run id [x]",
        "2026-01-01 12:00:00.000 [I] [client/service.go:295] [83c70c41] "
        "login to the server success, get run id [x]",
    ],
)
def test_a_login_is_found_in_either_releases_words(line: str) -> None:
    assert login_succeeded().search(line)


@pytest.mark.parametrize(
    "line",
    [
        "2020/05/01 12:00:00 [W] [control.go:179] [fa4bb5206ded3c43] [alice.far] "
        "start error: ports are 1-2 (asked for 3)",
        "2026-01-01 12:00:00.000 [W] [proxy/proxy_manager.go:144] [83c70c41] [alice.far] "
        "start error: ports are 1-2 (asked for 3)",
    ],
)
def test_a_refused_proxy_is_found_by_its_label_and_reason(line: str) -> None:
    assert proxy_refused("alice", "far", "ports are 1-2 (asked for 3)").search(line)
    assert proxy_refused("alice", "far", "ports are 1-2 (asked for 3)").search(
        line.replace("alice.far", "far")
    )
    assert not proxy_refused("", "far", "ports are 1-2 (asked for 3)").search(line)
    assert not proxy_refused("alice", "far", "ports are 1-3 (asked for 3)").search(line)
    assert proxy_label("alice", "far") == "alice.far" and proxy_label("", "far") == "far"


@pytest.mark.parametrize(
    "line",
    [
        "2020/05/01 12:00:00 [E] [control.go:327] [fa4bb5206ded3c43] "
        "Pong contains error: heartbeat refused: alice is banned",
        "2026-01-01 12:00:00.000 [E] [client/control.go:270] [83c70c41] "
        "pong message contains error: heartbeat refused: alice is banned",
    ],
)
def test_a_refused_heartbeat_is_found_in_either_releases_words(line: str) -> None:
    assert pong_refused("heartbeat refused: alice is banned").search(line)


def test_decision_lines_skip_a_half_written_last_line() -> None:
    text = '{"op":"Ping","policy_version":"v"}\nuvicorn says hello\n{"op":"Login","policy_ver'
    assert decision_lines(text) == [{"op": "Ping", "policy_version": "v"}]


def test_wait_settled_returns_once_the_count_stops_moving() -> None:
    started = time.monotonic()
    values = iter([1, 2, 3])

    def count() -> int:
        return next(values, 3)

    assert wait_settled(count, "the count", quiet=0.2) == 3
    assert time.monotonic() - started >= 0.2
