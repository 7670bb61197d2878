"""docs/state.md's examples do what the page says through sequences of requests that record.

(tests/test_docs.py runs each example's cases, one decision each on preset state; this module
lets state build up the way a stream of ops builds it.)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from policyd.engine import StateBinding, decide
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Op, Outcome
from policyd.state.memory import MemoryBackend
from policyd.state.tracking import Preset
from tests.support import ROOT, SHIPPED_POLICIES, write_policy

T0 = 1_700_000_000.0
BLOCKS = re.findall(
    r"^```rules\n(.*?)^```", (ROOT / "docs" / "state.md").read_text(), re.MULTILINE | re.DOTALL
)


def example(tmp_path: Path, index: int) -> Policy:
    rules = BLOCKS[index]
    op = re.match(r"# (\w+)\.rules", rules)
    assert op, rules
    shutil.copytree(SHIPPED_POLICIES / "data", tmp_path / "data")
    return load_policy(write_policy(tmp_path, {f"{op[1]}.rules": rules}))


def proxy(user: str, name: str, port: int = 0, team: str = "red") -> dict[str, Any]:
    return {
        "user": {"user": user, "metas": {"team": team}, "run_id": "r-" + user},
        "proxy_name": f"{user}.{name}",
        "proxy_type": "tcp",
        "remote_port": port,
    }


def login(user: str, run_id: str = "", address: str = "203.0.113.7:5000", token: str = "") -> dict[str, Any]:
    return {"user": user, "run_id": run_id, "client_address": address, "metas": {"token": token}}


def preset_proxies(backend: MemoryBackend, counts: dict[str, int], port: int = 0) -> None:
    doc = {
        "proxies": {
            u: [{"name": f"{u}.p{i}", "remote_port": port} for i in range(n)] for u, n in counts.items()
        }
    }
    backend.preset(Preset.parse(doc, T0), T0)


def decided(
    p: Policy, backend: MemoryBackend, op: Op, content: dict[str, Any], at: float = T0
) -> tuple[Outcome, str]:
    d = decide(p, op, content, now=at, state=StateBinding(backend))
    assert d.error is None, d.error
    return d.outcome, d.reason


def test_there_are_six_examples() -> None:
    assert len(BLOCKS) == 6


def test_at_most_5_proxies_per_user(tmp_path: Path) -> None:
    p, b = example(tmp_path, 0), MemoryBackend()
    preset_proxies(b, {"alice": 4})
    assert decided(p, b, Op.NEW_PROXY, proxy("alice", "five"))[0] is Outcome.ALLOW
    assert decided(p, b, Op.NEW_PROXY, proxy("alice", "six")) == (
        Outcome.REJECT,
        "at most 5 proxies per user",
    )


def test_at_most_20_per_team(tmp_path: Path) -> None:
    p, b = example(tmp_path, 1), MemoryBackend()
    # users.toml: alice and root are red, bob is blue.
    preset_proxies(b, {"alice": 12, "root": 7, "bob": 3})
    assert decided(p, b, Op.NEW_PROXY, proxy("root", "x"))[0] is Outcome.ALLOW  # red: 19 before it
    assert decided(p, b, Op.NEW_PROXY, proxy("alice", "y")) == (Outcome.REJECT, "team red has its 20 proxies")
    assert decided(p, b, Op.NEW_PROXY, proxy("bob", "z"))[0] is Outcome.ALLOW  # blue is not red


def test_one_client_per_user(tmp_path: Path) -> None:
    p, b = example(tmp_path, 2), MemoryBackend()
    b.preset(Preset.parse({"sessions": {"alice": [{"run_id": "r1"}]}}, T0), T0)
    assert decided(p, b, Op.LOGIN, login("alice")) == (Outcome.REJECT, "one client per user")
    assert decided(p, b, Op.LOGIN, login("alice", run_id="r1"))[0] is Outcome.ALLOW  # a reconnect


def test_the_11th_login_from_one_address_within_a_minute_is_refused(tmp_path: Path) -> None:
    p, b = example(tmp_path, 3), MemoryBackend()
    outcomes = [decided(p, b, Op.LOGIN, login(f"u{i}"), T0 + i)[0] for i in range(11)]
    assert outcomes == [Outcome.ALLOW] * 10 + [Outcome.REJECT]
    assert decided(p, b, Op.LOGIN, login("v"), T0 + 11)[1] == "too many logins from 203.0.113.7"
    assert decided(p, b, Op.LOGIN, login("w", address="198.51.100.2:1"), T0 + 11)[0] is Outcome.ALLOW


def test_a_held_port_names_its_holder(tmp_path: Path) -> None:
    p, b = example(tmp_path, 4), MemoryBackend()
    preset_proxies(b, {"bob": 1}, port=6022)
    assert decided(p, b, Op.NEW_PROXY, proxy("alice", "ssh", 6022)) == (
        Outcome.REJECT,
        "port 6022 is held by bob",
    )
    assert decided(p, b, Op.NEW_PROXY, proxy("alice", "ssh", 6023))[0] is Outcome.ALLOW


@pytest.mark.parametrize("good_after", [True, False])
def test_five_bad_tokens_lock_out(tmp_path: Path, good_after: bool) -> None:
    p, b = example(tmp_path, 5), MemoryBackend()
    reasons = [decided(p, b, Op.LOGIN, login("alice", token="wrong"), T0 + i)[1] for i in range(5)]
    assert reasons == ["bad token"] * 5
    last = login("alice", token="tk-alice" if good_after else "wrong")
    assert decided(p, b, Op.LOGIN, last, T0 + 6)[1] == "locked out after 5 bad tokens; try again later"
    assert decided(p, b, Op.LOGIN, login("alice", token="tk-alice"), T0 + 6 + 900)[0] is Outcome.ALLOW
