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


def test_scanning_big_data_in_a_loop_stops_at_the_deadline(big_data_policy: Policy) -> None:
    """One loop step here is a scan of 400,000 strings: the clock must be read at every step."""
    options = EvalOptions(eval_seconds=0.02)
    run = decide_and_check_unchanged(big_data_policy, options=options)
    assert_failed_closed(run.decision)
    assert run.decision.error is not None and "out of time" in run.decision.error.message
    assert run.seconds < 0.5, f"a 20 ms budget ran {run.seconds:.2f} s"


@pytest.mark.parametrize(
    "condition",
    [
        "regex('(a+)+$', 'a' * 50000 + 'b')",
        "regex('(a|aa)*c', 'a' * 50000)",
        "regex('(x+x+)+y', 'x' * 50000)",
        "glob('*a*a*a*a*a*a*a*a*a*a*b', 'a' * 50000)",
        "glob('*' + '?' * 900 + 'b', 'a' * 50000)",
    ],
)
def test_catastrophic_patterns_answer_without_backtracking(condition: str) -> None:
    """RE2 and fnmatch's translation run these in (near-)linear time: the answer is just no."""
    run = decide_and_check_unchanged(rules_policy(f'reject "matched" when {condition}'))
    assert run.decision.error is None and run.decision.reason == ""
