"""`policyd test`: the shipped policy's own cases pass and cover every rule; failures show a diff."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from policyd.cli import main
from policyd.policy import load_policy
from policyd.rules.decision import Op, Outcome
from policyd.service.store import PolicyStore
from policyd.tools.test import CaseError, read_case, run_policy_tests
from tests.support import FIXTURES, SHIPPED_POLICIES, write_policy

PORT_RULE = 'reject "port {content.remote_port} is not allowed" when content.remote_port > 7000\n'
TCP = '{"user": {"user": "alice", "metas": {"team": "red"}}, "proxy_type": "tcp", "remote_port": 8000}'


def run_test(directory: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["test", str(directory), *args])


def policy_with_tests(tmp_path: Path, cases: str, rules: str = PORT_RULE) -> Path:
    return write_policy(
        tmp_path,
        {
            "NewProxy.rules": rules,
            "tests/requests/tcp.json": json.dumps(
                {"version": "0.1.0", "op": "NewProxy", "content": json.loads(TCP)}
            ),
            "tests/cases.toml": cases,
        },
    )


# -- the shipped policy ----------------------------------------------------------------------
def test_shipped_policy_tests_pass() -> None:
    result = run_test(SHIPPED_POLICIES)
    assert result.exit_code == 0, result.output
    summary = result.stdout.splitlines()[-1]
    assert re.fullmatch(r"[1-9]\d* passed, 0 failed", summary), summary
    assert "FAIL" not in result.stdout


def test_shipped_policy_tests_fire_every_rule() -> None:
    report = run_policy_tests(load_policy(SHIPPED_POLICIES), SHIPPED_POLICIES)
    assert report.failed == 0
    assert report.coverage.never_fired == []
    assert len(report.coverage.rules) == load_policy(SHIPPED_POLICIES).rule_count


def test_shipped_policy_tests_through_python_dash_m_with_coverage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "policyd", "test", str(SHIPPED_POLICIES), "--coverage"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = load_policy(SHIPPED_POLICIES).rule_count
    assert f"coverage: {rules} of {rules} rules fired" in proc.stdout.splitlines()


def test_shipped_request_files_are_the_shared_fixtures_byte_for_byte() -> None:
    requests = sorted((SHIPPED_POLICIES / "tests" / "requests").glob("*.json"))
    assert requests
    for path in requests:
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes(), path.name


def test_tests_directory_does_not_change_the_policy_version(tmp_path: Path) -> None:
    copy = shutil.copytree(SHIPPED_POLICIES, tmp_path / "p", ignore=shutil.ignore_patterns("tests"))
    assert not (copy / "tests").exists()
    assert load_policy(copy).version == load_policy(SHIPPED_POLICIES).version


def test_editing_a_test_file_reloads_to_the_same_version(tmp_path: Path) -> None:
    directory = shutil.copytree(SHIPPED_POLICIES, tmp_path / "p")
    store = PolicyStore(directory)
    before = store.policy
    (directory / "tests" / "Ping.toml").write_text("this is [not toml\n")
    attempt = store.reload(("tests/Ping.toml",))
    assert attempt.ok and not attempt.changed
    assert store.policy is before


# -- failures and their diffs ----------------------------------------------------------------
def test_a_failing_case_is_reported_with_its_diff(tmp_path: Path) -> None:
    cases = """
[[case]]
name = "port 8000 is refused"
request = "requests/tcp.json"
expect = "reject"
reason = "port 8000 is not allowed"

[[case]]
name = "the reason names the port"
request = "requests/tcp.json"
expect = "reject"
reason = "port 8001 is not allowed"
"""
    result = run_test(policy_with_tests(tmp_path, cases))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "PASS tests/cases.toml:2: port 8000 is refused" in lines
    i = lines.index("FAIL tests/cases.toml:8: the reason names the port")
    assert lines[i + 1 : i + 4] == [
        "    reject reason differs:",
        "    - port 8001 is not allowed",
        "    + port 8000 is not allowed",
    ]
    assert lines[-1] == "1 passed, 1 failed"


def test_a_wrong_rewrite_shows_a_content_diff(tmp_path: Path) -> None:
    cases = """
