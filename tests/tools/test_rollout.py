"""What the shadow and replays share: when two decisions are the same, and when two policies
must decide an op alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Op
from policyd.tools.rollout import Agreement, agreement, ops_decided_alike
from tests.helpers import policy_of
from tests.support import fixture, write_policy

NEW_PROXY = fixture("NewProxy-http")["content"]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("allow\n", 'warn "w"\nallow\n', Agreement.SAME),  # warnings are not part of the answer
        ('reject "a"\n', 'reject "a" when True\n', Agreement.SAME),  # another rule, the same answer
        ('reject "a"\n', 'reject "b"\n', Agreement.DIFFERENT),
        ("allow\n", 'reject "a"\n', Agreement.DIFFERENT),
        ('set content.subdomain = "x"\n', 'set content.subdomain = "y"\n', Agreement.DIFFERENT),
        ('set content.subdomain = "x"\n', 'let s = "x"\nset content.subdomain = s\n', Agreement.SAME),
        ("allow\n", 'reject "a" when content.remote_port + "x"\n', Agreement.ERROR),
        ('reject "a" when content.remote_port + "x"\n', 'reject "policy error"\n', Agreement.DIFFERENT),
    ],
)
def test_agreement_is_about_what_frps_acts_on(first: str, second: str, expected: Agreement) -> None:
    decisions = [
        decide(policy_of({"NewProxy.rules": rules}), Op.NEW_PROXY, NEW_PROXY, now=0)
        for rules in (first, second)
    ]
    assert agreement(*decisions) is expected


def test_ops_decided_alike_are_those_with_the_same_files_and_data(tmp_path: Path) -> None:
    common = {"Ping.rules": "allow\n", "NewProxy.rules": 'reject "x"\n', "data/d.toml": "a = 1\n"}
    first = load_policy(write_policy(tmp_path / "a", common))
    second = load_policy(
        write_policy(tmp_path / "b", {**common, "NewProxy.rules": 'reject "y"\n', "Login.rules": "allow\n"})
    )
    assert ops_decided_alike(first, second) == {Op.PING, Op.CLOSE_PROXY, Op.NEW_WORK_CONN, Op.NEW_USER_CONN}
    other_data = load_policy(write_policy(tmp_path / "c", {**common, "data/d.toml": "a = 2\n"}))
    assert ops_decided_alike(first, other_data) == frozenset()
