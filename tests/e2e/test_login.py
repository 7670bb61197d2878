"""Login: frps asks policyd before a frpc may connect; a reject ends frpc with policyd's reason."""

from __future__ import annotations

import pytest

from tests.e2e.harness import E2EStack, tcp_proxy, tcp_roundtrip
from tests.support import free_port

TEAM_TOKENS = {
    "Login.rules": """\
let team = user.metas.team
reject "unknown team '{team}'" when team not in data.teams
reject "team {team} needs metadatas.token" when not user.metas.token
reject "bad token for team {team}" when user.metas.token not in data.teams[team].tokens
""",
    "data/teams.toml": '[red]\ntokens = ["tk-red"]\n',
}


@pytest.mark.parametrize(
    ("metas", "reason"),
    [
        ({"team": "red"}, "team red needs metadatas.token"),
        ({"team": "red", "token": "tk-blue"}, "bad token for team red"),
    ],
    ids=["missing-token", "wrong-token"],
)
def test_login_without_the_teams_token_is_refused(
    stack: E2EStack, metas: dict[str, str], reason: str
) -> None:
    stack.start_policyd(TEAM_TOKENS)
    stack.start_frps()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), free_port())}, metas=metas)

    # login_fail_exit (frpc's default): a refused first login ends frpc, printing the reason.
    assert frpc.wait_exit() != 0
    assert f"login to server failed: {reason}" in frpc.logs()
    assert "login to server success" not in frpc.logs()


def test_login_with_the_teams_token_connects(stack: E2EStack) -> None:
    stack.start_policyd(TEAM_TOKENS)
    stack.start_frps()
    remote_port = free_port()
    frpc = stack.start_frpc(
        {"ssh": tcp_proxy(stack.echo_server(), remote_port)}, metas={"team": "red", "token": "tk-red"}
    )

    frpc.wait_proxy_started("ssh")
    assert tcp_roundtrip(remote_port, b"hello red") == b"hello red"
