"""Hot reload: a rule edited while frps and frpc run governs the next proxy registration."""

from __future__ import annotations

from tests.e2e.harness import E2EStack, port_accepts, tcp_proxy, tcp_roundtrip
from tests.support import free_port


def open_ports_rule(*ports: int, reason: str) -> str:
    return f'reject "{reason}" when content.remote_port not in {ports!r}\n'


def test_edited_rule_governs_the_next_proxy_registration(stack: E2EStack) -> None:
    first, second, third, fourth = (free_port() for _ in range(4))
    policyd = stack.start_policyd(
        {"NewProxy.rules": open_ports_rule(first, reason="port {content.remote_port} is closed")}
    )
    frps = stack.start_frps()
    echo = stack.echo_server()
    frpc = stack.start_frpc({"first": tcp_proxy(echo, first), "second": tcp_proxy(echo, second)})
    stack.wait_tcp_proxy(first)
    frpc.wait_proxy_refused("second", f"port {second} is closed")

    # v2 opens `third` and words its refusal differently, so the log shows which rule answered.
    stack.edit_policy(
        {"NewProxy.rules": open_ports_rule(first, third, reason="v2: port {content.remote_port} is closed")}
    )
    mark = frpc.log_mark()
    frpc.add_proxies({"third": tcp_proxy(echo, third), "fourth": tcp_proxy(echo, fourth)})

    frpc.wait_proxy_refused("fourth", f"v2: port {fourth} is closed", after=mark)
    stack.wait_tcp_proxy(third)
    assert tcp_roundtrip(third, b"opened by the edit") == b"opened by the edit"
    assert not port_accepts(fourth)
    # Nothing restarted: the first proxy still serves in frpc's one and only session.
    assert tcp_roundtrip(first, b"still up") == b"still up"
    stack.wait_decision("Login")
    assert len(stack.decisions("Login")) == 1
    assert all(process.poll() is None for process in (policyd.proc, frps.proc, frpc.proc))
