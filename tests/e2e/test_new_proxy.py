"""NewProxy: policyd refuses or rewrites proxy registrations, and frps builds what policyd returned."""

from __future__ import annotations

from policyd.rules.decision import Op
from policyd.rules.schema import SCHEMAS
from tests.e2e.harness import E2EStack, http_proxy, port_accepts, tcp_proxy, tcp_roundtrip
from tests.support import free_port

RED = {"team": "red"}


def team_ports(port: int) -> str:
    """data/teams.toml giving team red the one-port range [port, port] (free ports are random)."""
    return f"[red]\nports = [{port}, {port}]\n"


def test_a_refused_proxy_leaves_the_others_working(stack: E2EStack) -> None:
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

    reason = f"tcp ports for team red are {inside}-{inside} (asked for {outside})"
    frpc.wait_proxy_refused("outside", reason)
    stack.wait_tcp_proxy(inside)
    assert tcp_roundtrip(inside, b"in range") == b"in range"
    assert not port_accepts(outside)
    # frpc keeps running and asks again later (about every 30 s; not waited for here).
    assert frpc.running()
    stack.wait_decision("NewProxy", outcome="allow", proxy_name=frpc.label("inside"))
    stack.wait_decision("NewProxy", outcome="reject", proxy_name=frpc.label("outside"))
    assert [d["reason"] for d in stack.decisions("NewProxy", outcome="reject")] == [reason]


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
    stack.start_frps()
    stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), asked_port)}, metas=RED)

    stack.wait_tcp_proxy(teams_port)
    assert tcp_roundtrip(teams_port, b"through the rewritten port") == b"through the rewritten port"
    assert not port_accepts(asked_port)
    rewrite = stack.wait_decision("NewProxy", outcome="rewrite")
    assert rewrite["changes"] == [{"field": "remote_port", "before": asked_port, "after": teams_port}]


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
    stack.start_frpc({"blog": http_proxy(web, subdomain="blog")}, metas=RED)

    prefixed = frps.wait_http_route(f"red-blog.{frps.subdomain_host}")
    assert prefixed.content == b"red team's blog"
    asked = frps.http_get(f"blog.{frps.subdomain_host}")
    assert asked.status_code == 404
    assert b"red team's blog" not in asked.content


def test_a_bandwidth_limit_rewrite_is_accepted_by_frps(stack: E2EStack) -> None:
    stack.require(SCHEMAS[Op.NEW_PROXY].fields["bandwidth_limit"].since, "NewProxy bandwidth_limit")
    stack.start_policyd(
        {
            "NewProxy.rules": """\
set content.bandwidth_limit = "10MB" when not content.bandwidth_limit
set content.bandwidth_limit_mode = "server"
""",
        }
    )
    stack.start_frps()
    remote_port = free_port()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), remote_port)})

    # frps builds the proxy from the returned content: a value it refused would fail it.
    stack.wait_tcp_proxy(remote_port)
    assert tcp_roundtrip(remote_port, b"limited") == b"limited"
    assert "start error" not in frpc.logs()
    rewrite = stack.wait_decision("NewProxy", outcome="rewrite")
    assert [(c["field"], c["after"]) for c in rewrite["changes"]] == [
        ("bandwidth_limit", "10MB"),
        ("bandwidth_limit_mode", "server"),
    ]
