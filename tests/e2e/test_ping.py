"""Ping: banning a user in data/ while its frpc is connected makes frps drop that session."""

from __future__ import annotations

from tests.e2e.harness import READY_TIMEOUT, E2EStack, port_accepts, tcp_proxy, tcp_roundtrip, wait_until
from tests.support import free_port

BAN_POLICY = {
    # Reconnects are refused too, so the dropped session stays down (frpc retries at once).
    "Login.rules": """\
reject "login refused: {user.user} is banned" when user.user in data.access.banned_users
""",
    "Ping.rules": """\
# frps v0.33.0 sends work connections as op=Ping as well; only those carry a run_id.
warn "heartbeat from {user.user}" when not content["run_id"]
reject "heartbeat refused: {user.user} is banned" when user.user in data.access.banned_users
""",
    "data/access.toml": "banned_users = []\n",
}


def test_banning_a_connected_user_drops_its_session(stack: E2EStack) -> None:
    policyd = stack.start_policyd(BAN_POLICY)
    frps = stack.start_frps()
    remote_port = free_port()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), remote_port)}, user="alice")
    frpc.wait_proxy_started("ssh")
    policyd.wait_for_log("heartbeat from alice", timeout=READY_TIMEOUT)  # heartbeats reach policyd, pass
    assert tcp_roundtrip(remote_port, b"before the ban") == b"before the ban"

    frps_mark, frpc_mark = frps.log_mark(), frpc.log_mark()
    stack.edit_policy({"data/access.toml": 'banned_users = ["alice"]\n'})

    frps.wait_for_log("received invalid ping: heartbeat refused: alice is banned", after=frps_mark)
    frps.wait_for_log("client exit success", after=frps_mark)
    frpc.wait_for_log("Pong contains error: heartbeat refused: alice is banned", after=frpc_mark)
    frpc.wait_for_log("reconnect to server error: login refused: alice is banned", after=frpc_mark)
    wait_until(lambda: not port_accepts(remote_port), f"frps to close the banned user's port {remote_port}")
    assert frpc.proc.poll() is None, "frpc should still be running: the server dropped it"
