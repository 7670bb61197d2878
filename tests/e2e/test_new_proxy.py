"""NewProxy: policyd refuses or rewrites proxy registrations, and frps builds what policyd returned."""

from __future__ import annotations

import httpx

from tests.e2e.harness import LOOPBACK, E2EStack, port_accepts, tcp_proxy, tcp_roundtrip
from tests.support import free_port

RED = {"team": "red"}


def team_ports(port: int) -> str:
    """data/teams.toml giving team red the one-port range [port, port] (free ports are random)."""
    return f"[red]\nports = [{port}, {port}]\n"


def test_tcp_proxy_outside_the_teams_port_range_is_refused(stack: E2EStack) -> None:
    inside, outside = free_port(), free_port()
    stack.start_policyd(
        {
            "NewProxy.rules": """\
let ports = data.teams[user.metas.team].ports
reject "tcp ports for team {user.metas.team} are {ports[0]}-{ports[1]} (asked for {content.remote_port})" \\
    when content.proxy_type == "tcp" and content.remote_port not in range(ports[0], ports[1] + 1)
""",
            "data/teams.toml": team_ports(inside),
        }
    )
    stack.start_frps()
    echo = stack.echo_server()
    frpc = stack.start_frpc(
        {"inside": tcp_proxy(echo, inside), "outside": tcp_proxy(echo, outside)}, metas=RED
    )

    frpc.wait_proxy_refused("outside", f"tcp ports for team red are {inside}-{inside} (asked for {outside})")
    frpc.wait_proxy_started("inside")
    assert not port_accepts(outside)
    assert tcp_roundtrip(inside, b"in range") == b"in range"


def test_tcp_proxy_is_moved_into_the_teams_port_range(stack: E2EStack) -> None:
    teams_port, asked_port = free_port(), free_port()
    stack.start_policyd(
        {
            "NewProxy.rules": """\
let ports = data.teams[user.metas.team].ports
set content.remote_port = ports[0] \\
    when content.proxy_type == "tcp" and content.remote_port not in range(ports[0], ports[1] + 1)
""",
            "data/teams.toml": team_ports(teams_port),
        }
    )
    frps = stack.start_frps()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), asked_port)}, metas=RED)

    frpc.wait_proxy_started("ssh")
    frps.wait_for_log(f"[alice.ssh] tcp proxy listen port [{teams_port}]")
    assert tcp_roundtrip(teams_port, b"through the rewritten port") == b"through the rewritten port"
    assert not port_accepts(asked_port)


def test_http_subdomain_is_prefixed_with_the_team(stack: E2EStack) -> None:
    stack.start_policyd(
        {
            "NewProxy.rules": """\
let team = user.metas.team
set content.subdomain = team + "-" + content.subdomain \\
    when content.subdomain and not content.subdomain.startswith(team + "-")
""",
        }
    )
    frps = stack.start_frps()
    web = stack.web_server(b"red team's blog")
    frpc = stack.start_frpc(
        {"blog": {"type": "http", "local_ip": LOOPBACK, "local_port": web, "subdomain": "blog"}}, metas=RED
    )

    frpc.wait_proxy_started("blog")
    vhost = f"http://{LOOPBACK}:{frps.vhost_http_port}/"
    with httpx.Client(timeout=10) as client:
        prefixed = client.get(vhost, headers={"Host": f"red-blog.{frps.subdomain_host}"})
        asked = client.get(vhost, headers={"Host": f"blog.{frps.subdomain_host}"})
    assert (prefixed.status_code, prefixed.content) == (200, b"red team's blog")
    assert asked.status_code == 404
    assert b"red team's blog" not in asked.content
