"""Ping: banning a user in data/ while its frpc is connected makes frps drop that session."""

from __future__ import annotations

from tests.e2e.harness import E2EStack, pong_refused, port_accepts, tcp_proxy, tcp_roundtrip, wait_until
from tests.support import free_port

BAN_POLICY = {
    # Reconnects are refused too, so the dropped session stays down (frpc retries at once).
    "Login.rules": """\
reject "login refused: {user.user} is banned" when user.user in data.access.banned_users
""",
    "Ping.rules": """\
# frps < 0.46.1 may send work connections as op=Ping too; only those carry a run_id.
warn "heartbeat from {user.user}" when not content["run_id"]
reject "heartbeat refused: {user.user} is banned" when user.user in data.access.banned_users
""",
    "data/access.toml": "banned_users = []\n",
}


def test_banning_a_connected_user_drops_its_session(stack: E2EStack) -> None:
    stack.start_policyd(BAN_POLICY)
    stack.start_frps()
    remote_port = free_port()
    # A heartbeat a second: frpc >= 0.58 sends none at all unless told to.
    frpc = stack.start_frpc(
        {"ssh": tcp_proxy(stack.echo_server(), remote_port)}, user="alice", heartbeat_interval=1
    )
    stack.wait_tcp_proxy(remote_port)
    stack.wait_decision("Ping", "a heartbeat to reach policyd", outcome="allow", user="alice")
    assert tcp_roundtrip(remote_port, b"before the ban") == b"before the ban"

    mark = frpc.log_mark()
    stack.edit_policy({"data/access.toml": 'banned_users = ["alice"]\n'})

    frpc.wait_for_log(pong_refused("heartbeat refused: alice is banned"), after=mark)
    stack.wait_decision("Ping", outcome="reject", reason="heartbeat refused: alice is banned")
    # frpc logs in again at once; policyd refuses it, so the session stays down.
    stack.wait_decision("Login", outcome="reject", reason="login refused: alice is banned")
    wait_until(lambda: not port_accepts(remote_port), f"frps to close the banned user's port {remote_port}")
    assert frpc.running(), "frpc should still be running: the server dropped it"