[[case]]
name = "stamped"
op = "NewProxy"
content = { proxy_name = "a", metas = { env = "prod" } }
expect = "rewrite"
rewrite = { metas = { team = "blue" } }
"""
    result = run_test(policy_with_tests(tmp_path, cases, 'set content.metas.team = "red"\n'))
    assert result.exit_code == 1
    out = result.stdout
    assert "    rewritten content differs:\n    --- expected\n    +++ got\n" in out
    assert '    -    "team": "blue"\n    +    "team": "red"\n' in out


def test_an_unexpected_outcome_names_what_happened(tmp_path: Path) -> None:
    cases = '[[case]]\nname = "x"\nrequest = "requests/tcp.json"\nexpect = "allow"\n'
    result = run_test(policy_with_tests(tmp_path, cases))
    assert (
        "    expected allow, got reject by NewProxy.rules:1:1: 'port 8000 is not allowed'"
        in result.stdout.splitlines()
    )


def test_reason_matches_is_a_regex_search(tmp_path: Path) -> None:
    cases = """
[[case]]
name = "matches"
request = "requests/tcp.json"
expect = "reject"
reason_matches = "port \\\\d+ is"

[[case]]
name = "does not match"
request = "requests/tcp.json"
expect = "reject"
reason_matches = "^ports"
"""
    result = run_test(policy_with_tests(tmp_path, cases))
    assert "PASS tests/cases.toml:2: matches" in result.stdout
    assert "    reject reason does not match /^ports/: 'port 8000 is not allowed'" in result.stdout


def test_expected_warnings_are_compared_in_order(tmp_path: Path) -> None:
    cases = """
[[case]]
name = "warns"
op = "NewProxy"
content = {}
expect = "allow"
warn = ["one", "three"]
"""
    result = run_test(policy_with_tests(tmp_path, cases, 'warn "one"\nwarn "two"\n'))
    assert result.exit_code == 1
    assert "    warnings differ:" in result.stdout
    assert "    -three\n    +two" in result.stdout


def test_a_rule_error_fails_the_case_with_the_error(tmp_path: Path) -> None:
    cases = '[[case]]\nname = "x"\nop = "NewProxy"\ncontent = {}\nexpect = "reject"\n'
    result = run_test(policy_with_tests(tmp_path, cases, 'reject "x" when 1 // 0\n'))
    assert result.exit_code == 1
    assert "    a rule failed while deciding: NewProxy.rules:1:1: ZeroDivisionError" in result.stdout


def test_a_malformed_case_fails_with_a_hint_and_the_rest_still_run(tmp_path: Path) -> None:
    cases = """
[[case]]
name = "typo"
request = "requests/tcp.json"
expct = "allow"

