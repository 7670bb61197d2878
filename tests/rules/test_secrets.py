"""Masking: bounded whatever the client sends, never the rule author's words, one line of text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Decision, Op, Part
from policyd.rules.secrets import (
    MASK,
    MAX_SCANNED_VALUES,
    MAX_SECRET_CHARS,
    MAX_SECRETS,
    MIN_MASKED_VALUE_CHARS,
    Secrets,
    escape,
    scrub,
    secrets_in,
)
from tests.support import write_policy

# What a team's port rule renders: the team's name and range come from data, the port from the
# request; the words around them are the rule author's.
PORTS_RULE = (
    "let team = data.teams[user.metas.team]\n"
    'reject "team {user.metas.team} may use ports {team.ports[0]}-{team.ports[1]}, not {content.remote_port}"'
    " when content.remote_port not in range(team.ports[0], team.ports[1] + 1)\n"
)
TEAMS = "[blue]\nports = [6500, 6999]\n"


def decided(tmp_path: Path, rules: dict[str, str], op: Op, content: dict[str, Any]) -> Decision:
    return decide(load_policy(write_policy(tmp_path / "p", rules)), op, content)


def logged_reason(decision: Decision, content: dict[str, Any]) -> str:
    secrets = secrets_in(decision, content)
    return scrub(decision.reason, secrets, decision.reason_parts, decision.reason_kinds)


@pytest.mark.parametrize(
    "sent",
    [
        {"token": "6500", "secret": "blue"},  # short words: too short to search for
        {"token": "may use ports"},  # the rule author's words: never masked
    ],
    ids=["short-words", "authors-words"],
)
def test_a_client_cannot_make_the_log_mask_what_it_chooses(sent: dict[str, str], tmp_path: Path) -> None:
    assert len("may use ports") >= MIN_MASKED_VALUE_CHARS
    content = {"user": {"user": "bob", "metas": {"team": "blue", **sent}}, "remote_port": 7000}
    rules = {"NewProxy.rules": PORTS_RULE, "data/teams.toml": TEAMS}
    decision = decided(tmp_path, rules, Op.NEW_PROXY, content)
    assert logged_reason(decision, content) == "team blue may use ports 6500-6999, not 7000"


def test_credential_values_are_masked_where_a_part_renders_them(tmp_path: Path) -> None:
    rules = {"Login.rules": 'reject "from {content.hostname} as {content.user}" when True\n'}
    token = "tk-0123456789"
    content = {"user": "eve", "hostname": f"host-{token}", "metas": {"token": token}}
    decision = decided(tmp_path, rules, Op.LOGIN, content)
    assert decision.reason == f"from host-{token} as eve"  # frps gets it as rendered
    assert logged_reason(decision, content) == f"from host-{MASK} as eve"


def test_a_part_reading_a_credential_is_masked_whatever_its_length(tmp_path: Path) -> None:
    rules = {
        "Login.rules": 'let t = content.metas.token\nreject "bad token {t} for {content.user}" when True\n'
    }
    content = {"user": "eve", "metas": {"token": "abc"}}
    decision = decided(tmp_path, rules, Op.LOGIN, content)
    assert decision.reason_kinds == (Part.TEXT, Part.SECRET, Part.TEXT, Part.VALUE)
    assert logged_reason(decision, content) == f"bad token {MASK} for eve"


def test_every_credential_is_found_in_one_pass_longest_first() -> None:
    secrets = Secrets(["secret-token-1", "token-1-x", "abcdefgh"])
    text = "a secret-token-1-x b token-1-x c abcdefghabcdefgh d"
    assert secrets.mask_in(text) == f"a {MASK}-x b {MASK} c {MASK}{MASK} d"
    assert Secrets(["abcdefgh"]).mask_in("xabcdefghx") == f"x{MASK}x"


def test_a_request_past_the_caps_gets_its_rendered_parts_masked_whole(tmp_path: Path) -> None:
    rules = {"Login.rules": 'reject "login of {content.user}: {content.metas.note}" when True\n'}
    metas = {f"token{i}": f"value-{i:08d}" for i in range(33_000)}
    metas["note"] = "x" * 99_000
    content = {"user": "eve", "metas": metas}
    decision = decided(tmp_path, rules, Op.LOGIN, content)
    secrets = secrets_in(decision, content)
    assert secrets.overflow
    assert logged_reason(decision, content) == f"login of {MASK}: {MASK}"


@pytest.mark.parametrize(
    "metas",
    [
        {f"token{i}": f"value-{i:08d}" for i in range(MAX_SECRETS + 1)},  # too many
        {"token": "x" * (MAX_SECRET_CHARS + 1)},  # too long
        {"list": list(range(MAX_SCANNED_VALUES))},  # too much to walk
    ],
    ids=["count", "length", "walk"],
)
def test_each_cap_overflows_to_masking_whole_parts(metas: dict[str, Any], tmp_path: Path) -> None:
    rules = {"Login.rules": 'reject "login of {content.user}" when True\n'}
    content = {"user": "eve", "metas": metas}
    assert secrets_in(decided(tmp_path, rules, Op.LOGIN, content), content).overflow


def test_masking_work_is_bounded_by_the_caps(tmp_path: Path) -> None:
    # The walk stops at MAX_SCANNED_VALUES however many keys there are (a replace() per value
    # took 10 s for 33,000 of them and a 99 KB field).
    rules = {"Login.rules": 'reject "login of {content.user}" when True\n'}
    content = {"user": "eve", "metas": {f"token{i}": f"v{i}" for i in range(330_000)}}  # all short
    secrets = secrets_in(decided(tmp_path, rules, Op.LOGIN, content), content)
    assert secrets.overflow
    assert secrets.scanned == MAX_SCANNED_VALUES + 1
    assert len(secrets.values) <= MAX_SECRETS


def test_nothing_is_collected_when_nothing_renders_a_value(tmp_path: Path) -> None:
    rules = {"Login.rules": 'reject "no" when True\n'}
    content = {"user": "eve", "privilege_key": "0123456789abcdef"}
    assert not secrets_in(decided(tmp_path, rules, Op.LOGIN, content), content)


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\n", "\\n"),
        ("\x1b", "\\x1b"),
        ("\x85", "\\x85"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\u202e", "\\u202e"),
        ("\u2066", "\\u2066"),
        ("\u2069", "\\u2069"),
        ("\u200f", "\\u200f"),
        ("\u061c", "\\u061c"),
    ],
)
def test_line_breaks_and_bidi_controls_are_escaped(char: str, shown: str) -> None:
    assert escape(f"a{char}b") == f"a{shown}b"
    assert scrub(f"a{char}b", Secrets()) == f"a{shown}b"


def test_ordinary_unicode_is_kept() -> None:
    assert escape("Zürich ✓ 東京 é") == "Zürich ✓ 東京 é"
