"""`policyd eval`: the exact answer frps would get, and the explanation of how the rules got there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from policyd.cli import main
from policyd.engine import decide
from policyd.policy import load_policy
from policyd.protocol import encode_answer
from policyd.rules.decision import Op
from policyd.rules.secrets import MASK
from policyd.tools.eval import explain
from tests.support import FIXTURES, SHIPPED_POLICIES, fixture, write_policy


def eval_with(policies: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["eval", "--policies", str(policies), *args], input=stdin)


def run_eval(*args: str, stdin: bytes | None = None) -> Result:
    return eval_with(SHIPPED_POLICIES, *args, stdin=stdin)


def expected_answer(name: str) -> str:
    body = fixture(name)
    return encode_answer(decide(load_policy(SHIPPED_POLICIES), Op(body["op"]), body["content"])).decode()


def test_first_line_is_the_exact_answer_of_a_rewrite() -> None:
    result = run_eval("--request", str(FIXTURES / "NewProxy-tcp.json"))
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == expected_answer("NewProxy-tcp")
    assert json.loads(first)["content"]["metas"] == {"owner": "alice", "team": "red"}


def test_explanation_shows_each_rule_reached_with_its_value() -> None:
    result = run_eval("--request", str(FIXTURES / "NewProxy-tcp.json"))
    lines = result.stdout.splitlines()
    i = lines.index("  NewProxy.rules:7:1  let team = account.team")
    assert lines[i + 1] == '      = "red"'
    i = lines.index('  NewProxy.rules:6:1  allow when account.get("admin", False)')
    assert lines[i + 1] == "      when -> false; not fired"
    i = lines.index("  NewProxy.rules:25:1  set content.metas.team = team")
    assert lines[i + 1] == '      fired: set to "red"'


def test_explanation_shows_the_content_diff_and_outcome() -> None:
    out = run_eval("--request", str(FIXTURES / "NewProxy-tcp.json")).stdout
    assert "outcome: rewrite (no reject/allow fired; fell off the end)" in out
    assert 'content diff:\n  content.metas.team: "" -> "red"\n' in out


def test_reject_names_the_rule_that_fired_and_skips_the_rest() -> None:
    alice = '{"user": "alice", "metas": {"token": "tk-alice"}}'
    content = '{"user": ' + alice + ', "proxy_type": "tcp", "remote_port": 7000}'
    result = run_eval("--op", "NewProxy", "--content", content)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == {
        "reject": True,
        "reject_reason": "tcp/udp ports for team red are 6000-6999 (asked for 7000)",
    }
    assert "      fired" in lines and "  (6 rules below not reached)" in lines
    assert (
        "outcome: reject by NewProxy.rules:13:1: tcp/udp ports for team red are 6000-6999 (asked for 7000)"
        in lines
    )


def test_request_from_stdin_with_dash() -> None:
    raw = (FIXTURES / "NewUserConn-tcp.json").read_bytes()
    result = run_eval("-", stdin=raw)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == expected_answer("NewUserConn-tcp")


def test_json_format_carries_answer_trace_and_changes() -> None:
    result = run_eval("--request", str(FIXTURES / "NewProxy-tcp.json"), "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["answer"] == json.loads(expected_answer("NewProxy-tcp"))
    assert doc["outcome"] == "rewrite" and doc["rule"] is None and doc["error"] is None
    assert doc["changes"] == [{"path": "metas.team", "before": "", "after": "red"}]
    fired = [step["rule"] for step in doc["trace"] if step["fired"] and step["action"] != "let"]
    assert fired == ["NewProxy.rules:25:1"]
    assert doc["trace"][2] == {
        "rule": "NewProxy.rules:6:1",
        "source": 'allow when account.get("admin", False)',
        "action": "allow",
        "condition": False,
        "value": None,
        "fired": False,
    }


def test_op_without_a_rule_file_is_explained(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "x"\n'})
    result = eval_with(tmp_path, "--op", "NewUserConn", "--content", "{}")
    assert result.stdout.splitlines()[0] == '{"reject":false,"unchange":true}'
    assert "NewUserConn has no rule file in this policy: allowed unchanged" in result.stdout


def test_a_failing_rule_is_shown_failing_closed(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": "let a = 1\nset content.timestamp = a // 0\nwarn 'w'\n"})
    result = eval_with(tmp_path, "--op", "Ping", "--content", "{}")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == '{"reject":true,"reject_reason":"policy error"}'
    i = lines.index("  Ping.rules:2:1  set content.timestamp = a // 0")
    assert lines[i + 1] == "      error: ZeroDivisionError: integer division or modulo by zero"
    assert "  (1 rule below not reached)" in lines


def test_fail_open_ops_come_from_serves_environment(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "x" when 1 // 0\n'})
    result = CliRunner().invoke(
        main,
        ["eval", "--policies", str(tmp_path), "--op", "Ping", "--content", "{}"],
        env={"POLICYD_FAIL_OPEN_OPS": "Ping"},
    )
    assert result.stdout.splitlines()[0] == '{"reject":false,"unchange":true}'
    assert "so the op is allowed (fail-open)" in result.stdout


def test_policies_and_budgets_come_from_serves_config_file(tmp_path: Path) -> None:
    write_policy(tmp_path, {"p/Ping.rules": 'reject "x" when len([i for i in range(5000)]) > 0\n'})
    (tmp_path / "policyd.toml").write_text('policies = "p"\nmax_steps = 100\n')
    args = ["eval", "--config", str(tmp_path / "policyd.toml"), "--op", "Ping", "--content", "{}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == '{"reject":true,"reject_reason":"policy error"}'
    assert "steps" in result.stdout


def test_secrets_are_masked_in_the_diff_but_not_in_the_answer(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Login.rules": 'set content.privilege_key = "new-key"\n'})
    out = eval_with(tmp_path, "--op", "Login", "--content", '{"privilege_key": "old-key"}').stdout
    assert json.loads(out.splitlines()[0])["content"]["privilege_key"] == "new-key"
    assert f"content.privilege_key: {json.dumps(MASK)} -> {json.dumps(MASK)}" in out
    assert "old-key" not in out


def test_eval_masks_secrets_as_the_decision_log_does(tmp_path: Path) -> None:
    rules = (
        "let token = user.metas.token\n"
        'set content.metas.token = user.metas.token + "-rotated"\n'
        'warn "token {user.metas.token} of {user.user}"\n'
    )
    write_policy(tmp_path, {"NewProxy.rules": rules})
    content = '{"user": {"user": "bob", "metas": {"token": "oldtoken99"}}, "metas": {"token": "oldtoken99"}}'
    pretty = eval_with(tmp_path, "--op", "NewProxy", "--content", content).stdout
    document = json.loads(
        eval_with(tmp_path, "--op", "NewProxy", "--content", content, "--format", "json").stdout
    )
    answer = document.pop("answer")
    for explanation in (pretty.split("\n", 1)[1], json.dumps(document)):
        assert "oldtoken99" not in explanation, explanation
        assert MASK == "***" and json.dumps(MASK) in explanation
    assert answer["content"]["metas"]["token"] == "oldtoken99-rotated", "the answer is exactly frps's"
    assert 'content.metas.token: "***" -> "***"' in pretty
    assert "NewProxy.rules:3:1: token *** of bob" in pretty


def test_reqid_and_now_reach_the_rules(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "{reqid} {now}"\n'})
    out = eval_with(
        tmp_path, "--op", "Ping", "--content", "{}", "--reqid", "abc", "--now", "1700000000"
    ).stdout
    assert out.splitlines()[0] == '{"reject":true,"reject_reason":"abc 1700000000"}'


def test_no_input_is_a_usage_error() -> None:
    result = run_eval("--op", "Ping")
    assert result.exit_code == 2
    assert "give exactly one of --content JSON, --request FILE or '-'" in result.stderr


def test_two_inputs_are_a_usage_error() -> None:
    result = run_eval("--op", "Ping", "--content", "{}", "-", stdin=b"{}")
    assert result.exit_code == 2


def test_bare_content_needs_op() -> None:
    result = run_eval("--content", "{}")
    assert result.exit_code == 2
    assert "--op is required when the input does not name its op (bare content)" in result.stderr


def test_op_must_agree_with_the_body() -> None:
    result = run_eval("--op", "Ping", "--request", str(FIXTURES / "NewProxy-tcp.json"))
    assert result.exit_code == 2
    assert "op mismatch: the body says 'NewProxy', --op says 'Ping'" in result.stderr


def test_invalid_json_is_reported() -> None:
    result = run_eval("--op", "Ping", "--content", "{nope")
    assert result.exit_code == 2 and "not valid JSON" in result.stderr


def test_a_policy_that_does_not_load_exits_2_with_its_errors(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "x" when content.timestap\n'})
    result = eval_with(tmp_path, "--op", "Ping", "--content", "{}")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Ping.rules:1:25: error: 'content' has no field 'timestap'" in result.stderr


def test_explain_library_counts_rules_not_reached() -> None:
    policy = load_policy(SHIPPED_POLICIES)
    explanation = explain(policy, Op.NEW_PROXY, fixture("NewProxy-no-user")["content"])
    assert str(explanation.decision.rule) == "NewProxy.rules:5:1"
    assert explanation.rules_not_reached == len(policy.rules[Op.NEW_PROXY].statements) - 2
    assert explanation.deciding_source.startswith('reject "unknown user or bad token"')


def test_eval_through_python_dash_m_reads_stdin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "policyd", "eval", "--policies", str(SHIPPED_POLICIES), "-"],
        input=(FIXTURES / "Login-anonymous.json").read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[0] == expected_answer("Login-anonymous")
