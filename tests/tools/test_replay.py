"""`policyd replay` on recordings: the exit code as a deploy gate, hashed secrets that still compare
equal, decisions that depend on a masked secret reported as such, unreadable input."""

from __future__ import annotations

import copy
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from policyd.cli import main
from policyd.engine import StateBinding, decide
from policyd.policy import load_policy
from policyd.rules.decision import OPS, Op
from policyd.state.memory import MemoryBackend
from policyd.tools.recording import HASH_PREFIX, RecordKey, hash_content, header, is_hashed, record_of
from policyd.tools.rollout import decided_by
from tests.support import SHIPPED_POLICIES, fixture, write_policy

KEY = b"k" * 32
AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def login(user: str, token: str, team: str = "red") -> dict[str, Any]:
    body = copy.deepcopy(fixture("Login-basic"))
    body["content"].update(user=user, metas={"team": team, "token": token}, privilege_key="pk-" + token)
    return body


def record(path: Path, policies: Path, bodies: list[dict[str, Any]], key: bytes = KEY) -> Path:
    """What `serve --record-requests` would have written for these requests, decided by `policies`."""
    policy, record_key = load_policy(policies), RecordKey(key)
    lines = [header(record_key, AT)]
    for n, body in enumerate(bodies):
        op = OPS[body["op"]]
        decision = decide(policy, op, body["content"], reqid=f"r{n}", now=AT.timestamp())
        by = decided_by(policy, op)
        lines.append(record_of(op, "0.1.0", body["content"], f"r{n}", decision, AT, record_key, by))
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def key_file(tmp_path: Path, key: bytes = KEY) -> Path:
    path = tmp_path / "key"
    path.write_bytes(key + b"\n")
    return path


