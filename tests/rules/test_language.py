"""The rule language: statements, `when`, templates, continuation, zero values, errors."""

from __future__ import annotations

import pytest

from policyd.engine import EvalOptions
from policyd.errors import EvaluationError, ParseError, ValidationError
from policyd.rules.decision import GENERIC_ERROR_REASON, Op, Outcome
from tests.helpers import load_errors, run

TCP = {
    "user": {"user": "alice", "metas": {"team": "red"}, "run_id": "r1"},
    "proxy_type": "tcp",
    "remote_port": 6022,
}


def only_error(rules: str, op: Op = Op.NEW_PROXY, data: dict[str, str] | None = None) -> str:
    files = {f"{op.value}.rules": rules, **{f"data/{k}": v for k, v in (data or {}).items()}}
    errors = load_errors(files)
    assert len(errors) == 1, errors
    return str(errors[0])


# -- statements --------------------------------------------------------------------------
def test_reject_with_condition_true_rejects_with_reason() -> None:
    d = run('reject "no tcp" when content.proxy_type == "tcp"', TCP)
    assert (d.outcome, d.reason) == (Outcome.REJECT, "no tcp")
    assert str(d.rule) == "NewProxy.rules:1:1"


def test_reject_with_condition_false_allows_unchanged() -> None:
    d = run('reject "no udp" when content.proxy_type == "udp"', TCP)
    assert d.outcome is Outcome.ALLOW and d.content is None


def test_unconditional_reject() -> None:
    assert run('reject "closed"', TCP).reason == "closed"


def test_first_reject_or_allow_wins() -> None:
    d = run('allow when user.user == "alice"\nreject "never reached"', TCP)
    assert d.outcome is Outcome.ALLOW and str(d.rule) == "NewProxy.rules:1:1"
    d = run('reject "first"\nreject "second"', TCP)
    assert d.reason == "first"


def test_allow_keeps_changes_made_so_far() -> None:
    d = run("set content.remote_port = 6100\nallow\nset content.remote_port = 6200", TCP)
    assert d.outcome is Outcome.REWRITE and d.content is not None
    assert d.content["remote_port"] == 6100


def test_set_is_seen_by_later_rules() -> None:
    d = run(
        'set content.subdomain = "x"\nreject "saw {content.subdomain}" when content.subdomain == "x"', TCP
    )
    assert d.reason == "saw x"


def test_set_to_the_same_value_is_not_a_change() -> None:
    d = run("set content.remote_port = 6022", TCP)
    assert d.outcome is Outcome.ALLOW and d.changes == []


def test_set_of_an_absent_field_to_its_zero_value_is_not_a_change() -> None:
    d = run('set content.subdomain = ""', TCP)
    assert d.outcome is Outcome.ALLOW


def test_set_returns_whole_content_with_unknown_fields() -> None:
    content = {**TCP, "future": {"a": [1, 2]}}
    d = run("set content.remote_port = 6100", content)
    assert d.content == {**content, "remote_port": 6100}
    assert content["remote_port"] == 6022, "the request itself is never modified"


def test_set_into_a_map_key_and_index_path() -> None:
    d = run('set content.metas.owner = user.user\nset content.headers["X-Team"] = user.metas.team', TCP)
    assert d.content is not None
    assert d.content["metas"] == {"owner": "alice"}
    assert d.content["headers"] == {"X-Team": "red"}
    assert [c.path for c in d.changes] == ["metas.owner", "headers.X-Team"]


def test_set_keeps_other_map_keys_and_does_not_touch_the_request() -> None:
    content = {**TCP, "metas": {"env": "prod"}}
    d = run('set content.metas.owner = "bob"', content)
    assert d.content is not None and d.content["metas"] == {"env": "prod", "owner": "bob"}
    assert content["metas"] == {"env": "prod"}


def test_set_with_wrong_type_fails_closed() -> None:
    d = run("set content.remote_port = content.proxy_name", TCP)
    assert d.outcome is Outcome.REJECT and d.reason == GENERIC_ERROR_REASON
    assert isinstance(d.error, EvaluationError)
    assert d.error.message.startswith("content.remote_port must be an integer, not str")
    assert str(d.error.location) == "NewProxy.rules:1:1"


