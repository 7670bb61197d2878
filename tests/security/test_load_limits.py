"""Loading is bounded too: any file, however built, gives positioned errors in bounded time.

A slow or crashing load does not stop the service (the last good policy keeps serving), but it
holds the reload thread, so newer edits wait behind it, and it turns a start-up into a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.run import big_policy
from policyd.engine import decide
from policyd.errors import LoadLimitError, ParseError, PolicyLoadError
from policyd.policy import MAX_DATA_BYTES, MAX_DATA_FILES, MAX_TOML_BYTES, load_policy
from policyd.rules import statements
from policyd.rules.decision import Op
from policyd.rules.language import Line, parse_rule
from policyd.rules.sandbox import MAX_FILE_RULES, MAX_POLICY_NODES
from policyd.rules.statements import rule_cost
from tests.security.harness import assert_positioned, load, load_failure
from tests.support import SHIPPED_POLICIES, UNTIMED, write_policy


def load_errors(rules: str) -> list[str]:
    errors = load_failure(rules).errors
    for error in errors:
        assert_positioned(error, "NewProxy.rules")
    return [error.message for error in errors]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("toml-arrays", "a = " + "[" * 1_000 + "]" * 1_000),
        ("toml-inline-tables", "a = " + "{b = " * 1_000 + "1" + "}" * 1_000),
    ],
)
def test_deeply_nested_toml_data_is_a_parse_error(name: str, text: str) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load({"data/deep.toml": text})
    errors = info.value.errors
    assert isinstance(errors[0], ParseError) and errors[0].location is not None
    assert errors[0].location.file == "data/deep.toml"
    assert "nests too deeply" in errors[0].message


def test_json_data_nested_past_the_decoder_limit_is_a_parse_error() -> None:
    with pytest.raises(PolicyLoadError) as info:
        load({"data/deep.json": "[" * 1_100 + "]" * 1_100})
    location = info.value.errors[0].location
    assert location is not None and location.file == "data/deep.json"


def test_json_data_nested_within_the_limit_loads() -> None:
    policy = load({"data/deep.json": "[" * 1_000 + "]" * 1_000})
    assert "deep" in policy.data


def test_a_file_over_the_rule_limit_is_refused_at_the_first_extra_rule() -> None:
    messages = load_errors('warn "w" when content.remote_port == 1\n' * (MAX_FILE_RULES + 1))
    assert messages == [f"more than {MAX_FILE_RULES} rules in one file"]


def test_a_file_of_twenty_thousand_lets_is_read_no_further_than_the_limit() -> None:
    """Each `let` widens the scope of the lines below it; 20,000 of them took 7 s uncapped.
    The line after the limit ends the file's reading: the broken last line is never parsed."""
    rules = "".join(f"let a{i} = {i}\n" for i in range(20_000)) + "let broken = )\n"
    assert load_errors(rules) == [f"more than {MAX_FILE_RULES} rules in one file"]


def test_a_file_of_the_most_lets_allowed_loads_and_each_sees_the_ones_before() -> None:
    lets = "".join(f"let a{i} = a{i - 1} + 1\n" for i in range(1, MAX_FILE_RULES - 1))
    policy = load({"NewProxy.rules": "let a0 = 0\n" + lets + 'reject "{a1998}"\n'})
    assert decide(policy, Op.NEW_PROXY, {}, options=UNTIMED).reason == str(MAX_FILE_RULES - 2)


# A character the tokenizer refuses, after the limit: a rule that was tokenized would say so.
UNTOKENIZABLE = " $"


def test_a_rule_continued_over_200000_lines_is_refused_before_it_is_tokenized() -> None:
    messages = load_errors('reject "x" when \\\n' + "1 + \\\n" * 200_000 + "1" + UNTOKENIZABLE)
    assert messages == ["rule is longer than 8000 characters"]


def test_a_one_megabyte_rule_is_refused_before_it_is_tokenized() -> None:
    messages = load_errors('reject "x" when ' + "1 + " * 250_000 + "1" + UNTOKENIZABLE)
    assert messages == ["rule is longer than 8000 characters"]


@pytest.mark.parametrize("depth", [150, 210])
def test_nested_parentheses_load_or_fail_with_a_position(depth: int) -> None:
    """Parentheses add no AST depth; past Python's own 200 the parser says so, positioned."""
    rules = 'reject "x" when ' + "(" * depth + "1" + ")" * depth
    if depth < 200:
        load({"NewProxy.rules": rules})
    else:
        messages = load_errors(rules)
        assert any("parenthes" in m for m in messages), messages


