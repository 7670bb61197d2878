"""`policyd check`: every load error with position and caret, lint warnings, exit codes, JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from policyd.cli import main
from policyd.errors import MAX_LOAD_ERRORS, PolicyLoadError
from policyd.policy import load_policy
from policyd.rules.diagnostics import Severity
from policyd.tools.check import Lint, lint
from tests.support import ROOT, SHIPPED_POLICIES, write_policy


def run_check(directory: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["check", str(directory), *args])


def caret_column(output: str, source_line: str) -> int:
    """The 1-based column the caret under `source_line` points at in check's output."""
    lines = output.splitlines()
    i = next(i for i, line in enumerate(lines) if line == "    " + source_line)
    return lines[i + 1].index("^") - len("    ") + 1


def test_shipped_policies_check_clean() -> None:
    result = run_check(SHIPPED_POLICIES)
    assert result.exit_code == 0, result.output
    assert "error" not in result.output and "warning:" not in result.output
    assert result.output.rstrip().endswith("0 warnings")


def test_every_error_is_reported_not_only_the_first(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "NewProxy.rules": 'reject "a" when content.remote_prot > 0\nreject "b" when contnet.x\n',
            "Login.rules": 'reject "c" when content.remote_port > 0\n',
        },
    )
    result = run_check(tmp_path)
    assert result.exit_code == 1
    heads = [line for line in result.output.splitlines() if ": error: " in line]
    assert [h.split(": error: ")[0] for h in heads] == [
        "Login.rules:1:25",
        "NewProxy.rules:1:25",
        "NewProxy.rules:2:17",
    ]
    assert result.output.rstrip().endswith("3 errors; the policy does not load")


def test_misspelled_field_has_did_you_mean_and_caret_under_the_field(tmp_path: Path) -> None:
    source = 'reject "low port" when content.remote_prot < 1024'
    write_policy(tmp_path, {"NewProxy.rules": f"# ports\n{source}\n"})
    result = run_check(tmp_path)
    assert (
        "NewProxy.rules:2:32: error: 'content' has no field 'remote_prot' in NewProxy "
        "(did you mean 'remote_port'?)"
    ) in result.output
    assert caret_column(result.output, source) == source.index("remote_prot") + 1