def replay(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replay", *args])
    return result.exit_code, result.output


def test_the_same_policy_changes_nothing_and_exits_0(tmp_path: Path) -> None:
    recording = record(
        tmp_path / "r.jsonl", SHIPPED_POLICIES, [fixture("NewProxy-tcp"), fixture("Ping-basic")]
    )
    code, output = replay(
        str(recording), "--policies", str(SHIPPED_POLICIES), "--key", str(key_file(tmp_path))
    )
    assert code == 0, output
    assert output.startswith("replayed 2 requests against ")
    assert ": 2 unchanged (2 decided by the same files), 0 changed, 0 depend on a masked secret" in output


def test_an_op_decided_by_the_same_files_is_not_decided_again(tmp_path: Path) -> None:
    """A valid token's login, hashed in the recording, would fail the shipped token check if
    decided again: with Login.rules and the data unchanged, its recorded answer stands."""
    candidate = shutil.copytree(SHIPPED_POLICIES, tmp_path / "candidate")
    (candidate / "Ping.rules").write_text('reject "no pings"\n')
    recording = record(
        tmp_path / "r.jsonl", SHIPPED_POLICIES, [login("alice", "tk-alice"), fixture("Ping-basic")]
    )
    code, output = replay(str(recording), "--policies", str(candidate), "--format", "json")
    doc = orjson.loads(output)
    assert code == 1
    assert (doc["unchanged"], doc["unchanged_same_files"], doc["changed"]) == (1, 1, 1)
    assert [c["op"] for c in doc["changes"]] == ["Ping"]


def test_an_answer_that_would_change_is_shown_and_exits_1(tmp_path: Path) -> None:
    before = write_policy(tmp_path / "before", {"NewProxy.rules": 'warn "seen"\n'})
    after = write_policy(
        tmp_path / "after", {"NewProxy.rules": 'reject "no tcp" when content.proxy_type == "tcp"\n'}
    )
    recording = record(tmp_path / "r.jsonl", before, [fixture("NewProxy-tcp"), fixture("NewProxy-http")])
    code, output = replay(str(recording), "--policies", str(after), "--key", str(key_file(tmp_path)))
    assert code == 1, output
    version = load_policy(before).version
    assert "1 unchanged, 1 changed, 0 depend on a masked secret" in output
    assert f"2025-01-01T12:00:00.000000Z NewProxy alice reqid r0 ({recording}:2)" in output
    assert f"was: allow (no rule decided), policy {version}" in output
    assert "now: reject 'no tcp' (NewProxy.rules:1)" in output
    code, json_output = replay(str(recording), "--policies", str(after), "--format", "json")
    doc = orjson.loads(json_output)
    assert code == 1 and doc["changed"] == 1 and doc["unchanged"] == 1
    [change] = doc["changes"]
    assert change["old"] == {"outcome": "allow", "reason": "", "rule": "", "policy_version": version}
    assert change["new"] == {"outcome": "reject", "reason": "no tcp", "rule": "NewProxy.rules:1"}
    assert (change["op"], change["user"], change["result"]) == ("NewProxy", "alice", "changed")


def test_a_rewrite_that_would_change_counts(tmp_path: Path) -> None:
    before = write_policy(tmp_path / "before", {"NewProxy.rules": 'set content.subdomain = "a"\n'})
    after = write_policy(tmp_path / "after", {"NewProxy.rules": 'set content.subdomain = "b"\n'})
    recording = record(tmp_path / "r.jsonl", before, [fixture("NewProxy-http")])
    assert replay(str(recording), "--policies", str(before))[0] == 0
    code, output = replay(str(recording), "--policies", str(after))
    assert code == 1 and "was: rewrite" in output and "now: rewrite" in output


# Both secrets are hashed with the same key: a rule comparing them decides as it did.
EQUAL_SECRETS = {"Login.rules": 'reject "mismatch" when content.privilege_key != user.metas.token\n'}


def test_hashed_secrets_compare_equal_across_a_replay(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", EQUAL_SECRETS)
    same = login("alice", "tk-0123456789")
    same["content"]["privilege_key"] = "tk-0123456789"
    different = login("bob", "tk-0123456789")
    recording = record(tmp_path / "r.jsonl", policies, [same, different])
    lines = [orjson.loads(line) for line in recording.read_bytes().splitlines()[1:]]
    assert [line["answer"]["outcome"] for line in lines] == ["allow", "reject"]
    assert lines[0]["content"]["privilege_key"] == lines[0]["content"]["metas"]["token"]
    assert lines[0]["content"]["privilege_key"].startswith(HASH_PREFIX)
    with (policies / "Login.rules").open("a") as rules:
        rules.write("# reviewed\n")  # another file: decided again
    code, output = replay(str(recording), "--policies", str(policies), "--key", str(key_file(tmp_path)))
    assert code == 0, output
    assert "2 unchanged, 0 changed, 0 depend on a masked secret" in output


TOKEN_CHECK = {
    "Login.rules": 'reject "bad token for {user.user}" when user.metas.token not in data.tokens.valid\n',
    "data/tokens.toml": 'valid = ["tk-alice-0123"]\n',
}


def test_a_decision_on_a_masked_secret_is_reported_not_counted_as_changed(tmp_path: Path) -> None:
    """A rule checks the token against tokens written in clear: the replay has only the
    token's hash, so it cannot say what that rule would decide."""
    policies = write_policy(tmp_path / "p", TOKEN_CHECK)
    good, bad = login("alice", "tk-alice-0123"), login("mallory", "tk-wrong-token")
    recording = record(tmp_path / "r.jsonl", policies, [good, bad])
    candidate = shutil.copytree(policies, tmp_path / "candidate")
    with (candidate / "Login.rules").open("a") as rules:
        rules.write('warn "login of {user.user}"\n')  # Login is decided again
    code, output = replay(str(recording), "--policies", str(candidate), "--key", str(key_file(tmp_path)))
    assert code == 0, output
    assert "1 unchanged, 0 changed, 1 depend on a masked secret" in output
    assert "depend on a masked secret (the replay cannot know it; not counted as changed):" in output
    assert "Login alice reqid r0" in output and "now: reject 'bad token for alice' (Login.rules:1)" in output
    assert "reads: user.metas.token (hashed in the recording)" in output


def test_a_change_the_secret_does_not_decide_is_still_a_change(tmp_path: Path) -> None:
    """A request with a hashed secret whose new decision reads no secret is an honest change."""
    policies = write_policy(tmp_path / "a", TOKEN_CHECK)
    recording = record(tmp_path / "r.jsonl", policies, [login("alice", "tk-alice-0123")])
    banned = write_policy(tmp_path / "p", {"Login.rules": 'reject "closed" when user.user == "alice"\n'})
    code, output = replay(str(recording), "--policies", str(banned))
    assert code == 1 and "0 unchanged, 1 changed, 0 depend on a masked secret" in output


# Each rejects in the replay only because the recording holds the token's hash.
@pytest.mark.parametrize(
    ("rule", "reads"),
    [
        ('reject "x" when user.metas.token != "tk-0123456789"', "user.metas.token"),
        ('reject "x" when content.privilege_key != "pk-tk-0123456789"', "content.privilege_key"),
        ('reject "x" when "tk-0123" not in user.metas.get("token", "")', "user.metas"),
        ('reject "x" when not any(v == "tk-0123456789" for v in user.metas.values())', "user.metas"),
        ('reject "x" when content.metas["to" + "ken"] != "tk-0123456789"', "content.metas[...]"),
        ('reject "x" when "tk-0123456789" not in str(content)', "content"),
        ('let t = user.metas.token\nreject "x" when t != "tk-0123456789"', "user.metas.token"),
    ],
)
def test_rules_that_read_a_secret_are_found(tmp_path: Path, rule: str, reads: str) -> None:
    recording = record(
        tmp_path / "r.jsonl",
        write_policy(tmp_path / "a", {"Login.rules": "allow\n"}),
        [login("a", "tk-0123456789")],
    )
    code, output = replay(
        str(recording), "--policies", str(write_policy(tmp_path / "b", {"Login.rules": rule + "\n"}))
    )
    assert code == 0, output
    assert f"reads: {reads} (hashed in the recording)" in output


def test_a_rule_on_other_fields_is_not_secret_dependent(tmp_path: Path) -> None:
    recording = record(
        tmp_path / "r.jsonl",
        write_policy(tmp_path / "a", {"Login.rules": "allow\n"}),
        [login("a", "tk-0123456789")],
    )
    rules = 'reject "x" when user.metas.team == "red" and content.client_spec.type == ""\n'
    code, output = replay(
        str(recording), "--policies", str(write_policy(tmp_path / "b", {"Login.rules": rules}))
    )
    assert code == 1 and "1 changed, 0 depend on a masked secret" in output


def test_a_recording_made_with_another_key_is_refused(tmp_path: Path) -> None:
    recording = record(tmp_path / "r.jsonl", SHIPPED_POLICIES, [fixture("Ping-basic")], key=b"o" * 32)
    code, output = replay(
        str(recording), "--policies", str(SHIPPED_POLICIES), "--key", str(key_file(tmp_path))
    )
    assert code == 2 and "recorded with another key" in output


def test_unreadable_lines_are_bad_input_but_a_torn_last_line_is_tolerated(tmp_path: Path) -> None:
    recording = record(tmp_path / "r.jsonl", SHIPPED_POLICIES, [fixture("Ping-basic")])
    with recording.open("ab") as f:
        f.write(b'{"time": "2025-01-01T12:00:00Z", "op": "Pi')
    code, output = replay(str(recording), "--policies", str(SHIPPED_POLICIES))
    assert code == 0, output
    assert f"unreadable: {recording}:3:" in output and "a write cut short?" in output
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"not json\n" + recording.read_bytes())
    assert replay(str(broken), "--policies", str(SHIPPED_POLICIES))[0] == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    code, output = replay(str(empty), "--policies", str(SHIPPED_POLICIES))
    assert code == 2 and "no requests in the recording" in output


def test_a_policy_that_does_not_load_exits_2(tmp_path: Path) -> None:
    recording = record(tmp_path / "r.jsonl", SHIPPED_POLICIES, [fixture("Ping-basic")])
    broken = write_policy(tmp_path / "p", {"Ping.rules": "reject when\n"})
    code, output = replay(str(recording), "--policies", str(broken))
    assert code == 2 and "does not load" in output


def test_hashing_keeps_no_secret_and_is_stable(tmp_path: Path) -> None:
    key = RecordKey(KEY)
    content = {
        "privilege_key": "pk-secret-1",
        "metas": {"token": "tk-secret-2", "team": "red"},
        "note": "has tk-secret-2 in it",
    }
    hashed = hash_content(content, key)
    text = orjson.dumps(hashed).decode()
    assert "pk-secret-1" not in text and "tk-secret-2" not in text
    assert hashed["metas"]["team"] == "red" and is_hashed(hashed["privilege_key"])
    assert hashed["note"] == f"has {hashed['metas']['token']} in it"  # a copy hashes the same
    assert hash_content(hashed, key) == hashed  # hashing twice changes nothing
    assert hash_content(content, RecordKey(b"x" * 32))["privilege_key"] != hashed["privilege_key"]
    with pytest.raises(Exception, match="at least 16 bytes"):
        RecordKey(b"short")


def test_an_answer_that_depended_on_live_state_is_listed_apart(tmp_path: Path) -> None:
    """The recording holds no state: a rate() limit that rejected the second request then
    allows it in a replay (state is empty there, and a replay counts nothing)."""
    rules = 'reject "one a minute" when not rate("ping:" + user.user, 1, "1m")\n'
    policies = write_policy(tmp_path / "p", {"Ping.rules": rules})
    policy, record_key = load_policy(policies), RecordKey(KEY)
    backend = MemoryBackend()
    lines = [header(record_key, AT)]
    for n in range(2):
        decision = decide(
            policy, Op.PING, fixture("Ping-basic")["content"], now=AT.timestamp(), state=StateBinding(backend)
        )
        lines.append(
            record_of(
                Op.PING, "0.1.0", fixture("Ping-basic")["content"], f"r{n}", decision, AT, record_key, "x"
            )
        )
    recording = tmp_path / "r.jsonl"
    recording.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert [line["answer"]["outcome"] for line in lines[1:]] == ["allow", "reject"]
    code, output = replay(str(recording), "--policies", str(policies))
    assert code == 0, output
    assert "1 unchanged, 0 changed, 0 depend on a masked secret, 1 on live state" in output
    assert "depend on live state (the replay has none; not counted as changed):" in output
    assert "calls: rate() (the state then is not recorded)" in output