[[case]]
name = "fine"
request = "requests/tcp.json"
expect = "reject"
"""
    result = run_test(policy_with_tests(tmp_path, cases))
    lines = result.stdout.splitlines()
    assert "FAIL tests/cases.toml:2: typo" in lines
    assert "    invalid test case: unknown key 'expct' (did you mean 'expect'?)" in lines
    assert lines[-1] == "1 passed, 1 failed"


def test_invalid_toml_fails_the_file(tmp_path: Path) -> None:
    result = run_test(policy_with_tests(tmp_path, "[[case]\n"))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith("FAIL tests/cases.toml: (file)")
    assert "invalid TOML" in result.stdout


def test_no_cases_exits_1_and_says_so(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "x"\n'})
    result = run_test(tmp_path)
    assert result.exit_code == 1
    assert f"no test cases found in {tmp_path / 'tests'}/*.toml" in result.stdout
    assert result.stdout.splitlines()[-1] == "0 passed, 0 failed"


def test_a_policy_that_does_not_load_exits_2(tmp_path: Path) -> None:
    result = run_test(policy_with_tests(tmp_path, "", rules='reject "x" when content.remote_prot\n'))
    assert result.exit_code == 2
    assert "NewProxy.rules:1:25: error: 'content' has no field 'remote_prot'" in result.stderr


def test_run_selects_cases_by_name(tmp_path: Path) -> None:
    cases = '[[case]]\nname = "a"\nrequest = "requests/tcp.json"\nexpect = "reject"\n' + (
        '[[case]]\nname = "b"\nrequest = "requests/tcp.json"\nexpect = "allow"\n'
    )
    result = run_test(policy_with_tests(tmp_path, cases), "--run", "^a$")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["PASS tests/cases.toml:1: a", "1 passed, 0 failed"]


def test_coverage_lists_rules_that_never_fired(tmp_path: Path) -> None:
    cases = '[[case]]\nname = "a"\nrequest = "requests/tcp.json"\nexpect = "reject"\n'
    rules = PORT_RULE + 'warn "never" when content.proxy_type == "udp"\n'
    result = run_test(policy_with_tests(tmp_path, cases, rules), "--coverage")
    lines = result.stdout.splitlines()
    assert lines[-3:] == [
        "coverage: 1 of 2 rules fired; never fired:",
        '    NewProxy.rules:2:1: warn "never" when content.proxy_type == "udp"',
        "1 passed, 0 failed",
    ]


def test_json_format(tmp_path: Path) -> None:
    cases = '[[case]]\nname = "a"\nrequest = "requests/tcp.json"\nexpect = "allow"\n'
    result = run_test(policy_with_tests(tmp_path, cases), "--format", "json", "--coverage")
    doc = json.loads(result.stdout)
    assert (doc["passed"], doc["failed"]) == (0, 1)
    assert doc["cases"][0]["name"] == "a" and doc["cases"][0]["ok"] is False
    assert doc["cases"][0]["line"] == 1 and doc["cases"][0]["file"] == "tests/cases.toml"
    assert doc["coverage"] == {"rules": 1, "fired": 1, "never_fired": []}


# -- the case format, as a library -----------------------------------------------------------
def test_override_merges_tables_key_by_key() -> None:
    case = read_case(
        {
            "name": "n",
            "request": "NewProxy-tcp.json",
            "expect": "allow",
            "override": {"user": {"metas": {"team": "blue"}}},
        },
        None,
        FIXTURES,
        "x",
        1,
    )
    assert case.op is Op.NEW_PROXY
    assert case.content["user"] == {
        "user": "alice",
        "metas": {"team": "blue", "token": "tk-alice"},
        "run_id": "8f1c2a7d9e3b4c50",
    }


def test_remove_deletes_dotted_paths() -> None:
    raw = {
        "name": "n",
        "request": "NewProxy-tcp.json",
        "expect": "allow",
        "remove": ["user.metas.token", "metas"],
    }
    case = read_case(raw, None, FIXTURES, "x", 1)
    assert case.content["user"]["metas"] == {"team": "red"} and "metas" not in case.content


def test_remove_of_a_missing_field_is_an_error() -> None:
    raw = {"name": "n", "request": "NewProxy-tcp.json", "expect": "allow", "remove": ["subdomain"]}
    with pytest.raises(CaseError, match="the request has no field 'subdomain'"):
        read_case(raw, None, FIXTURES, "x", 1)


def test_rewrite_expectation_is_the_request_with_the_fields_merged() -> None:
    raw = {
        "name": "n",
        "request": "NewProxy-tcp.json",
        "expect": "rewrite",
        "rewrite": {"metas": {"team": "red"}},
    }
    case = read_case(raw, None, FIXTURES, "x", 1)
    assert case.expect is Outcome.REWRITE and case.rewrite is not None
    assert case.rewrite["metas"] == {"owner": "alice", "team": "red"}
    assert case.rewrite["remote_port"] == 6022


def test_ops_given_differently_are_an_error() -> None:
    raw = {"name": "n", "request": "NewProxy-tcp.json", "expect": "allow", "op": "Ping"}
    with pytest.raises(CaseError, match="the op is given differently: NewProxy, Ping"):
        read_case(raw, None, FIXTURES, "x", 1)


def test_inline_content_needs_an_op() -> None:
    with pytest.raises(CaseError, match="no op"):
        read_case({"name": "n", "content": {}, "expect": "allow"}, None, FIXTURES, "x", 1)


def test_request_and_content_are_exclusive() -> None:
    raw = {"name": "n", "content": {}, "request": "Ping-basic.json", "expect": "allow"}
    with pytest.raises(CaseError, match="exactly one of 'request'"):
        read_case(raw, Op.PING, FIXTURES, "x", 1)


def test_reason_goes_with_reject_only() -> None:
    raw = {"name": "n", "content": {}, "expect": "allow", "reason": "x"}
    with pytest.raises(CaseError, match='go with expect = "reject"'):
        read_case(raw, Op.PING, FIXTURES, "x", 1)


def test_toml_dates_are_refused() -> None:
    import tomllib

    raw = tomllib.loads('name = "n"\nexpect = "allow"\ncontent = { when = 1979-05-27 }\n')
    with pytest.raises(CaseError, match=re.escape("content.when: a date has no JSON form")):
        read_case(raw, Op.PING, FIXTURES, "x", 1)


# -- the case's own content is checked against the op's fields (issue 13 §4) ------------------------
def test_a_misspelled_field_in_a_case_fails_it_with_a_suggestion(tmp_path: Path) -> None:
    cases = """
