"""The shipped example policy, unchanged, in front of a real frps: every rule does what README says."""

from __future__ import annotations

import socket

from tests.e2e.harness import (
    LOOPBACK,
    E2EStack,
    http_proxy,
    login_refused,
    port_accepts,
    tcp_proxy,
    tcp_roundtrip,
)
from tests.support import SHIPPED_POLICIES, free_port

RED = {"team": "red", "token": "tk-alice"}


def shipped_files() -> dict[str, str]:
    """policies/ as shipped (rules and data; its own test cases are not part of the policy)."""
    return {
        str(p.relative_to(SHIPPED_POLICIES)): p.read_text()
        for p in SHIPPED_POLICIES.rglob("*")
        if p.is_file() and "tests" not in p.relative_to(SHIPPED_POLICIES).parts
    }


def free_port_in(low: int, high: int) -> int:
    """A free loopback port inside the team's range (the shipped data fixes red to 6000-6999)."""
    for port in range(low, high + 1):
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def test_a_red_client_with_its_token_gets_what_the_shipped_rules_allow(stack: E2EStack) -> None:
    stack.start_policyd(shipped_files())
    frps = stack.start_frps()
    inside, outside = free_port_in(6000, 6999), free_port()
    echo, web = stack.echo_server(), stack.web_server(b"red blog")
    frpc = stack.start_frpc(
        {
            "ssh": tcp_proxy(echo, inside),
            "far": tcp_proxy(echo, outside),
            "blog": http_proxy(web, subdomain="blog"),
            "site": http_proxy(web, custom_domains=["www.example.org"]),
        },
        metas=RED,
    )

    stack.wait_tcp_proxy(inside)
    assert tcp_roundtrip(inside, b"inside red's range") == b"inside red's range"
    frpc.wait_proxy_refused("far", f"tcp/udp ports for team red are 6000-6999 (asked for {outside})")
    assert not port_accepts(outside)
    frpc.wait_proxy_refused(
        "site",
        "custom domains must be red.example.com or end in .red.example.com (asked for www.example.org)",
    )
    assert frps.wait_http_route(f"red-blog.{frps.subdomain_host}").content == b"red blog"
    assert frps.http_get(f"blog.{frps.subdomain_host}").status_code == 404
    assert stack.policyd is not None
    stack.policyd.wait_for_log("proxy alice.ssh of team red has no encryption")


def test_the_shipped_login_rules_refuse_a_red_client_without_its_token(stack: E2EStack) -> None:
    stack.start_policyd(shipped_files())
    stack.start_frps()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), free_port())}, metas={"team": "red"})

    assert frpc.wait_exit() != 0
    assert login_refused("login needs a user and metadatas.token").search(frpc.logs())