def test_field_of_another_op_is_an_error_naming_that_op(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Login.rules": 'reject "x" when content.remote_port == 22\n'})
    result = run_check(tmp_path)
    assert result.exit_code == 1
    assert (
        "Login.rules:1:25: error: 'content' has no field 'remote_port' in Login "
        "('remote_port' is a field of NewProxy)"
    ) in result.output


def test_assignment_instead_of_comparison_points_at_the_equals_sign(tmp_path: Path) -> None:
    source = 'reject "no ssh" when content.remote_port = 22'
    write_policy(tmp_path, {"NewProxy.rules": source + "\n"})
    result = run_check(tmp_path)
    assert "NewProxy.rules:1:42: error: '=' assigns; to compare, write '=='" in result.output
    assert caret_column(result.output, source) == source.index("=") + 1


def test_caret_on_a_continuation_line(tmp_path: Path) -> None:
    second = '    when content.proxy_type == "tcp" and content.remote_port not in rang(1, 2)'
    write_policy(tmp_path, {"NewProxy.rules": f'reject "x" \\\n{second}\n'})
    result = run_check(tmp_path)
    assert "NewProxy.rules:2:" in result.output
    assert caret_column(result.output, second) == second.index("rang(") + 1


def test_caret_keeps_tabs_so_it_lines_up(tmp_path: Path) -> None:
    source = '\treject "x" when content.proxy_nam'
    write_policy(tmp_path, {"NewProxy.rules": source + "\n"})
    result = run_check(tmp_path)
    lines = result.output.splitlines()
    i = lines.index("    " + source)
    assert lines[i + 1] == "    \t" + " " * (source.index("proxy_nam") - 1) + "^"


def test_warnings_alone_exit_zero(tmp_path: Path) -> None:
    write_policy(tmp_path, {"NewProxy.rules": 'reject "closed"\nwarn "never"\n'})
    result = run_check(tmp_path)
    assert result.exit_code == 0
    assert (
        "NewProxy.rules:2:1: warning: this rule never runs: the 'reject' without 'when' on line 1 "
        "always ends evaluation before it"
    ) in result.output
    assert result.output.rstrip().endswith("1 warning")


def test_json_format_has_the_error_fields(tmp_path: Path) -> None:
    write_policy(tmp_path, {"NewProxy.rules": 'reject "x" when content.remote_prot\n'})
    result = run_check(tmp_path, "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["ok"] is False and doc["version"] is None and doc["warnings"] == []
    assert doc["errors"] == [
        {
            "code": "validation_error",
            "message": "'content' has no field 'remote_prot' in NewProxy",
            "hint": "did you mean 'remote_port'?",
            "file": "NewProxy.rules",
            "line": 1,
            "column": 25,
            "severity": "error",
        }
    ]


def test_json_format_lists_warnings_of_a_loading_policy(tmp_path: Path) -> None:
    write_policy(tmp_path, {"CloseProxy.rules": 'reject "x"\n'})
    result = run_check(tmp_path, "--format", "json")
    doc = json.loads(result.output)
    assert result.exit_code == 0 and doc["ok"] is True and doc["errors"] == []
    assert [(w["code"], w["line"], w["severity"]) for w in doc["warnings"]] == [
        ("ignored_change", 1, "warning")
    ]


def test_directory_defaults_to_serves_policies_variable(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "x" when content.timestap\n'})
    result = CliRunner().invoke(main, ["check"], env={"POLICYD_POLICIES": str(tmp_path)})
    assert result.exit_code == 1
    assert "Ping.rules:1:25: error:" in result.stdout


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    result = run_check(tmp_path / "nope")
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_check_through_python_dash_m(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": 'reject "x" when content.timestap > 0\n'})
    proc = subprocess.run(
        [sys.executable, "-m", "policyd", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:3] == [
        "Ping.rules:1:25: error: 'content' has no field 'timestap' in Ping (did you mean 'timestamp'?)",
        '    reject "x" when content.timestap > 0',
        "                            ^",
    ]


# -- the lint pass, as a library ------------------------------------------------------------
def lint_of(tmp_path: Path, files: dict[str, str]) -> list[tuple[str, str]]:
    return [(w.code, str(w.location)) for w in lint(load_policy(write_policy(tmp_path, files)))]


def test_rules_after_an_unconditional_allow_are_unreachable(tmp_path: Path) -> None:
    found = lint_of(tmp_path, {"Ping.rules": 'allow\nreject "a"\nwarn "b" when True\n'})
    assert found == [("unreachable_rule", "Ping.rules:2:1"), ("unreachable_rule", "Ping.rules:3:1")]


def test_conditional_reject_does_not_make_later_rules_unreachable(tmp_path: Path) -> None:
    assert lint_of(tmp_path, {"Ping.rules": 'reject "a" when user.user == "x"\nwarn "b"\n'}) == []


def test_set_in_new_user_conn_is_flagged(tmp_path: Path) -> None:
    found = lint(load_policy(write_policy(tmp_path, {"NewUserConn.rules": 'set content.proxy_name = "x"'})))
    assert len(found) == 1 and found[0].severity is Severity.WARNING
    assert found[0].code == Lint.IGNORED_CHANGE == "ignored_change"
    assert "frps ignores changed content for NewUserConn" in found[0].message


def test_reject_and_set_in_close_proxy_are_flagged_warn_is_not(tmp_path: Path) -> None:
    found = lint_of(
        tmp_path,
        {"CloseProxy.rules": 'warn "a"\nreject "b" when user.user == "x"\nset content.proxy_name = "c"\n'},
    )
    assert found == [("ignored_change", "CloseProxy.rules:2:1"), ("ignored_change", "CloseProxy.rules:3:1")]


def test_set_of_a_login_field_frps_drops_is_flagged(tmp_path: Path) -> None:
    found = lint_of(
        tmp_path, {"Login.rules": 'set content.client_address = "x"\nset content.metas.team = "red"\n'}
    )
    assert found == [("ignored_change", "Login.rules:1:1")]


def test_set_of_the_user_object_outside_login_is_flagged(tmp_path: Path) -> None:
    # frps takes only the op's own fields from a rewrite (server/control.go: retContent.NewProxy).
    found = lint_of(
        tmp_path,
        {"NewProxy.rules": 'set content.user.metas.team = "red"\nset content.metas.team = "red"\n'},
    )
    assert found == [("ignored_change", "NewProxy.rules:1:1")]
    warning = lint(load_policy(tmp_path))[0]
    assert warning.message == (
        "frps does not read content.user.metas.team back from the NewProxy answer: "
        "this 'set' changes nothing for frps"
    )


def test_an_empty_policy_is_flagged(tmp_path: Path) -> None:
    warnings = lint(load_policy(tmp_path))
    assert [w.code for w in warnings] == ["empty_policy"]
    assert "no rule files" in warnings[0].message


def test_unreachable_rule_code_is_stable(tmp_path: Path) -> None:
    warnings = lint(load_policy(write_policy(tmp_path, {"Ping.rules": 'reject "a"\nallow\n'})))
    assert [w.code for w in warnings] == [Lint.UNREACHABLE_RULE] == ["unreachable_rule"]


def test_the_docs_check_session_is_what_check_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    start = page.index("$ policyd check policies\n")
    session = page[start : page.index("```", start)].splitlines()[1:]
    policies = shutil.copytree(SHIPPED_POLICIES, tmp_path / "policies")
    for name, old, new in [
        ("NewProxy.rules", "content.remote_port not in range", "content.remote_prot not in range"),
        ("Login.rules", "in data.access.banned_users", "in data.acess.banned_users"),
    ]:
        path = policies / name
        path.write_text(path.read_text().replace(old, new))
    (policies / "Ping.rules").write_text(
        '# Ping.rules\nreject "maintenance until 18:00" when user.user = "mallory"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert run_check(Path("policies")).stdout.splitlines() == session


# -- the error limit -------------------------------------------------------------------------
def test_past_the_error_limit_the_rest_are_counted(tmp_path: Path) -> None:
    found = MAX_LOAD_ERRORS + 50
    write_policy(tmp_path, {"Ping.rules": "".join(f"reject 'x' when content.bad{i}\n" for i in range(found))})
    with pytest.raises(PolicyLoadError) as info:
        load_policy(tmp_path)
    assert (len(info.value.errors), info.value.omitted, info.value.count) == (MAX_LOAD_ERRORS, 50, found)
    assert str(info.value).splitlines()[-1] == "error limit reached, 50 more"

    result = run_check(tmp_path)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert sum(": error: " in line for line in lines) == MAX_LOAD_ERRORS
    assert lines[-2:] == [
        "error limit reached, 50 more",
        f"{tmp_path}: {found} errors; the policy does not load",
    ]
    document = json.loads(run_check(tmp_path, "--format", "json").stdout)
    assert (len(document["errors"]), document["errors_omitted"]) == (MAX_LOAD_ERRORS, 50)


def test_the_cli_notes_the_error_limit_when_a_policy_does_not_load(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": "".join(f"reject 'x' when content.bad{i}\n" for i in range(101))})
    result = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "error limit reached, 1 more"
