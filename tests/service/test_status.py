"""/healthz, /readyz and /status through real HTTP, including a reload that fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from policyd.policy import load_policy
from policyd.service.app import create_app
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore
from tests.helpers import metric
from tests.oracle import checked_asgi_client
from tests.support import PolicydProcess, write_policy

RULES = {
    "NewProxy.rules": 'reject "no udp" when content.proxy_type == "udp"\n',
    "Ping.rules": "allow\n",
    "data/limits.toml": "max = 3\n",
}


def test_healthz(policyd_server: Callable[..., PolicydProcess]) -> None:
    response = policyd_server().client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_names_the_serving_version(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    server = policyd_server(write_policy(tmp_path / "p", RULES))
    response = server.client.get("/readyz")
    version = load_policy(tmp_path / "p").version
    assert (response.status_code, response.json()) == (200, {"status": "ready", "policy_version": version})


def test_readyz_is_503_with_a_reason_before_start_up_completes(tmp_path: Path) -> None:
    # Without lifespan (httpx's ASGI transport runs none), the app has not finished starting.
    app = create_app(Settings(decision_log="off"), PolicyStore(write_policy(tmp_path / "p", RULES)))

    async def get() -> httpx.Response:
        async with checked_asgi_client(app) as client:
            return await client.get("/readyz")

    response = asyncio.run(get())
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "reason": "starting: the policy watcher is not running yet",
    }


def test_status_describes_the_policy_and_settings(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", RULES)
    server = policyd_server(policies, "--fail-open-ops", "Ping")
    doc = server.client.get("/status").json()
    policy = load_policy(policies)
    assert doc["policy"]["version"] == policy.version
    assert doc["policy"]["rule_count"] == 2
    assert doc["policy"]["files"] == [
        {"path": f.path, "op": f.op.value, "rules": f.rule_count, "sha256": f.sha256}
        for f in sorted(policy.rules.values(), key=lambda f: f.path)
    ]
    assert [d["path"] for d in doc["policy"]["data_files"]] == ["data/limits.toml"]
    assert doc["policy"]["loaded_at"].endswith("Z")
    assert doc["uptime_s"] >= 0
    assert doc["reloads"] == {
        "successes": 0,
        "failures": 0,
        "last_success_at": doc["reloads"]["last_success_at"],
        "last_attempt": None,
    }
    assert doc["settings"]["fail_open_ops"] == ["Ping"]
    assert doc["settings"]["port"] == server.port
    assert doc["settings"]["policies"] == str(policies)


def test_broken_reload_shows_in_status_keeps_serving_and_counts(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", RULES)
    good = load_policy(policies).version
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    (policies / "NewProxy.rules").write_text('reject "x" when content.remote_prot > 1\n')
    server.wait_for_log("policy reload FAILED")

    status = server.client.get("/status").json()
    attempt = status["reloads"]["last_attempt"]
    assert attempt["ok"] is False
    assert attempt["version"] == good
    [error] = attempt["errors"]
    assert attempt["errors_omitted"] == 0
    assert error["location"] == "NewProxy.rules:1:25"
    assert (error["file"], error["line"], error["column"]) == ("NewProxy.rules", 1, 25)
    assert error["code"] == "validation_error"
    assert "remote_prot" in error["message"]
    assert status["reloads"]["failures"] == 1
    assert status["policy"]["version"] == good

    ready = server.client.get("/readyz")
    assert (ready.status_code, ready.json()["policy_version"]) == (200, good)
    metrics = server.client.get("/metrics").text
    assert metric(metrics, "policyd_reloads_total", result="failure") == 1
    assert metric(metrics, "policyd_last_reload_ok") == 0
    udp = server.post({"op": "NewProxy", "content": {"proxy_type": "udp"}}).json()
    assert udp == {"reject": True, "reject_reason": "no udp"}


def test_good_reload_updates_status_and_metrics(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", RULES)
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    (policies / "Ping.rules").write_text('reject "maintenance"\n')
    new = load_policy(policies).version
    server.wait_for_log(f"policy {new} active")
    status = server.client.get("/status").json()
    assert status["policy"]["version"] == new
    assert status["reloads"]["successes"] == 1
    assert status["reloads"]["last_attempt"]["ok"] is True
    metrics = server.client.get("/metrics").text
    assert metric(metrics, "policyd_reloads_total", result="success") == 1
    assert metric(metrics, "policyd_policy_info", version=new) == 1
