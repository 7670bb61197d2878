"""`policyd frps-config`: README's snippet, for the ops that have rules, and it really wires frps up."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from policyd.cli import main
from policyd.rules.decision import Op
from policyd.tools.frpsconfig import ConfigFormat, FrpsConfigError, ops_with_rules, reachable_addr, render
from tests.support import ROOT, SHIPPED_POLICIES, PolicydProcess, free_port, write_policy

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


def test_ini_parses_to_the_plugin_section() -> None:
    parser = configparser.ConfigParser()
    parser.read_string(run_config("--ini", "--addr", "127.0.0.1:9100").stdout)
    assert dict(parser["plugin.policyd"]) == {
        "addr": "127.0.0.1:9100",
        "path": "/handler",
        "ops": ",".join(ALL_OPS),
    }


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


@pytest.mark.skipif(
    not (os.environ.get("FRPS_BIN") and os.environ.get("FRPC_BIN")),
    reason="FRPS_BIN/FRPC_BIN not set: real frp binaries are needed",
)
def test_real_frps_with_the_snippet_asks_policyd(
    tmp_path: Path, policyd_server: Callable[..., PolicydProcess]
) -> None:
    server = policyd_server(SHIPPED_POLICIES)
    snippet = run_config("--ini", "--addr", f"127.0.0.1:{server.port}").stdout
    frps_port = free_port()
    (tmp_path / "frps.ini").write_text(
        f"[common]\nbind_addr = 127.0.0.1\nbind_port = {frps_port}\n\n{snippet}"
    )
    (tmp_path / "frpc.ini").write_text(
        f"[common]\nserver_addr = 127.0.0.1\nserver_port = {frps_port}\nlogin_fail_exit = true\n\n"
        "[ssh]\ntype = tcp\nlocal_port = 22\nremote_port = 6022\n"
    )
    log = tmp_path / "frps.log"
    with log.open("wb") as log_file:
        frps = subprocess.Popen(
            [os.environ["FRPS_BIN"], "-c", str(tmp_path / "frps.ini")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while "start frps success" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline and frps.poll() is None, log.read_text(errors="replace")
            time.sleep(0.05)
        frpc = subprocess.run(
            [os.environ["FRPC_BIN"], "-c", str(tmp_path / "frpc.ini")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        frps.terminate()
        frps.wait(timeout=10)
    # No metadatas.team: the shipped Login.rules refuses, and frpc prints policyd's reason.
    assert frpc.returncode != 0
    assert "login needs metadatas.team (one of: blue, red)" in frpc.stdout + frpc.stderr


def test_render_takes_any_iterable_of_ops_in_frps_order() -> None:
    snippet = render((op for op in [Op.PING, Op.LOGIN, Op.PING]), addr="h:1", path="/p", fmt=ConfigFormat.INI)
    assert snippet.splitlines()[-1] == "ops = Login,Ping"