@pytest.mark.parametrize(("rule", "value"), [("2 ** 63", 2**63), ("-(2 ** 63) - 1", -(2**63) - 1)])
def test_set_of_an_integer_over_frps_go_width_fails_closed(rule: str, value: int) -> None:
    # orjson would encode it, and frps would fail the op decoding it into a Go int.
    d = run(f"set content.remote_port = {rule}", TCP)
    assert d.outcome is Outcome.REJECT and d.reason == GENERIC_ERROR_REASON
    assert isinstance(d.error, EvaluationError)
    assert d.error.message == (
        "content.remote_port must fit frps's Go int (-9223372036854775808 to 9223372036854775807), "
        f"not {value}"
    )
    assert run("set content.remote_port = 2 ** 63 - 1", TCP).content == {**TCP, "remote_port": 2**63 - 1}


def test_set_list_field_accepts_a_tuple_as_list() -> None:
    d = run('set content.custom_domains = ("a.example.com",)', TCP)
    assert d.content is not None and d.content["custom_domains"] == ["a.example.com"]


def test_warn_collects_and_goes_on() -> None:
    d = run('warn "one {content.remote_port}"\nwarn "two" when False\nreject "end"', TCP)
    assert [w.message for w in d.warnings] == ["one 6022"]
    assert d.reason == "end"


def test_let_names_a_value_for_later_lines() -> None:
    d = run('let team = user.metas.team\nreject "team {team}" when team == "red"', TCP)
    assert d.reason == "team red"


def test_let_is_per_file() -> None:
    errors = load_errors({"Login.rules": "let team = 1", "NewProxy.rules": 'reject "x" when team'})
    assert "unknown name 'team'" in str(errors[0])


# -- when, templates, continuation, comments ---------------------------------------------
def test_when_inside_a_string_or_brackets_is_not_the_separator() -> None:
    d = run('reject "say when" when content.proxy_name in ["when"]', {**TCP, "proxy_name": "when"})
    assert d.reason == "say when"


def test_python_conditional_expression_stays_usable() -> None:
    d = run("reject \"{'big' if content.remote_port > 6000 else 'small'}\"", TCP)
    assert d.reason == "big"


def test_template_braces_and_expressions() -> None:
    d = run('reject "{{literal}} {content.remote_port + 1} {user.metas.team.upper()}"', TCP)
    assert d.reason == "{literal} 6023 RED"


def test_template_escape_sequences() -> None:
    d = run(r'reject "tab\there \"quoted\""', TCP)
    assert d.reason == 'tab\there "quoted"'


def test_single_quotes_work_for_messages() -> None:
    assert run("reject 'plain'", TCP).reason == "plain"


def test_backslash_continues_a_rule() -> None:
    rules = (
        'reject "port {content.remote_port}" \\\n'
        '    when content.proxy_type == "tcp" \\\n'
        "    and content.remote_port > 6000"
    )
    d = run(rules, TCP)
    assert d.reason == "port 6022"
    assert str(d.rule) == "NewProxy.rules:1:1"


def test_comments_and_blank_lines_are_ignored() -> None:
    d = run('# a comment\n\n   # indented comment\nreject "x" # trailing comment\n', TCP)
    assert d.reason == "x" and str(d.rule) == "NewProxy.rules:4:1"


def test_falling_off_the_end_allows() -> None:
    assert run('warn "w"', TCP).outcome is Outcome.ALLOW


# -- names and missing-means-empty --------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "expr", "expected"),
    [
        ({}, "content.remote_port", 0),
        ({"remote_port": None}, "content.remote_port", 0),
        ({}, "content.subdomain", ""),
        ({"subdomain": None}, "content.subdomain", ""),
        ({}, "content.use_encryption", False),
        ({}, "content.custom_domains", []),
        ({"custom_domains": None}, "content.custom_domains", []),
        ({}, "content.headers", {}),
        ({"headers": None}, "content.headers", {}),
        ({}, "content.metas.anything", ""),
        ({"metas": {"a": "1"}}, "content.metas.missing", ""),
        ({}, "user.metas.team", ""),
        ({"user": {"user": "", "metas": None, "run_id": "x"}}, "user.metas.team", ""),
        ({}, "user.user", ""),
        ({}, 'content["future_field"]', None),
        ({"future_field": 3}, 'content["future_field"]', 3),
    ],
)
def test_absent_and_null_read_as_zero_values(content: dict[str, object], expr: str, expected: object) -> None:
    d = run(f'reject "zero" when {expr} == {expected!r}', content)
    assert d.outcome is Outcome.REJECT, d.error


