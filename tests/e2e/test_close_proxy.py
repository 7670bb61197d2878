"""CloseProxy (frps >= 0.40): frps tells policyd about every proxy that goes away."""

from __future__ import annotations

from policyd.rules.decision import Op
from policyd.rules.schema import OP_FACTS
from tests.e2e.harness import E2EStack, tcp_proxy
from tests.support import free_port

AUDIT = {"CloseProxy.rules": 'warn "proxy {content.proxy_name} of {user.user} closed"\n'}


def test_stopping_frpc_closes_its_proxies_at_policyd(stack: E2EStack) -> None:
    stack.require(OP_FACTS[Op.CLOSE_PROXY].since, "CloseProxy")
    stack.start_policyd(AUDIT)
    stack.start_frps()
    first, second = free_port(), free_port()
    echo = stack.echo_server()
    frpc = stack.start_frpc({"ssh": tcp_proxy(echo, first), "db": tcp_proxy(echo, second)})
    stack.wait_tcp_proxy(first)
    stack.wait_tcp_proxy(second)
    assert not stack.decisions("CloseProxy")

    frpc.stop()  # SIGTERM: frpc says goodbye, frps closes both proxies

    for proxy in ("ssh", "db"):
        closed = stack.wait_decision("CloseProxy", proxy_name=frpc.label(proxy))
        assert closed["outcome"] == "allow" and closed["user"] == "alice"
        assert closed["warnings"][0]["message"] == f"proxy {frpc.label(proxy)} of alice closed"
