"""NewUserConn: a visitor from a blocked network is cut off by frps; others get through."""

from __future__ import annotations

from tests.e2e.harness import E2EStack, tcp_proxy, tcp_roundtrip
from tests.support import free_port

BLOCKED_VISITOR = "127.0.0.2"  # all of 127.0.0.0/8 is loopback on Linux: a second source address


def test_visitor_from_a_blocked_network_is_cut_off(stack: E2EStack) -> None:
    stack.start_policyd(
        {
            "NewUserConn.rules": """\
reject "visitors from {split_host_port(content.remote_addr)[0]} are blocked" \\
    when cidr(content.remote_addr, data.access.blocked_networks)
""",
            "data/access.toml": f'blocked_networks = ["{BLOCKED_VISITOR}/32", "198.51.100.0/24"]\n',
        }
    )
    stack.start_frps()
    remote_port = free_port()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), remote_port)})
    stack.wait_tcp_proxy(remote_port)

    assert tcp_roundtrip(remote_port, b"from an allowed address") == b"from an allowed address"
    assert tcp_roundtrip(remote_port, b"from a blocked address", source=BLOCKED_VISITOR) == b""
    refused = stack.wait_decision("NewUserConn", outcome="reject")
    assert refused["reason"] == f"visitors from {BLOCKED_VISITOR} are blocked"
    assert refused["remote_addr"].startswith(f"{BLOCKED_VISITOR}:")
    assert refused["proxy_name"] == frpc.label("ssh")
