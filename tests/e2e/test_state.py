"""State against real frps and frpc: a proxy quota, one client per user, a login rate per address,
and reconciliation with frps's own API (docs/state.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from policyd.rules.decision import Op
from policyd.rules.schema import OP_FACTS, FrpsVersion
from policyd.tools.frpsconfig import ConfigFormat, default_format
from tests.e2e.harness import (
    HANDLER_PATH,
    LOOPBACK,
    PLUGIN_NAME,
    READY_TIMEOUT,
    E2EStack,
    FrpClient,
    FrpsSettings,
    echoes,
    login_refused,
    login_succeeded,
    render_ini,
    render_toml,
    tcp_proxy,
    wait_until,
)
from tests.support import PolicydProcess, free_port, write_policy

QUOTA = {"NewProxy.rules": 'reject "at most 2 proxies per user" when len(proxies(user.user)) >= 2\n'}
ONE_CLIENT = {
    "Login.rules": 'reject "one client per user" when any(s.run_id != content.run_id '
    "for s in sessions(user.user))\n"
}
LOGIN_RATE = {
    "Login.rules": (
        "let ip = split_host_port(content.client_address)[0]\n"
        'reject "too many logins from {ip}" when not rate("login:" + ip, 10, "1m")\n'
    )
}
RETRY_S = 45.0  # frpc sends a refused NewProxy again about every 30 s


def state_of(stack: E2EStack, user: str) -> dict[str, Any]:
    assert stack.policyd is not None
    users: dict[str, Any] = stack.policyd.client.get("/state", params={"user": user}).json()["users"]
    return users.get(user, {"sessions": [], "proxies": []})


def proxy_names(stack: E2EStack, user: str) -> list[str]:
    return [p["name"] for p in state_of(stack, user)["proxies"]]


def test_a_third_proxy_is_refused_at_quota_2_and_allowed_once_one_closed(stack: E2EStack) -> None:
    stack.require(OP_FACTS[Op.CLOSE_PROXY].since, "CloseProxy")
    stack.start_policyd(QUOTA)
    stack.start_frps()
    echo = stack.echo_server()
    ports = {name: free_port() for name in ("ssh", "db", "web")}
    frpc = stack.start_frpc({"ssh": tcp_proxy(echo, ports["ssh"]), "db": tcp_proxy(echo, ports["db"])})
    stack.wait_tcp_proxy(ports["ssh"])
    stack.wait_tcp_proxy(ports["db"])
    assert sorted(proxy_names(stack, "alice")) == [frpc.label("db"), frpc.label("ssh")]

    mark = frpc.log_mark()
    frpc.add_proxies({"web": tcp_proxy(echo, ports["web"])})
    frpc.wait_proxy_refused("web", "at most 2 proxies per user", after=mark)

    frpc.remove_proxies(["db"])  # frps closes it and sends CloseProxy
    stack.wait_decision("CloseProxy", proxy_name=frpc.label("db"))
    wait_until(
        lambda: frpc.label("db") not in proxy_names(stack, "alice"), "policyd to drop the closed proxy"
    )
    wait_until(lambda: echoes(ports["web"]), "frpc's retry of the refused proxy", timeout=RETRY_S)
    assert sorted(proxy_names(stack, "alice")) == [frpc.label("ssh"), frpc.label("web")]


def test_a_second_client_of_the_same_user_is_refused(stack: E2EStack) -> None:
    stack.start_policyd(ONE_CLIENT)
    stack.start_frps()
    first = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), free_port())})
    first.wait_for_log(login_succeeded())
    # The Login had no run_id yet; the client's next op (a work connection) reveals it.
    wait_until(
        lambda: any(not s["run_id"].startswith("pending:") for s in state_of(stack, "alice")["sessions"]),
        "policyd to learn the first client's run_id",
    )

    second = stack.start_frpc({"db": tcp_proxy(stack.echo_server(), free_port())})
    second.wait_for_log(login_refused("one client per user"))
    assert second.wait_exit() == 1
    assert first.running()
    (session,) = state_of(stack, "alice")["sessions"]
    assert session["run_id"] and not session["run_id"].startswith("pending:")


def test_the_11th_login_from_one_address_within_a_minute_is_refused(stack: E2EStack) -> None:
    stack.require(FrpsVersion(0, 39, 0), "Login client_address")
    stack.start_policyd(LOGIN_RATE)
    stack.start_frps()
    clients: list[FrpClient] = []
    for i in range(10):
        client = stack.start_frpc({}, user=f"u{i}")
        client.wait_for_log(login_succeeded())
        clients.append(client)
    eleventh = stack.start_frpc({}, user="u10")
    eleventh.wait_for_log(login_refused(f"too many logins from {LOOPBACK}"))
    assert eleventh.wait_exit() == 1
    assert all(c.running() for c in clients)


def frps_with_api(stack: E2EStack, api_port: int, password: str) -> tuple[FrpsSettings, tuple[str, str]]:
    """This stack's frps settings, and its config with its API (webServer / dashboard) on `api_port`."""
    s = stack.frps_settings()
    ops = [op.value for op in s.ops]
    if default_format(stack.version) is ConfigFormat.TOML:
        top: dict[str, object] = {
            "bindAddr": LOOPBACK, "bindPort": s.bind_port, "proxyBindAddr": LOOPBACK,
            "vhostHTTPPort": s.vhost_http_port, "subDomainHost": s.subdomain_host,
            "webServer.addr": LOOPBACK, "webServer.port": api_port,
            "webServer.user": "admin", "webServer.password": password,
        }  # fmt: skip
        plugin = {"name": PLUGIN_NAME, "addr": s.plugin_addr, "path": HANDLER_PATH, "ops": ops}
        return s, ("frps.toml", render_toml(top, {"httpPlugins": [plugin]}))
    common: dict[str, object] = {
        "bind_addr": LOOPBACK, "bind_port": s.bind_port, "proxy_bind_addr": LOOPBACK,
        "vhost_http_port": s.vhost_http_port, "subdomain_host": s.subdomain_host,
        "dashboard_addr": LOOPBACK, "dashboard_port": api_port,
        "dashboard_user": "admin", "dashboard_pwd": password,
    }  # fmt: skip
    section = {"addr": s.plugin_addr, "path": HANDLER_PATH, "ops": ops}
    return s, ("frps.ini", render_ini({"common": common, f"plugin.{PLUGIN_NAME}": section}))