def test_login_user_is_built_from_the_login_fields() -> None:
    content = {"user": "bob", "metas": {"team": "blue"}, "run_id": "r9"}
    d = run('reject "{user.user}/{user.metas.team}/{user.run_id}"', content, op=Op.LOGIN)
    assert d.reason == "bob/blue/r9"


def test_op_reqid_now_names() -> None:
    d = run('reject "{op} {reqid} {now}"', TCP, reqid="abc", now=1700000000)
    assert d.reason == "NewProxy abc 1700000000"


def test_data_files_are_read_as_data_stem() -> None:
    d = run(
        'reject "{data.teams.red.ports} {data.lists[0]}" when user.metas.team in data.teams',
        TCP,
        data={"teams.toml": "[red]\nports = [6000, 6999]\n", "lists.json": '["x", "y"]'},
    )
    assert d.reason == "[6000, 6999] x"


def test_missing_data_key_fails_closed_with_the_key_named() -> None:
    d = run('reject "x" when data.teams.green', TCP, data={"teams.toml": "[red]\n"})
    assert d.outcome is Outcome.REJECT and d.reason == GENERIC_ERROR_REASON
    assert d.error is not None and "'green'" in d.error.message


# -- functions ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr",
    [
        'cidr("10.1.2.3:80", "10.0.0.0/8")',
        'cidr("[2001:db8::1]:443", "2001:db8::/32")',
        'cidr("10.1.2.3", ["192.168.0.0/16", "10.0.0.0/8"])',
        'not cidr("11.1.2.3:80", "10.0.0.0/8")',
        'not cidr("not-an-ip", "10.0.0.0/8")',
        'glob("*.example.com", "a.example.com")',
        'not glob("*.example.com", "example.org")',
        'regex("^a+b$", "aaab")',
        'split_host_port("[::1]:8080") == ("::1", 8080)',
        'split_host_port("1.2.3.4:80") == ("1.2.3.4", 80)',
        "6000 in range(6000, 7000) and 7000 not in range(6000, 7000)",
        '"6000" not in range(0, 10**12)',
        "6000.0 in range(6000, 7000)",
        'lower("AB") == "ab" and upper("ab") == "AB"',
        'startswith("red-x", "red-") and endswith("x.com", ".com")',
        "len([1, 2]) == 2 and min(3, 1) == 1 and max([1, 5]) == 5 and sum([1, 2]) == 3",
        "sorted(['b', 'a']) == ['a', 'b'] and any([0, 1]) and all([1, 1])",
        "int('7') + float('1.5') == 8.5 and str(5) == '5' and bool(1)",
        "[x * 2 for x in range(3)] == [0, 2, 4]",
        "{k: v for k, v in [('a', 1)]} == {'a': 1}",
        "{x for x in 'aab'} == {'a', 'b'}",
        "'a-b'.split('-') == ['a', 'b'] and ','.join(['a', 'b']) == 'a,b'",
        "{'a': 1}.get('b', 2) == 2",
        "f'{1 + 1}x' == '2x'",
    ],
)
def test_functions_and_methods(expr: str) -> None:
    d = run(f'reject "yes" when {expr}', TCP)
    assert d.reason == "yes", d.error


# -- load-time errors with positions -------------------------------------------------------
def test_misspelled_field_did_you_mean_with_position() -> None:
    msg = only_error('reject "x" when content.remote_prot > 0')
    assert msg == (
        "NewProxy.rules:1:25: 'content' has no field 'remote_prot' in NewProxy (did you mean 'remote_port'?)"
    )


def test_field_of_another_op_is_an_error() -> None:
    msg = only_error('reject "x" when content.remote_port > 0', op=Op.LOGIN)
    assert msg == (
        "Login.rules:1:25: 'content' has no field 'remote_port' in Login "
        "('remote_port' is a field of NewProxy)"
    )


def test_unknown_name_did_you_mean() -> None:
    msg = only_error('reject "x" when contnet.proxy_name')
    assert msg == "NewProxy.rules:1:17: unknown name 'contnet' (did you mean 'content'?)"


def test_unknown_function_did_you_mean() -> None:
    assert "unknown function 'lenn' (did you mean 'len'?)" in only_error('reject "x" when lenn("a")')


def test_unknown_data_file_did_you_mean() -> None:
    msg = only_error('reject "x" when data.team', data={"teams.toml": ""})
    assert msg == "NewProxy.rules:1:22: no data file named 'team' (did you mean 'teams'?)"


