"""deploy/: every example parses, names real settings, and points at what policyd serves."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Op, Outcome
from policyd.service.settings import (
    CONFIG_ENV,
    DEFAULTS,
    ENV_PREFIX,
    FIELDS,
    Layer,
    build_settings,
    env_name,
    read_config_file,
)
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
SETTING_VARIABLES = {env_name(name) for name in FIELDS} | {CONFIG_ENV}


def yaml_docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def settings_from_env(env: dict[str, str]) -> Any:
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - SETTING_VARIABLES
    assert not unknown, f"not settings: {unknown}"
    return build_settings(
        [Layer("env", {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k != CONFIG_ENV})]
    )


def check_frps_plugin(frps: dict[str, Any], port: int, path: str) -> None:
    [plugin] = frps["httpPlugins"]
    assert plugin["addr"] == f"127.0.0.1:{port}"
    assert plugin["path"] == path
    assert set(plugin["ops"]) == {op.value for op in Op}


def test_config_example_loads() -> None:
    settings = build_settings([read_config_file(DEPLOY / "policyd.toml")])
    assert settings.policies == Path("/etc/policyd/policies")
    assert settings.decision_log_sample == {Op.PING: 0.01, Op.NEW_WORK_CONN: 0.1}


def test_systemd_unit_runs_the_console_script_with_the_example_config() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "policyd.service").read_text())
    argv = shlex.split(unit["Service"]["ExecStart"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(argv[0]).name in scripts
    assert scripts[Path(argv[0]).name] == "policyd.cli:main"
    assert argv[1:3] == ["serve", "--config"]
    assert argv[3] == "/etc/policyd/policyd.toml"
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert float(unit["Service"]["TimeoutStopSec"]) > DEFAULTS.shutdown_timeout_s
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_dockerfile_is_slim_and_non_root() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert re.fullmatch(
        r"FROM python:3\.\d+-slim", lines[[line.startswith("FROM") for line in lines].index(True)]
    )
    [user] = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["policyd", "serve"]' in lines
    text = (DEPLOY / "Dockerfile").read_text()
    env = dict(re.findall(r"(POLICYD_[A-Z_]+)=(\S+)", text))
    assert settings_from_env(env).host == "127.0.0.1"


def test_compose_mounts_policies_read_only_beside_frps() -> None:
    [compose] = yaml_docs("docker-compose.yml")
    policyd, frps = compose["services"]["policyd"], compose["services"]["frps"]
    assert "../policies:/etc/policyd/policies:ro" in policyd["volumes"]
    assert policyd["network_mode"] == "service:frps"
    assert (DEPLOY / policyd["build"]["context"] / policyd["build"]["dockerfile"]).is_file()
    settings = settings_from_env(policyd["environment"])
    frps_config = next(v for v in frps["volumes"] if v.endswith(":/etc/frp/frps.toml:ro"))
    check_frps_plugin(
        tomllib.loads((DEPLOY / frps_config.split(":")[0]).read_text()), settings.port, settings.handler_path
    )


@pytest.fixture(scope="module")
def kubernetes() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in yaml_docs("kubernetes.yaml")}


def test_kubernetes_sidecar_probes_and_read_only_policies(kubernetes: dict[str, dict[str, Any]]) -> None:
    pod = kubernetes["frps"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    policyd = containers["policyd"]
    assert policyd["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert policyd["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert policyd["securityContext"]["readOnlyRootFilesystem"] is True
    [mount] = policyd["volumeMounts"]
    assert mount["readOnly"] is True
    settings = settings_from_env({e["name"]: e["value"] for e in policyd["env"]})
    assert str(settings.policies) == mount["mountPath"]
    assert settings.handler_allow and all(net.is_loopback for net in settings.handler_allow)
    frps = tomllib.loads(kubernetes["frps-config"]["data"]["frps.toml"])
    check_frps_plugin(frps, settings.port, settings.handler_path)


def test_kubernetes_configmap_is_a_valid_policy(
    kubernetes: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    pod = kubernetes["frps"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "policies"]
    data = kubernetes[volume["configMap"]["name"]]["data"]
    assert {item["key"] for item in volume["configMap"]["items"]} == set(data)
    for item in volume["configMap"]["items"]:  # lay the files out as the kubelet mounts them
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
    policy = load_policy(tmp_path)
    user = {"user": "alice", "metas": {"team": "red"}}
    far = decide(policy, Op.NEW_PROXY, {"user": user, "proxy_type": "tcp", "remote_port": 6600})
    assert (far.outcome, far.reason) == (Outcome.REJECT, "tcp/udp ports are 6000-6499 (asked for 6600)")
    near = decide(policy, Op.NEW_PROXY, {"user": user, "proxy_type": "tcp", "remote_port": 6001})
    assert near.outcome is Outcome.REWRITE
