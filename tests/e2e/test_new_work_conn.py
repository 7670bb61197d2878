"""NewWorkConn (frps >= 0.46.1): a work connection per user connection, as its own op."""

from __future__ import annotations

from policyd.rules.schema import NEW_WORK_CONN_OWN_OP_SINCE
from tests.e2e.harness import E2EStack, tcp_proxy, tcp_roundtrip, wait_settled, wait_until
from tests.support import free_port

RULES = {"NewWorkConn.rules": 'warn "work connection of {user.user} (run {content.run_id})"\n'}


def test_a_user_connection_brings_a_new_work_conn(stack: E2EStack) -> None:
    stack.require(NEW_WORK_CONN_OWN_OP_SINCE, "NewWorkConn as its own op (before: op=Ping)")
    stack.start_policyd(RULES)
    stack.start_frps()
    remote_port = free_port()
    stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), remote_port)})
    stack.wait_tcp_proxy(remote_port)  # its probes are user connections too: let them settle
    before = wait_settled(lambda: len(stack.decisions("NewWorkConn")), "NewWorkConn decisions")
    assert before >= 1  # the pool's, right after login

    assert tcp_roundtrip(remote_port, b"one user connection") == b"one user connection"

    wait_until(lambda: len(stack.decisions("NewWorkConn")) > before, "a NewWorkConn for the user connection")
    work = stack.decisions("NewWorkConn")[-1]
    session = stack.decisions("NewProxy")[0]["run_id"]  # the session's run id, from content.user
    assert (work["outcome"], work["user"], work["run_id"]) == ("allow", "alice", session)
    assert session and work["warnings"][0]["message"] == f"work connection of alice (run {session})"