def test_unknown_statement_did_you_mean() -> None:
    msg = only_error('rejct "x"')
    assert msg.startswith("NewProxy.rules:1:1: expected one of reject, allow, set, warn, let; got 'rejct'")
    assert "did you mean 'reject'?" in msg


def test_error_position_on_a_continuation_line() -> None:
    msg = only_error('reject "x" \\\n  when content.proxy_typ == "tcp"')
    assert msg.startswith("NewProxy.rules:2:16: 'content' has no field 'proxy_typ'")


def test_error_position_inside_a_template() -> None:
    msg = only_error('reject "port {content.remote_prt}"')
    assert msg.startswith("NewProxy.rules:1:23: 'content' has no field 'remote_prt'")


def test_assignment_where_comparison_was_meant() -> None:
    msg = only_error('reject "x" when content.proxy_type = "tcp"')
    assert msg == "NewProxy.rules:1:36: '=' assigns; to compare, write '=='"


def test_assignment_after_and_points_at_the_equals_sign() -> None:
    msg = only_error('reject "x" when content.use_encryption and content.proxy_type = "tcp"')
    assert msg == "NewProxy.rules:1:63: '=' assigns; to compare, write '=='"


def test_assignment_inside_a_template_expression() -> None:
    msg = only_error('reject "{ content.remote_port = 1 }"')
    assert msg == "NewProxy.rules:1:31: in {...}: '=' assigns; to compare, write '=='"


def test_comparison_where_set_assignment_was_meant() -> None:
    msg = only_error('set content.subdomain == "x"')
    assert msg == "NewProxy.rules:1:23: '==' compares; 'set' assigns with '=': set content.FIELD = value"


def test_incomplete_comparison_is_not_called_an_assignment() -> None:
    msg = only_error('reject "x" when content.remote_port ==')
    assert msg == "NewProxy.rules:1:39: the expression ends too early, after '=='"


def test_unexpected_token_is_named() -> None:
    msg = only_error('reject "x" when content.remote_port == 1 2')
    assert msg == "NewProxy.rules:1:42: invalid syntax: unexpected '2'"


def test_unclosed_bracket_points_at_the_bracket() -> None:
    msg = only_error('reject "x" when len(content.custom_domains > 1')
    assert msg == "NewProxy.rules:1:20: '(' is opened and never closed"


def test_error_columns_count_characters_not_bytes() -> None:
    msg = only_error('reject "é" when "é€" == content.proxy_nme')
    assert msg.startswith("NewProxy.rules:1:33: 'content' has no field 'proxy_nme'")


def test_set_of_another_ops_field_names_the_op() -> None:
    msg = only_error("set content.remote_port = 1", op=Op.LOGIN)
    assert msg == (
        "Login.rules:1:13: 'content' has no field 'remote_port' in Login "
        "('remote_port' is a field of NewProxy)"
    )


def test_syntax_error_says_what_was_expected() -> None:
    errors = load_errors({"NewProxy.rules": 'reject "x" when (content.remote_port > '})
    assert isinstance(errors[0], ParseError)
    assert str(errors[0]).startswith("NewProxy.rules:1:")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("reject when x", "expected a \"quoted\" reason after 'reject'"),
        ('allow "x"', "expected 'when' or the end of the rule after 'allow'"),
        ("set content.remote_port 5", "expected '=' in 'set content.FIELD = value'"),
        ("set user.user = 'x'", "expected 'content.FIELD' after 'set'"),
        ("set content.proxy_nam = 'x'", "has no field 'proxy_nam'"),
        ("set content.custom_domains.x = 'x'", "set it whole"),
        ('reject "x" when', "expected a condition after 'when'"),
        ("let content = 1", "is a built-in name"),
        ("let x = 1 when True", "'let' takes no 'when'"),
        ('reject "{}"', "empty {} in a message"),
        ('reject "{"', "never closed"),
        ('reject "}"', "single '}'"),
        ('reject rb"x"', "plain"),
        ('reject """x"""', "plain"),
        ('reject "x" when a when b', "'when' may appear only once"),
    ],
)
def test_malformed_rules_get_specific_messages(rules: str, message: str) -> None:
    assert message in only_error(rules)


def test_all_errors_of_a_load_are_collected() -> None:
    errors = load_errors(
        {
            "NewProxy.rules": 'reject "x" when content.a\nreject "y" when content.b',
            "Login.rules": "allow when nope",
            "Bogus.rules": "",
        }
    )
    assert len(errors) == 4
    assert any("'Bogus.rules' is not named after an op" in str(e) for e in errors)
    assert all(isinstance(e, ParseError | ValidationError) or e.code == "policy_error" for e in errors)


