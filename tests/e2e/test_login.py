"""Login: frps asks policyd before a frpc may connect; a reject ends frpc with policyd's reason."""

from __future__ import annotations

import re

import pytest

from policyd.rules.decision import Op
from policyd.rules.schema import SCHEMAS, FrpsVersion
from tests.e2e.harness import E2EStack, login_refused, login_succeeded, tcp_proxy, tcp_roundtrip
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

    # loginFailExit (frpc's default): a refused first login ends frpc, printing the reason.
    assert frpc.wait_exit() != 0
    assert login_refused(reason).search(frpc.logs())
    assert not login_succeeded().search(frpc.logs())
    assert stack.wait_decision("Login", outcome="reject")["reason"] == reason


def test_login_with_the_teams_token_connects(stack: E2EStack) -> None:
    stack.start_policyd(TEAM_TOKENS)
    stack.start_frps()
    remote_port = free_port()
    stack.start_frpc(
        {"ssh": tcp_proxy(stack.echo_server(), remote_port)}, metas={"team": "red", "token": "tk-red"}
    )

    stack.wait_tcp_proxy(remote_port)
    assert tcp_roundtrip(remote_port, b"hello red") == b"hello red"
    stack.wait_decision("Login", outcome="allow", user="alice")


def test_a_login_reject_prints_v070s_message_and_exits_1(stack: E2EStack) -> None:
    stack.require(FrpsVersion(0, 70, 0), "v0.70's wording of a refused login")
    stack.start_policyd({"Login.rules": 'reject "closed for maintenance"\n'})
    stack.start_frps()
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), free_port())})

    assert frpc.wait_exit() == 1
    assert (
        "login to the server failed: closed for maintenance. With loginFailExit enabled, "
        "no additional retries will be attempted"
    ) in frpc.logs()


def test_login_carries_frpcs_address_as_frps_sees_it(stack: E2EStack) -> None:
    stack.require(SCHEMAS[Op.LOGIN].fields["client_address"].since, "Login client_address")
    stack.start_policyd({"Login.rules": 'warn "login from {content.client_address}"\n'})
    stack.start_frps()
    stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), free_port())})

    login = stack.wait_decision("Login", outcome="allow")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", login["client_address"]), login
    assert login["warnings"][0]["message"] == f"login from {login['client_address']}"
