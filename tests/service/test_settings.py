"""Settings: one dataclass; flags, POLICYD_* variables and a TOML file use the same names."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from policyd.rules.decision import Op
from policyd.service.settings import FIELDS, Layer, Settings, SettingsError, build_settings, read_config_file
from tests.support import SHIPPED_POLICIES, PolicydProcess, free_port

SERVE = [sys.executable, "-m", "policyd", "serve"]


def test_later_layers_win() -> None:
    settings = build_settings(
        [
            Layer("config", {"port": 1, "host": "0.0.0.0"}, "p.toml"),
            Layer("env", {"port": "2"}),
            Layer("flag", {"port": "3"}),
        ]
    )
    assert (settings.port, settings.host) == (3, "0.0.0.0")


def test_strings_and_toml_values_parse_alike() -> None:
    from_strings = build_settings(
        [
            Layer(
                "env",
                {
                    "fail_open_ops": "Ping, NewWorkConn",
                    "handler_allow": "10.0.0.0/8,127.0.0.1",
                    "decision_log_sample": "Ping=0.01,NewWorkConn=0.5",
                    "eval_budget_ms": "50",
                },
            )
        ]
    )
    from_toml = build_settings(
        [
            Layer(
                "config",
                {
                    "fail_open_ops": ["Ping", "NewWorkConn"],
                    "handler_allow": ["10.0.0.0/8", "127.0.0.1"],
                    "decision_log_sample": {"Ping": 0.01, "NewWorkConn": 0.5},
                    "eval_budget_ms": 50,
                },
                "p.toml",
            )
        ]
    )
    assert from_strings == from_toml
    assert from_strings.fail_open_ops == {Op.PING, Op.NEW_WORK_CONN}
    assert from_strings.handler_allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )
    assert from_strings.decision_log_sample == {Op.PING: 0.01, Op.NEW_WORK_CONN: 0.5}


def test_to_dict_round_trips() -> None:
    settings = build_settings(
        [Layer("flag", {"fail_open_ops": "Ping", "handler_allow": "::1", "tls_cert": "c", "tls_key": "k"})]
    )
    assert build_settings([Layer("worker", settings.to_dict())]) == settings


def test_every_field_has_a_parser_and_help() -> None:
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
        default = getattr(Settings(), name)
        reparsed = build_settings([Layer("worker", {name: Settings().to_dict()[name]})])
        assert getattr(reparsed, name) == default, name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": "nine"}, "option --port: expected an integer, got 'nine'"),
        ({"fail_open_ops": "Pong"}, "option --fail-open-ops: unknown op 'Pong' (did you mean 'Ping'?)"),
        ({"handler_allow": "10.0.0.300/8"}, "'10.0.0.300/8' is not an IP address or CIDR network"),
        ({"decision_log_sample": "Ping=2"}, "rate for Ping must be between 0 and 1, got 2.0"),
        ({"decision_log_sample": "Ping"}, "expected OP=RATE, got 'Ping'"),
        ({"log_format": "xml"}, "expected one of text, json, got 'xml'"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"workers": "0"}, "workers must be at least 1, got 0"),
        ({"handler_path": "/metrics"}, "handler_path /metrics is one of policyd's own endpoints"),
    ],
)
def test_bad_values_name_the_setting(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        build_settings([Layer("flag", values)])
    assert message in str(e.value)


def test_config_file_unknown_key_suggests(tmp_path: Path) -> None:
    config = tmp_path / "policyd.toml"
    config.write_text('handler_pth = "/x"\n')
    with pytest.raises(
        SettingsError, match=r"unknown setting 'handler_pth' \(did you mean 'handler_path'\?\)"
    ):
        read_config_file(config)


def test_config_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "policyd.toml"
    config.parent.mkdir()
    config.write_text('policies = "rules"\ndecision_log = "stdout"\n')
    settings = build_settings([read_config_file(config)])
    assert settings.policies == tmp_path / "etc" / "rules"
    assert settings.decision_log == "stdout"


def test_handler_path_gets_its_slash() -> None:
    assert Settings(handler_path="plugin").handler_path == "/plugin"


def test_help_lists_every_setting_with_its_variable() -> None:
    out = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in flat
        assert f"POLICYD_{name.upper()}" in flat
    assert "POLICYD_CONFIG" in flat
    assert "default: 127.0.0.1" in flat


def test_bad_environment_value_is_a_usage_error() -> None:
    run = subprocess.run(SERVE, capture_output=True, text=True, env={"POLICYD_PORT": "http"}, check=False)
    assert run.returncode == 2
    assert "environment variable POLICYD_PORT: expected an integer, got 'http'" in run.stderr


def test_bad_config_file_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "policyd.toml"
    config.write_text("port = [1]\n")
    run = subprocess.run([*SERVE, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert f"{config}: port: expected an integer, got [1]" in run.stderr


def test_port_from_environment(policyd_server: Callable[..., PolicydProcess]) -> None:
    port = free_port()
    server = policyd_server(port=port, port_flag=False, env={"POLICYD_PORT": str(port)})
    assert server.client.get("/healthz").status_code == 200


def test_config_file_sets_port_policies_and_handler_path(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "policyd.toml"
    shipped = SHIPPED_POLICIES
    config.write_text(f'port = {port}\npolicies = "{shipped}"\nhandler_path = "/frps"\n')
    server = policyd_server(None, "--config", str(config), port=port, port_flag=False)
    assert server.post({"op": "Ping", "content": {}}, path="/frps").json() == {
        "reject": True,
        "reject_reason": "unknown user or bad token",  # the shipped Ping rules answered
    }
    assert server.post({"op": "Ping", "content": {}}).status_code == 404


def test_environment_beats_config_file(policyd_server: Callable[..., PolicydProcess], tmp_path: Path) -> None:
    config = tmp_path / "policyd.toml"
    config.write_text('handler_path = "/from-file"\n')
    server = policyd_server(
        env={"POLICYD_CONFIG": str(config), "POLICYD_HANDLER_PATH": "/from-env"},
    )
    assert server.post({"op": "Ping", "content": {}}, path="/from-env").status_code == 200
    assert server.post({"op": "Ping", "content": {}}, path="/from-file").status_code == 404


def test_flag_beats_environment(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server(
        SHIPPED_POLICIES,
        "--handler-path",
        "/from-flag",
        env={"POLICYD_HANDLER_PATH": "/from-env"},
    )
    assert server.post({"op": "Ping", "content": {}}, path="/from-flag").status_code == 200
    assert server.post({"op": "Ping", "content": {}}, path="/from-env").status_code == 404


def test_json_log_format(policyd_server: Callable[..., PolicydProcess]) -> None:
    import json

    server = policyd_server(env={"POLICYD_LOG_FORMAT": "json", "POLICYD_DECISION_LOG": "off"})
    lines = [json.loads(line) for line in server.logs().splitlines() if line.strip()]
    assert lines, "no log lines"
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert any(d["logger"] == "uvicorn.error" for d in lines)
    assert any("serving policy" in d["message"] for d in lines)
