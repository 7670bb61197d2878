"""Error messages that say what is wrong, where, and the fix (issue 13 §4), and rule files that
cannot hide a rule from their readers (issue 12 §4).

Each case is a rule file loaded as the service loads it; the message is compared whole, with its
`file:line:col`, so a message that drifts back to misleading fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from policyd.cli import main
from policyd.errors import InternalError, PolicyLoadError, ValidationError
from policyd.rules.decision import Op, Outcome
from tests.helpers import load_errors, policy_of, run
from tests.support import write_policy


def error_of(rules: str, op: Op = Op.NEW_PROXY, data: dict[str, str] | None = None) -> str:
    files = {f"{op.value}.rules": rules, **{f"data/{k}": v for k, v in (data or {}).items()}}
    errors = load_errors(files)
    assert len(errors) == 1, errors
    return str(errors[0])


# -- brackets, strings, quotes -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            'reject "x" when (content.remote_port > 1))',
            "NewProxy.rules:1:42: ')' closes a bracket that was never opened "
            "(remove it, or add the '(' it closes)",
        ),
        (
            'allow\nallow\nallow\nallow\nallow\nreject "x" when content.remote_port in (1, 2))',
            "NewProxy.rules:6:46: ')' closes a bracket that was never opened "
            "(remove it, or add the '(' it closes)",
        ),
        (
            'reject "x" when [1, (2, 3]]',
            "NewProxy.rules:1:26: ']' does not close the '(' opened at 1:21 (close that one with ')' first)",
        ),
        ('reject "x" when (content.remote_port > 1', "NewProxy.rules:1:17: '(' is opened and never closed"),
        (
            'reject "unterminated when True',
            'NewProxy.rules:1:8: this string is never closed: it needs a " before the end of the line '
            '(add the closing ")',
        ),
        (
            'reject "x {"a"}" when True',
            'NewProxy.rules:1:13: the reason ended at the " before this: a " inside the reason closes it '
            "(inside {...} use the other kind of quote, ': \"... {x == 'a'}\")",
        ),
        (
            'warn "port {content.proxy_name == "web"}"',
            'NewProxy.rules:1:36: the message ended at the " before this: a " inside the message closes it '
            "(inside {...} use the other kind of quote, ': \"... {x == 'a'}\")",
        ),
    ],
)
def test_bracket_and_quote_mistakes_are_named_where_they_are(rules: str, message: str) -> None:
    assert error_of(rules) == message


def test_the_other_kind_of_quote_inside_a_reason_works() -> None:
    decision = run("reject \"x {content.proxy_name == 'web'}\"", {"proxy_name": "web"})
    assert decision.reason == "x True"


# -- format specs, %-formatting, f-strings --------------------------------------------------------
@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            'reject "port {content.remote_port:05d}"',
            "NewProxy.rules:1:34: in {...}: format specs ({x:>5}, {x:05d}) are not supported in a message",
        ),
        (
            'reject "port {content.remote_port:>5}"',
            "NewProxy.rules:1:34: in {...}: format specs ({x:>5}, {x:05d}) are not supported in a message",
        ),
        (
            'reject "{content.proxy_name!r}"',
            "NewProxy.rules:1:28: in {...}: conversions (!r, !s, !a) are not supported in a message",
        ),
    ],
)
def test_format_specs_in_a_message_say_they_are_not_supported(rules: str, message: str) -> None:
    assert error_of(rules).startswith(message + " (")


def test_a_condition_with_a_colon_or_bang_inside_brackets_is_no_format_spec() -> None:
    decision = run(
        'reject "{content.proxy_name[0:3]} {content.proxy_name != 1}"', {"proxy_name": "webserver"}
    )
    assert decision.reason == "web True"


@pytest.mark.parametrize("expression", ['"%d" % content.remote_port', 'f"{content.proxy_name}%s" % 1'])
def test_percent_formatting_is_refused_at_load_time(expression: str) -> None:
    message = error_of(f'reject "x" when {expression} == "1"')
    assert message == (
        "NewProxy.rules:1:17: %-formatting is not available in rules "
        '(use a template, reject "port {content.remote_port}", or an f-string)'
    )


def test_a_number_modulo_still_works() -> None:
    assert run('reject "odd" when content.remote_port % 2 == 1', {"remote_port": 6001}).reason == "odd"


def test_an_f_string_is_one_rule_a_reason_with_or_without_the_f() -> None:
    content = {"remote_port": 7000, "proxy_name": "web"}
    plain = run('reject "port {content.remote_port} of {content.proxy_name}"', content)
    prefixed = run('reject f"port {content.remote_port} of {content.proxy_name}"', content)
    in_expression = run('let p = f"port {content.remote_port}"\nreject "{p}"', content)
    assert plain.reason == prefixed.reason == "port 7000 of web"
    assert in_expression.reason == "port 7000"


def test_an_f_string_reason_points_its_errors_at_the_right_column() -> None:
    assert error_of('reject f"x {content.remote_prot}"').startswith(
        "NewProxy.rules:1:21: 'content' has no field 'remote_prot' in NewProxy"
    )


# -- set of a constant of the wrong type ----------------------------------------------------------
@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            'set content.remote_port = "10100"',
            "NewProxy.rules:1:27: content.remote_port is an integer; this value is a string "
            "(write the number without quotes: 10100)",
        ),
        (
            "set content.proxy_name = 5",
            "NewProxy.rules:1:26: content.proxy_name is a string; this value is an integer "
            '(put it in quotes: "5")',
        ),
        (
            'set content.use_encryption = "true"',
            "NewProxy.rules:1:30: content.use_encryption is a boolean; this value is a string "
            "(write True without quotes)",
        ),
        (
            'set content.custom_domains = ["a.example.com", 1]',
            "NewProxy.rules:1:30: content.custom_domains is a list of strings; this value is a list",
        ),
        (
            'set content.metas.team = 1 when content.proxy_name == "x"',
            "NewProxy.rules:1:26: content.metas.team is a string; this value is an integer "
            '(put it in quotes: "1")',
        ),
    ],
)
def test_a_set_of_a_constant_of_the_wrong_type_is_a_load_error(rules: str, message: str) -> None:
    assert error_of(rules) == message


def test_a_set_of_a_computed_value_of_the_wrong_type_fails_with_good_grammar() -> None:
    decision = run("set content.remote_port = content.proxy_name", {"proxy_name": "web"})
    assert decision.outcome is Outcome.REJECT and decision.error is not None
    assert decision.error.message.startswith("content.remote_port must be an integer, not str")


# -- suggestions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            'reject "x" when map(lambda x: x, [1])',
            "NewProxy.rules:1:17: unknown function 'map' "
            "(map() is not in the policy language; use a comprehension: [f(x) for x in xs])",
        ),
        (
            'reject "x" when tuple(content.custom_domains)',
            "NewProxy.rules:1:17: unknown function 'tuple' "
            "(tuple() is not in the policy language; write a tuple, (a, b), or use list(...))",
        ),
        (
            'reject "x" when license()',
            "NewProxy.rules:1:17: unknown function 'license' "
            "(license() is a Python built-in the policy language does not offer)",
        ),
        (
            'reject "x" when lenn(content.proxy_name) > 1',
            "NewProxy.rules:1:17: unknown function 'lenn' (did you mean 'len'?)",
        ),
        (
            'reject "x" when regx("a", "b")',
            "NewProxy.rules:1:17: unknown function 'regx' (did you mean 'regex'?)",
        ),
        ('reject "x" when regx("a")', "NewProxy.rules:1:17: unknown function 'regx'"),
        (
            'reject "x" when content.custom_domains.append("a")',
            "NewProxy.rules:1:17: method 'append' is not available in rules "
            "(rules never change a value; build a new one, e.g. xs + [x] or sorted(xs))",
        ),
        (
            'reject "x" when "{}".format(1)',
            "NewProxy.rules:1:17: method 'format' is not available in rules "
            '(use a template, "{x}", or an f-string)',
        ),
    ],
)
def test_suggestions_name_only_what_would_be_valid_there(rules: str, message: str) -> None:
    assert error_of(rules) == message


# -- data files ----------------------------------------------------------------------------------
def test_a_broken_toml_data_file_gives_its_line_and_column_and_no_cascade(tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "my-policy",
        {
            "data/users.toml": 'admins = ["alice",\n  "bob"\nbanned = []\n',
            "data/teams.toml": "red = 1\n",
            "Login.rules": (
                'reject "x" when user.user in data.users.admins\nreject "y" when data.users.banned\n'
            ),
        },
    )
    errors = load_errors(
        {str(p.relative_to(policies)): p.read_text() for p in policies.rglob("*") if p.is_file()}
    )
    assert len(errors) == 1  # the rules that read data.users are not blamed for it
    assert str(errors[0]).startswith(
        "data/users.toml:1:10: invalid TOML: the array opened here with '[' is never closed "
        "(close it with ']'; tomllib stopped at line 3: "  # then tomllib's words, by Python version
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = [1,\n", "data/x.toml:1:5: invalid TOML: the array opened here with '[' is never closed"),
        (
            "a = {b = 1\n",
            "data/x.toml:1:5: invalid TOML: the inline table opened here with '{' is never closed",
        ),
        ('a = "x\n', "data/x.toml:1:7: invalid TOML: Illegal character '\\n'"),
        ("a = 1\na = 2\n", "data/x.toml:2:6: invalid TOML: Cannot overwrite a value"),
        (
            'a = "[" # [\nb = [1, 2]\nc = 3 4\n',
            "data/x.toml:3:7: invalid TOML: Expected newline or end of document",
        ),
    ],
)
def test_toml_errors_are_positioned(text: str, message: str) -> None:
    errors = load_errors({"data/x.toml": text, "Ping.rules": ""})
    assert len(errors) == 1 and str(errors[0]).startswith(message), errors


def test_a_rule_of_an_empty_data_directory_does_not_blame_a_directory_named_policies() -> None:
    assert error_of('reject "x" when data.users', Op.LOGIN) == (
        "Login.rules:1:22: no data file named 'users' (data/ holds no .toml or .json files)"
    )


# -- the loader's crash class: every failure is a positioned policy error ---------------------------
def test_a_zero_range_step_is_a_load_error_where_it_is() -> None:
    message = error_of('reject "x" when content.remote_port in range(0, 10, 0)')
    assert message == "NewProxy.rules:1:53: range() step must not be zero"


def test_an_error_raised_by_load_time_work_is_located_at_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    import policyd.rules.statements as statements

    def broken(*args: object) -> object:
        raise KeyError("boom")

    monkeypatch.setattr(statements, "_expression", broken)
    errors = load_errors({"Ping.rules": 'allow\nreject "x" when user.user == "a"\n'})
    assert [(type(e), str(e.location)) for e in errors] == [(InternalError, "Ping.rules:2")]
    assert errors[0].code == "internal_error"
    assert errors[0].message == "policyd failed to compile this rule: KeyError: 'boom'"


def test_a_failure_of_the_program_builder_is_an_error_of_its_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import policyd.policy as policy_module

    def broken(*args: object) -> object:
        raise ValueError("no")

    monkeypatch.setattr(policy_module, "build_program", broken)
    errors = load_errors({"Ping.rules": 'reject "x"'})
    assert [(e.code, str(e)) for e in errors] == [
        (
            "internal_error",
            "Ping.rules: policyd failed to load this file: ValueError: no "
            "(a bug in policyd; please report it with this file)",
        )
    ]


def test_a_load_time_evaluation_error_is_a_validation_error() -> None:
    errors = load_errors({"NewProxy.rules": 'reject "x" when content.remote_port in range(0, 10, 0)'})
    assert isinstance(errors[0], ValidationError)


# -- hidden rules ----------------------------------------------------------------------------------
HIDING = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\x1b", "\x00", "\u202e"]


@pytest.mark.parametrize("char", HIDING, ids=[f"U+{ord(c):04X}" for c in HIDING])
def test_a_character_that_hides_a_rule_is_refused_where_it_is(char: str) -> None:
    errors = load_errors({"Login.rules": f'reject "a"\n# note{char}allow when True\nreject "no"\n'})
    assert len(errors) == 1
    message = str(errors[0])
    assert message.startswith(f"Login.rules:2:7: character U+{ord(char):04X} (")
    assert message.endswith(f"(delete it; in a string, write it as the escape '\\u{ord(char):04x}')")


def test_a_hidden_rule_never_runs_because_the_file_does_not_load() -> None:
    with pytest.raises(PolicyLoadError):
        policy_of({"Login.rules": '# note\x1callow when True\nreject "no"\n'})


def test_the_check_output_shows_the_hidden_character_escaped(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Login.rules": '# note\x1callow when True\nreject "no"\n'})
    result = CliRunner().invoke(main, ["check", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[1:3] == ["    # note\\u001callow when True", "          ^"]


def test_windows_line_ends_and_tabs_are_fine() -> None:
    policy = policy_of({"Login.rules": 'reject "a" \\\r\n\twhen user.user == "x"\r\nallow\r\n'})
    assert [s.location.line for s in policy.rules[Op.LOGIN].statements] == [1, 3]


def test_a_hidden_character_written_as_an_escape_in_a_string_works() -> None:
    decision = run('reject "a\\u2028b" when content.proxy_name == "x\\x1c"', {"proxy_name": "x\x1c"})
    assert decision.reason == "a\u2028b"


def test_fmt_refuses_a_file_with_a_hidden_character(tmp_path: Path) -> None:
    path = tmp_path / "Login.rules"
    path.write_text("# note\x1callow  when True\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["fmt", str(path)])
    assert result.exit_code != 0
    assert "character U+001C" in result.output
    assert path.read_text(encoding="utf-8") == "# note\x1callow  when True\n"
