"""Random rule files never crash the loader, and the ones that load never crash a decision.

The loader may only raise PolicyLoadError, whose errors are PolicyErrors that name the file and a
line. Deterministic (derandomized, no example database) so CI sees the same examples every run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.engine import decide
from policyd.errors import PolicyError, PolicyLoadError
from policyd.policy import load_policy
from policyd.protocol import encode_answer
from policyd.rules.decision import Op, Outcome
from tests.security.harness import CONTENT, DATA_FILES, assert_positioned, assert_valid_answer
from tests.support import write_policy

FUZZ = settings(
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Pieces of the language, of Python, and of things that break tokenizers.
WORDS = [
    "reject", "allow", "set", "warn", "let", "when", "content", "user", "data", "op", "reqid",
    "now", "proxy_name", "remote_port", "metas", "team", "custom_domains", "subdomain", "teams",
    "access", "admins", "red", "ports", "x", "y", "d", "for", "in", "if", "else", "not", "and", "or",
    "is", "None", "True", "False", "len", "str", "int", "range", "sorted", "any", "cidr", "glob",
    "regex", "lower", "startswith", "split", "join", "get", "keys", "update", "append", "lambda",
    "__class__", "_x", "import", "format", "10**9", "0", "1", "-1", "2.5", "1e308", "'a'", '"b"',
    '"{content.proxy_name}"', '"{', '}"', '"{{x}}"', "'", '"', "f'{x}'", ".", ",", ":", "=", "==",
    "!=", "<", ">=", "+", "-", "*", "**", "/", "//", "%", "<<", "&", "|", "~", "(", ")", "[", "]",
    "{", "}", ":=", "...", "\\", "#", ";", "@", "$", "?", "!", "`",
]  # fmt: skip
ODD = ["\t", "\r", "\x00", "\x0c", "\u00e9", "\u200b", "\u202e", "\U0001f600", "\ufeff", "\\\n", "\n"]

token_line = st.lists(st.sampled_from(WORDS + ODD), max_size=25).map(" ".join)
raw_line = st.text(max_size=60)

names = st.sampled_from(["content.proxy_name", "content.remote_port", "user.user", "user.metas.team"])
leaves = (
    names
    | st.integers(-(2**70), 2**70).map(str)
    | st.text(max_size=8).map(repr)
    | st.sampled_from(["data.teams", "data.access.admins", "content.custom_domains", "content.metas"])
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(
        children, st.sampled_from(["+", "*", "==", "<", "in", "and", "or", "**", "%"]), children
    )
    calls = st.tuples(st.sampled_from(["len", "str", "sorted", "any", "lower", "int", "max"]), children)
    return (
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        | calls.map(lambda t: f"{t[0]}({t[1]})")
        | children.map(lambda c: f"[v for v in {c}]")
        | children.map(lambda c: f"not {c}")
        | st.tuples(children, children).map(lambda t: f"[{t[0]}, {t[1]}]")
    )


expressions = st.recursive(leaves, _combine, max_leaves=8)
statement = (
    st.tuples(st.text(max_size=6).map(lambda s: s.replace('"', "")), expressions).map(
        lambda t: f'reject "{t[0]}" when {t[1]}'
    )
    | expressions.map(lambda e: f'warn "{{{e}}}"')
    | expressions.map(lambda e: f"let v = {e}")
    | expressions.map(lambda e: f"set content.subdomain = {e}")
    | expressions.map(lambda e: f"allow when {e}")
)
rule_file = st.lists(statement | token_line | raw_line, max_size=8).map("\n".join)


@pytest.fixture(scope="module")
def policy_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield write_policy(Path(tmp), DATA_FILES)


def check_file(directory: Path, source: bytes) -> None:
    (directory / "NewProxy.rules").write_bytes(source)
    try:
        policy = load_policy(directory)
    except PolicyLoadError as e:
        assert e.errors, "PolicyLoadError without errors"
        for error in e.errors:
            assert_positioned(error, "NewProxy.rules")
        return
    decision = decide(policy, Op.NEW_PROXY, dict(CONTENT))
    assert isinstance(decision.outcome, Outcome)
    if decision.error is not None:
        assert isinstance(decision.error, PolicyError)
    try:
        answer = encode_answer(decision)
    except orjson.JSONEncodeError:
        return  # the service answers these with a fail-closed reject (test_unencodable_answers)
    assert_valid_answer(200, answer)


# Python's parser warns about "\e"-style escapes in string literals; a rule's typo, not a failure.
@pytest.mark.filterwarnings("ignore:invalid escape sequence")
@FUZZ
@given(source=rule_file)
def test_random_rule_files_load_or_fail_with_positions(policy_dir: Path, source: str) -> None:
    check_file(policy_dir, source.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=200)
@given(source=st.binary(max_size=200))
def test_random_bytes_as_a_rule_file_fail_with_positions(policy_dir: Path, source: bytes) -> None:
    check_file(policy_dir, source)
