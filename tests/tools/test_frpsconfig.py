"""`policyd frps-config`: README's snippet, for the ops that have rules and the frps version.

That the snippet really wires frps up is tested against real frps in tests/e2e/test_frps_config.py."""

from __future__ import annotations

import configparser
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from policyd.cli import main
from policyd.rules.decision import Op
from policyd.tools.frpsconfig import (
    ConfigFormat,
    FrpsConfigError,
    ops_with_rules,
    reachable_addr,
    render,
    render_ini,
    render_toml,
)
from tests.support import ROOT, SHIPPED_POLICIES, write_policy

ALL_OPS = ["Login", "NewProxy", "CloseProxy", "Ping", "NewWorkConn", "NewUserConn"]


def run_config(*args: str) -> Result:
    return CliRunner().invoke(main, ["frps-config", "--policies", str(SHIPPED_POLICIES), *args])


def readme_block(language: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{language}\n", text.index("## Pointing frps at policyd")) + len(language) + 4
    return text[start : text.index("```", start)]


def test_default_is_readmes_toml_snippet() -> None:
    result = run_config()
    assert result.exit_code == 0
    assert result.stdout == readme_block("toml")


def test_ini_is_readmes_ini_snippet() -> None:
    result = run_config("--ini")
    assert result.exit_code == 0
    assert result.stdout == readme_block("ini")


def test_toml_parses_to_the_plugin_table() -> None:
    result = run_config("--addr", "https://10.0.0.5:9443", "--path", "hook", "--name", "edge.policy")
    plugin = tomllib.loads(result.stdout)["httpPlugins"][0]
    assert plugin == {"name": "edge.policy", "addr": "https://10.0.0.5:9443", "path": "/hook", "ops": ALL_OPS}


def test_ini_parses_to_the_plugin_section_with_the_old_versions_ops() -> None:
    parser = configparser.ConfigParser()
    result = run_config("--ini", "--addr", "127.0.0.1:9100")
    parser.read_string(result.stdout)
    assert dict(parser["plugin.policyd"]) == {
        "addr": "127.0.0.1:9100",
        "path": "/handler",
        "ops": "Login,NewProxy,Ping,NewUserConn",
    }
    assert "--ini without --frps-version: written for frps 0.33.0" in result.stderr


def warnings(result: Result) -> list[str]:
    return [line.removeprefix("policyd: warning: ") for line in result.stderr.splitlines()]


def plugin_ops(result: Result) -> list[str]:
    if result.stdout.startswith("[[httpPlugins]]"):
        return list(tomllib.loads(result.stdout)["httpPlugins"][0]["ops"])
    parser = configparser.ConfigParser()
    parser.read_string(result.stdout)
    return parser["plugin.policyd"]["ops"].split(",")


@pytest.mark.parametrize(
    ("version", "form", "ops"),
    [
        ("0.33.0", "ini", ["Login", "NewProxy", "Ping", "NewUserConn"]),
        ("0.39.9", "ini", ["Login", "NewProxy", "Ping", "NewUserConn"]),
        ("0.40.0", "ini", ["Login", "NewProxy", "CloseProxy", "Ping", "NewUserConn"]),
        ("0.46.0", "ini", ["Login", "NewProxy", "CloseProxy", "Ping", "NewUserConn"]),
        ("0.46.1", "ini", ALL_OPS),
        ("0.52.0", "toml", ALL_OPS),
        ("v0.70.0", "toml", ALL_OPS),
    ],
)
def test_frps_version_picks_its_ops_and_format(version: str, form: str, ops: list[str]) -> None:
    result = run_config("--frps-version", version)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("[[httpPlugins]]" if form == "toml" else "[plugin.policyd]")
    assert plugin_ops(result) == ops


def test_old_frps_leaves_out_close_proxy_and_new_work_conn_and_says_why() -> None:
    result = run_config("--frps-version", "0.33.0")
    assert warnings(result)[:2] == [
        "CloseProxy.rules never run on frps 0.33.0: CloseProxy came in 0.40.0; left out",
        "frps 0.33.0 sends work connections as op=Ping, and only to Ping plugins (op=NewWorkConn from "
        "0.46.1): NewWorkConn.rules never run, and NewWorkConn in ops only makes frps ask twice per "
        "heartbeat; left out",
    ]
    assert "policyd:" not in result.stdout  # warnings go to stderr, the snippet alone to stdout


def test_heartbeats_are_off_by_default_from_058() -> None:
    trap = (
        "frpc sends no heartbeats by default from 0.58.0 (tcpMux is on): "
        "Ping rules run only for clients that set transport.heartbeatInterval"
    )
    assert trap in warnings(run_config("--frps-version", "0.58.0"))
    assert trap not in warnings(run_config("--frps-version", "0.57.0"))
    assert trap not in warnings(run_config("--frps-version", "0.70.0", "--ops", "Login"))


def test_new_user_conn_warns_that_http_visitors_are_not_asked() -> None:
    assert any("not for http, udp or xtcp" in w for w in warnings(run_config("--frps-version", "0.70.0")))
    assert warnings(run_config("--frps-version", "0.70.0", "--ops", "Login,NewProxy")) == []


def test_explicit_new_work_conn_on_old_frps_is_kept_with_the_doubling_warning() -> None:
    result = run_config("--frps-version", "0.45.0", "--ops", "Ping,NewWorkConn")
    assert plugin_ops(result) == ["Ping", "NewWorkConn"]
    assert any("only makes frps ask twice per heartbeat" in w for w in warnings(result))


def test_ini_for_new_frps_is_written_with_a_deprecation_warning() -> None:
    result = run_config("--frps-version", "0.70.0", "--ini")
    assert plugin_ops(result) == ALL_OPS
    assert warnings(result)[0] == (
        "frps 0.70.0 still reads INI but deprecates it (a warning at start); --toml is its format"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frps-version", "0.45.0", "--toml"], "frps 0.45.0 reads INI only (TOML from 0.52.0): use --ini"),
        (
            ["--frps-version", "0.33.0", "--ops", "CloseProxy"],
            "frps 0.33.0 does not know the op CloseProxy (it came in 0.40.0)",
        ),
        (["--frps-version", "0.30.0"], "frps 0.30.0 has no server plugins (they came in 0.31.0)"),
        (
            ["--frps-version", "0.34.0", "--addr", "https://127.0.0.1:9443"],
            "frps 0.34.0 cannot call https:// plugins (from 0.35.0)",
        ),
    ],
)
def test_what_the_frps_version_cannot_take_is_an_error(args: list[str], message: str) -> None:
    result = run_config(*args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert f"policyd: {message}" in result.stderr


def test_a_version_that_is_not_one_is_a_usage_error() -> None:
    result = run_config("--frps-version", "latest")
    assert result.exit_code == 2
    assert "not a frps version: 'latest' (expected e.g. 0.52.0)" in result.stderr


def test_https_warns_that_frps_does_not_verify_the_certificate() -> None:
    result = run_config("--frps-version", "0.70.0", "--addr", "https://127.0.0.1:9443", "--ops", "Login")
    assert warnings(result) == [
        "frps does not verify policyd's certificate unless the plugin sets tlsVerify = true"
    ]


def test_address_and_path_default_to_serves_settings() -> None:
    env = {"POLICYD_HOST": "0.0.0.0", "POLICYD_PORT": "9100", "POLICYD_HANDLER_PATH": "frp"}
    result = CliRunner().invoke(main, ["frps-config", "--policies", str(SHIPPED_POLICIES)], env=env)
    plugin = tomllib.loads(result.stdout)["httpPlugins"][0]
    assert (plugin["addr"], plugin["path"]) == ("127.0.0.1:9100", "/frp")


def test_policies_come_from_serves_config_file(tmp_path: Path) -> None:
    write_policy(tmp_path, {"p/Ping.rules": ""})
    (tmp_path / "policyd.toml").write_text('policies = "p"\nport = 9200\n')
    result = CliRunner().invoke(main, ["frps-config", "--config", str(tmp_path / "policyd.toml"), "--ini"])
    assert result.stdout.splitlines()[1:] == ["addr = 127.0.0.1:9200", "path = /handler", "ops = Ping"]


@pytest.mark.parametrize(
    ("host", "tls", "addr"),
    [
        ("127.0.0.1", False, "127.0.0.1:9000"),
        ("0.0.0.0", False, "127.0.0.1:9000"),
        ("::", False, "[::1]:9000"),
        ("fd00::5", True, "https://[fd00::5]:9000"),
        ("policyd.internal", True, "https://policyd.internal:9000"),
    ],
)
def test_reachable_addr(host: str, tls: bool, addr: str) -> None:
    assert reachable_addr(host, 9000, tls=tls) == addr


def test_by_default_only_ops_with_rule_files_are_listed(tmp_path: Path) -> None:
    write_policy(tmp_path, {"NewUserConn.rules": "", "Login.rules": "", "notes.txt": ""})
    assert ops_with_rules(tmp_path) == [Op.LOGIN, Op.NEW_USER_CONN]
    result = CliRunner().invoke(main, ["frps-config", "--policies", str(tmp_path)])
    assert tomllib.loads(result.stdout)["httpPlugins"][0]["ops"] == ["Login", "NewUserConn"]


def test_ops_option_overrides_and_keeps_frps_order() -> None:
    result = run_config("--ops", "Ping, Login")
    assert tomllib.loads(result.stdout)["httpPlugins"][0]["ops"] == ["Login", "Ping"]


def test_unknown_op_is_a_usage_error() -> None:
    result = run_config("--ops", "Pong")
    assert result.exit_code == 2
    assert "unknown op 'Pong' (did you mean 'Ping'?)" in result.stderr


def test_no_rule_files_and_no_ops_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["frps-config", "--policies", str(tmp_path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert "no rule files in" in result.stderr


@pytest.mark.parametrize("addr", ['127.0.0.1:9000"', "a b", "x;y", ""])
def test_values_frps_could_not_read_back_are_refused(addr: str) -> None:
    with pytest.raises(FrpsConfigError, match="addr"):
        render([Op.LOGIN], addr=addr, path="/handler", fmt=ConfigFormat.TOML)


def test_frps_config_through_python_dash_m() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "policyd", "frps-config", "--policies", str(SHIPPED_POLICIES), "--ini"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout == readme_block("ini")


def test_render_takes_any_iterable_of_ops_in_frps_order() -> None:
    snippet = render((op for op in [Op.PING, Op.LOGIN, Op.PING]), addr="h:1", path="/p", fmt=ConfigFormat.INI)
    assert snippet.splitlines()[-1] == "ops = Login,Ping"


# -- the frp config file writers (the e2e suite's and the benchmarks' configs too) --------------


def test_toml_strings_are_escaped_and_keys_checked() -> None:
    text = render_toml({"a": 'quote " and \\ and é', "b.c": [1, "x"]}, {"t": [{"k": False}]})
    assert tomllib.loads(text) == {"a": 'quote " and \\ and é', "b": {"c": [1, "x"]}, "t": [{"k": False}]}
    with pytest.raises(ValueError, match="not a bare or dotted TOML key"):
        render_toml({"a b": 1})


def test_ini_lists_are_comma_joined() -> None:
    assert render_ini({"s": {"ops": ["Login", "Ping"], "on": True}}) == "[s]\nops = Login,Ping\non = true\n"