# -- totals: a policy as a whole (issue 12 §5) -----------------------------------------------------
def test_more_data_files_than_the_limit_is_a_load_error(tmp_path: Path) -> None:
    files = {f"data/t{i:02d}.json": "1" for i in range(MAX_DATA_FILES + 1)}
    with pytest.raises(PolicyLoadError) as info:
        load_policy(write_policy(tmp_path / "p", {**files, "Ping.rules": 'reject "x"'}))
    [error] = info.value.errors
    assert isinstance(error, LoadLimitError) and error.code == "load_limit"
    assert str(error) == (
        "data/: 65 data files; a policy may have at most 64 "
        "(merge small tables into one file (a file holds many tables))"
    )


def test_data_files_over_the_total_size_are_a_load_error(tmp_path: Path) -> None:
    half = MAX_DATA_BYTES // 2 + 1
    files = {"data/a.json": '"' + "a" * half + '"', "data/b.json": '"' + "b" * half + '"'}
    policies = write_policy(tmp_path / "p", {**files, "Ping.rules": 'reject "{len(data.a)}"'})
    with pytest.raises(PolicyLoadError) as info:
        load_policy(policies)
    [error] = info.value.errors  # the rule that reads data.a is not blamed for it
    assert isinstance(error, LoadLimitError) and str(error.location) == "data/b.json"
    assert error.message == (
        f"the data files come to {2 * half + 4} bytes with this one; "
        f"all data files together may hold at most {MAX_DATA_BYTES} bytes (8 MiB)"
    )


def test_toml_data_files_over_their_total_are_a_load_error(tmp_path: Path) -> None:
    rows = MAX_TOML_BYTES // 2 // 12 + 1
    files = {f"data/{n}.toml": "".join(f"k{i:07d} = 1\n" for i in range(rows)) for n in "ab"}
    with pytest.raises(PolicyLoadError) as info:
        load_policy(write_policy(tmp_path / "p", {**files, "Ping.rules": 'reject "x"'}))
    [error] = info.value.errors
    assert isinstance(error, LoadLimitError) and str(error.location) == "data/b.toml"
    assert error.message.startswith("the TOML data files come to")
    assert error.hint == "write large data as JSON: it loads about 100 times faster"


def test_data_files_inside_the_total_load(tmp_path: Path) -> None:
    third = MAX_DATA_BYTES // 3 - 2
    files = {f"data/{n}.json": '"' + n * third + '"' for n in "abc"}
    policy = load_policy(write_policy(tmp_path / "p", {**files, "Ping.rules": 'reject "{len(data.a)}"'}))
    assert sorted(policy.data) == ["a", "b", "c"]


def test_rule_files_over_the_policy_node_total_stop_the_load_at_that_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real total (400,000 nodes) takes seconds to reach: the same code with a small one."""
    monkeypatch.setattr(statements, "MAX_POLICY_NODES", 150)
    rule = 'reject "x" when user.user == "a" and user.metas.team == "b"\n'  # 18 nodes
    files = {"Login.rules": rule * 5, "Ping.rules": rule * 5, "NewProxy.rules": rule * 5}
    with pytest.raises(PolicyLoadError) as info:
        load_policy(write_policy(tmp_path / "p", files))
    [error] = info.value.errors  # one error: the files after it are not compiled
    assert isinstance(error, LoadLimitError)
    assert str(error.location) == "NewProxy.rules:4"  # files in name order: the 9th rule, 162 nodes
    assert error.message == (
        "the rule files hold more than 150 expression parts together; "
        "this rule passes that limit, so loading stops here"
    )


def test_rules_reused_by_a_reload_count_toward_the_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = 'reject "x" when user.user == "a" and user.metas.team == "b"\n'
    policies = write_policy(tmp_path / "p", {"Login.rules": rule * 5})
    previous = load_policy(policies)
    assert [s.cost for s in previous.rules[Op.LOGIN].statements] == [18] * 5
    monkeypatch.setattr(statements, "MAX_POLICY_NODES", 60)
    with pytest.raises(PolicyLoadError) as info:
        load_policy(policies, previous=previous)  # every rule comes from the cache
    assert [str(e.location) for e in info.value.errors] == ["Login.rules:4"]


def test_the_shipped_and_benchmark_policies_fit_the_totals() -> None:
    shipped = load_policy(SHIPPED_POLICIES)
    assert sum(s.cost for f in shipped.rules.values() for s in f.statements) < MAX_POLICY_NODES / 100
    # The 10,000-rule benchmark policy: every rule has one shape, so its largest rules say it all
    # (loading it whole takes seconds; benchmarks/limits.py does).
    files = big_policy()
    rules = [r for text in files.values() for r in text.splitlines() if not r.startswith("#")]
    costs = [
        rule_cost(parse_rule("x.rules", Line(r + "\n", 1)))
        for text in files.values()
        for r in (text.splitlines()[1], text.splitlines()[-1])
    ]
    assert len(rules) == 10_000 and max(costs) * len(rules) <= MAX_POLICY_NODES
