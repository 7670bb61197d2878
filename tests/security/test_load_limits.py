"""Loading is bounded too: any file, however built, gives positioned errors in bounded time.

A slow or crashing load does not stop the service (the last good policy keeps serving), but it
holds the reload thread, so newer edits wait behind it, and it turns a start-up into a traceback.
"""

from __future__ import annotations

import time

import pytest

from policyd.errors import ParseError, PolicyLoadError
from policyd.rules.sandbox import MAX_FILE_RULES
from tests.security.harness import HANG_SECONDS, assert_positioned, load, load_failure


def timed_failure(rules: str) -> tuple[list[str], float]:
    started = time.perf_counter()
    errors = load_failure(rules).errors
    for error in errors:
        assert_positioned(error, "NewProxy.rules")
    return [error.message for error in errors], time.perf_counter() - started


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
    messages, _ = timed_failure('warn "w" when content.remote_port == 1\n' * (MAX_FILE_RULES + 1))
    assert messages == [f"more than {MAX_FILE_RULES} rules in one file"]


def test_a_file_of_twenty_thousand_lets_is_refused_quickly() -> None:
    """Each `let` widens the scope of the lines below it; 20,000 of them took 7 s uncapped."""
    messages, seconds = timed_failure("".join(f"let a{i} = {i}\n" for i in range(20_000)))
    assert messages == [f"more than {MAX_FILE_RULES} rules in one file"]
    assert seconds < HANG_SECONDS


def test_a_file_of_the_most_lets_allowed_loads_in_bounded_time() -> None:
    started = time.perf_counter()
    load({"NewProxy.rules": "".join(f"let a{i} = {i}\n" for i in range(MAX_FILE_RULES))})
    assert time.perf_counter() - started < HANG_SECONDS


def test_a_rule_continued_over_200000_lines_is_refused_quickly() -> None:
    messages, seconds = timed_failure('reject "x" when \\\n' + "1 + \\\n" * 200_000 + "1")
    assert messages == ["rule is longer than 8000 characters"]
    assert seconds < HANG_SECONDS


def test_a_one_megabyte_rule_is_refused_before_it_is_tokenized() -> None:
    messages, seconds = timed_failure('reject "x" when ' + "1 + " * 250_000 + "1")
    assert messages == ["rule is longer than 8000 characters"]
    assert seconds < HANG_SECONDS


@pytest.mark.parametrize("depth", [150, 210])
def test_nested_parentheses_load_or_fail_with_a_position(depth: int) -> None:
    """Parentheses add no AST depth; past Python's own 200 the parser says so, positioned."""
    rules = 'reject "x" when ' + "(" * depth + "1" + ")" * depth
    if depth < 200:
        load({"NewProxy.rules": rules})
    else:
        messages, _ = timed_failure(rules)
        assert any("parenthes" in m for m in messages), messages
