"""The per-request budget holds against sharing tricks and against big data scanned in a loop.

Sharing: a value that references the same object many times is cheap to build and exponentially
expensive to hash, compare or print. Big data: one loop step can scan a data list of any size.
"""

from __future__ import annotations

import json

import pytest

from policyd.engine import EvalOptions
from policyd.policy import Policy
from tests.security.harness import (
    DATA_FILES,
    assert_failed_closed,
    decide_and_check_unchanged,
    load,
    rules_policy,
)

USES = {
    "hash": 'reject "x" when len({A}) > 0',
    "compare": 'reject "x" when A == B',
    "order": 'reject "x" when A < B',
    "str": 'reject "x" when len(str(A)) > 0',
    "template": 'reject "{A}"',
    "membership": 'reject "x" when A in [B]',
    "sorted": 'reject "x" when len(sorted([A, B])) > 0',
}


def doubling_lets(make: str, lines: int) -> str:
    """`let a1 = (a0, a0)` ... : each line doubles how often the first value is referenced."""
    out = ['let a0 = "x" * 1000', 'let b0 = "x" * 1000']
    for i in range(1, lines + 1):
        out.append(f"let a{i} = " + make.format(p=f"a{i - 1}"))
        out.append(f"let b{i} = " + make.format(p=f"b{i - 1}"))
    return "\n".join(out)


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("make", ["({p}, {p})", "[{p}, {p}]", "{{'k': {p}, 'v': {p}}}"])
def test_exponential_sharing_by_literals_stays_in_budget(make: str, use: str) -> None:
    rules = doubling_lets(make, 60) + "\n" + USES[use].replace("A", "a60").replace("B", "b60")
    assert_failed_closed(decide_and_check_unchanged(rules_policy(rules)).decision)


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("make", ["{p} + {p}", "({p},) + ({p},)"])
def test_doubling_by_operators_is_charged_like_literals(make: str, use: str) -> None:
    """`l = l + l` references every item twice as often without a literal; it must cost as much."""
    rules = (
        "let a0 = [[i + 1000 for i in range(10000)]]\n"
        "let b0 = [[i + 1000 for i in range(10000)]]\n"
        + "\n".join(
            f"let a{i} = {make.format(p=f'a{i - 1}')}\nlet b{i} = {make.format(p=f'b{i - 1}')}"
            for i in range(1, 14)
        )
        + "\n"
        + USES[use].replace("A", "a13").replace("B", "b13")
    )
    decision = decide_and_check_unchanged(rules_policy(rules)).decision
    assert_failed_closed(decision)
    assert decision.error is not None
    # Counted, not timed out: building the shared list was charged for every number it holds.
    assert "steps" in decision.error.message, decision.error


def test_a_list_of_many_numbers_is_charged_per_number() -> None:
    rules = "let e = [i + 1000 for i in range(10000)]\n" + "\n".join(
        f"let l{i} = [e" + ", e" * 19 + "]" for i in range(20)
    )
    decision = decide_and_check_unchanged(rules_policy(rules + '\nreject "built"')).decision
    assert_failed_closed(decision)
    assert decision.error is not None and "steps" in decision.error.message


@pytest.fixture(scope="module")
def big_data_policy() -> Policy:
    big = {"users": [f"user-{i:07d}" for i in range(400_000)]}
    return load(
        {
            **DATA_FILES,
            "data/big.json": json.dumps(big),
            "NewProxy.rules": 'reject "x" when any("nobody" in data.big.users for i in range(10000))',
        }
    )


def test_scanning_big_data_is_refused_before_it_runs(big_data_policy: Policy) -> None:
    """One `in` over 400,000 items is charged its length before it runs: more than one
    operation may take, so it never runs at all (the clock could not stop it midway)."""
    run = decide_and_check_unchanged(big_data_policy)
    assert_failed_closed(run.decision)
    assert run.decision.error is not None
    assert "'in' over a list would take 400,001 steps" in run.decision.error.message


def test_python_level_loops_stop_at_the_deadline() -> None:
    """Loop iterations are cheap in steps and not in time: the clock ends them."""
    policy = rules_policy('reject "x" when any(1 for a in range(10000) for b in range(10000) if a * b < 0)')
    run = decide_and_check_unchanged(policy, options=EvalOptions(eval_seconds=0.02))
    assert_failed_closed(run.decision)
    assert run.decision.error is not None and "out of time" in run.decision.error.message


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("'a' * 50000 + 'b'", "regex('(a+)+$', V)"),
        ("'a' * 50000", "regex('(a|aa)*c', V)"),
        ("'x' * 50000", "regex('(x+x+)+y', V)"),
        ("'a' * 50000", "glob('*a*a*a*a*a*a*a*a*a*a*b', V)"),
        ("'a' * 50000", "glob('*' + '?' * 900 + 'b', V)"),
    ],
)
def test_catastrophic_patterns_are_linear_and_charged_for_their_worst_case(value: str, pattern: str) -> None:
    """RE2 answers these without backtracking; a decision is charged the value's length times
    the pattern's program size (RE2's worst case) before the search, and refuses it when that
    is more than it has: the same patterns on short values answer."""
    refused = decide_and_check_unchanged(rules_policy(f'let V = {value}\nreject "matched" when {pattern}'))
    assert_failed_closed(refused.decision)
    assert refused.decision.error is not None and "matching a pattern" in refused.decision.error.message
    short = value.replace("50000", "20")
    run = decide_and_check_unchanged(rules_policy(f'let V = {short}\nreject "matched" when {pattern}'))
    assert run.decision.error is None and run.decision.reason == ""