def start_policyd_with_api(stack: E2EStack, api_port: int, password_file: Path) -> PolicydProcess:
    write_policy(stack.policies, QUOTA)
    stack.policyd = PolicydProcess(
        stack.policies,
        stack.directory / f"policyd-{api_port}-{len(list(stack.directory.glob('policyd*.log')))}.log",
        "--frps-api-url", f"http://{LOOPBACK}:{api_port}",
        "--frps-api-user", "admin",
        "--frps-api-password-file", str(password_file),
        "--frps-api-sync-s", "1",
    )  # fmt: skip
    return stack.policyd.wait_ready(timeout=READY_TIMEOUT)


def test_reconcile_adds_what_frps_has_after_a_restart_and_drops_what_it_failed(stack: E2EStack) -> None:
    api_port, password = free_port(), "e2e-secret"
    password_file = stack.directory / "frps-api-password"
    password_file.write_text(password + "\n")
    start_policyd_with_api(stack, api_port, password_file)
    settings, config = frps_with_api(stack, api_port, password)
    stack.start_frps(settings, config=config)
    echo, port = stack.echo_server(), free_port()
    alice = stack.start_frpc({"ssh": tcp_proxy(echo, port)})
    stack.wait_tcp_proxy(port)
    # bob asks for the same port: policyd allows it, frps fails it (port in use); the sync drops it.
    bob = stack.start_frpc({"ssh": tcp_proxy(echo, port)}, user="bob")
    stack.wait_decision("NewProxy", proxy_name=bob.label("ssh"))
    wait_until(lambda: not proxy_names(stack, "bob"), "the sync to drop bob's failed proxy")

    assert stack.policyd is not None
    stack.policyd.stop()  # memory state is gone with it; frps keeps serving alice
    start_policyd_with_api(stack, api_port, password_file)
    wait_until(lambda: proxy_names(stack, "alice") == [alice.label("ssh")], "the start-up reconcile")
    status = httpx.get(stack.policyd.url + "/status").json()["state"]
    assert status["last_reconcile"]["error"] == "" and status["frps_api"].endswith(str(api_port))