def test_broken_data_file_error_has_position() -> None:
    errors = load_errors({"data/teams.toml": "[red]\nports = [1,\n", "NewProxy.rules": ""})
    assert str(errors[0]).startswith("data/teams.toml:")
    errors = load_errors({"data/teams.json": '{"a": 1,}', "NewProxy.rules": ""})
    assert str(errors[0]).startswith("data/teams.json:1:")


# -- failure semantics ----------------------------------------------------------------------
def test_evaluation_error_fails_closed_with_location() -> None:
    d = run('reject "x" when content.remote_port / 0', TCP)
    assert d.outcome is Outcome.REJECT and d.reason == GENERIC_ERROR_REASON
    assert d.error is not None and str(d.error.location) == "NewProxy.rules:1:1"
    assert "ZeroDivisionError" in d.error.message


def test_fail_open_ops_allow_and_are_marked() -> None:
    d = run(
        'reject "x" when content.remote_port / 0',
        TCP,
        options=EvalOptions(fail_open_ops=frozenset({Op.NEW_PROXY})),
    )
    assert d.outcome is Outcome.ALLOW and d.failed_open and d.error is not None


def test_type_error_in_comparison_fails_closed() -> None:
    d = run('reject "x" when content.remote_port > "a"', TCP)
    assert d.reason == GENERIC_ERROR_REASON and d.error is not None


def test_round_with_huge_ndigits_is_refused_not_computed() -> None:
    d = run('reject "x" when round(12345, -10**7) == 0', TCP)
    assert d.error is not None and d.error.code == "limit_error"
    assert "round()" in d.error.message


DOC_EXAMPLE = """\
# NewProxy.rules — comments start with '#'
let team = user.metas.team
reject "unknown team" when not team
reject "tcp/udp ports are 6000-6999 (asked for {content.remote_port})" when content.proxy_type in ("tcp", "udp") and content.remote_port not in range(6000, 7000)
set content.subdomain = team + "-" + content.subdomain when content.subdomain and not content.subdomain.startswith(team + "-")
reject "custom domains must end in .{team}.example.com" when any(not d.endswith("." + team + ".example.com") for d in content.custom_domains)
warn "proxy {content.proxy_name} has no encryption" when not content.use_encryption
allow when user.user in data.admins
"""  # noqa: E501 - verbatim from shared/policy-language.md


def test_the_language_contract_example_works_verbatim() -> None:
    data = {"admins.json": '["root"]'}
    http = {
        "user": {"user": "alice", "metas": {"team": "red"}},
        "proxy_type": "http",
        "subdomain": "blog",
        "custom_domains": ["www.red.example.com"],
    }
    d = run(DOC_EXAMPLE, http, data=data)
    assert d.outcome is Outcome.REWRITE and d.content is not None
    assert d.content["subdomain"] == "red-blog"
    assert [w.message for w in d.warnings] == ["proxy  has no encryption"]
    d = run(DOC_EXAMPLE, {**TCP, "remote_port": 7000}, data=data)
    assert d.reason == "tcp/udp ports are 6000-6999 (asked for 7000)"
    d = run(DOC_EXAMPLE, {**http, "custom_domains": ["x.blue.example.com"]}, data=data)
    assert d.reason == "custom domains must end in .red.example.com"
    assert run(DOC_EXAMPLE, {"proxy_type": "tcp"}, data=data).reason == "unknown team"


def test_set_path_key_must_be_a_plain_string() -> None:
    assert "expected a string key in set path" in only_error('set content.metas[f"x"] = "1"')


def test_content_and_user_offer_the_read_only_dict_methods() -> None:
    d = run(
        "reject \"{content.get('remote_port')} {content.get('future', 'none')} {user.get('user')}\" "
        "when 'proxy_type' in content.keys()",
        TCP,
    )
    assert d.reason == "6022 none alice", d.error


@pytest.mark.parametrize("call", ["lower(5)", "upper(None)", "startswith(1, 'a')", "endswith([], 'a')"])
def test_string_functions_name_the_wrong_argument_type(call: str) -> None:
    d = run(f'reject "x" when {call}', TCP)
    assert d.error is not None and d.error.code == "eval_error"
    assert "takes a string, not" in d.error.message