[[case]]
name = "misspelled"
op = "NewProxy"
content = { proxy_nam = "web", proxy_type = "tcp", remote_port = 8000 }
expect = "reject"

[[case]]
name = "fine"
request = "requests/tcp.json"
expect = "reject"
"""
    result = run_test(policy_with_tests(tmp_path, cases))
    lines = result.stdout.splitlines()
    assert result.exit_code == 1
    assert "FAIL tests/cases.toml:2: misspelled" in lines
    assert (
        "    invalid test case: content: NewProxy has no field 'proxy_nam' (did you mean 'proxy_name'?)"
    ) in lines
    assert lines[-1] == "1 passed, 1 failed"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"override": {"remote_prot": 1}},
            "override: NewProxy has no field 'remote_prot' (did you mean 'remote_port'?)",
        ),
        (
            {"override": {"user": {"usr": "x"}}},
            "override.user: NewProxy has no field 'usr' (did you mean 'user'?)",
        ),
        (
            {"override": {"client_address": "x"}},
            "override: NewProxy has no field 'client_address' ('client_address' is a field of Login)",
        ),
        (
            {"remove": ["user.metas.token", "proxy_nam"]},
            "remove: NewProxy has no field 'proxy_nam' (did you mean 'proxy_name'?)",
        ),
        (
            {"expect": "rewrite", "rewrite": {"metas": {"team": "x"}, "subdomian": "a"}},
            "rewrite: NewProxy has no field 'subdomian' (did you mean 'subdomain'?)",
        ),
    ],
)
def test_override_remove_and_rewrite_are_checked_against_the_op(
    extra: dict[str, object], message: str
) -> None:
    raw = {"name": "n", "request": "NewProxy-tcp.json", "expect": "allow", **extra}
    with pytest.raises(CaseError) as info:
        read_case(raw, None, FIXTURES, "x", 1)
    assert str(info.value) == message


def test_metas_and_request_files_take_any_key() -> None:
    raw = {
        "name": "n",
        "request": "NewProxy-future-field.json",  # frps's own body: fields newer than the schema
        "override": {"metas": {"anything": "goes"}, "user": {"metas": {"x": "y"}}},
        "expect": "allow",
    }
    case = read_case(raw, None, FIXTURES, "x", 1)
    assert case.content["metas"]["anything"] == "goes"


def test_a_request_file_outside_the_policy_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.json").write_text(TCP)
    cases = '[[case]]\nname = "n"\nop = "NewProxy"\nrequest = "../../outside.json"\nexpect = "reject"\n'
    result = run_test(policy_with_tests(tmp_path / "p", cases))
    assert result.exit_code == 1
    assert "request file ../../outside.json: resolves to" in result.stdout
    assert "outside the policy directory" in result.stdout
