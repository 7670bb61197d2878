"""The worst cases of benchmarks/overrun.py, each inside every documented limit, stop as stated.

With the default limits the steps stop each one, and the message says which operation was
refused and what it was charged before it ran (the accounting). With --max-steps so high that only
the clock can stop them, they run out of CPU time, or one operation is refused as bigger than one
operation may be. How long past the budget they run is measured by the benchmark, never here.
"""

from __future__ import annotations

import functools

import pytest

from benchmarks.overrun import CASES, UNBOUNDED_STEPS, Case, load
from policyd.engine import EvalOptions, decide
from policyd.errors import LimitError
from policyd.policy import Policy
from policyd.rules.decision import Outcome

# case name → what the default limits refuse first, with the steps it was charged.
REFUSED = {
    "issue 12: s.upper() == s.lower(), 100 rules x 40": ".lower() would take 99,999 steps",
    "issue 12: 'zz' in a 1M-item data list, 20 rules": "'in' over a list would take 1,000,001 steps",
    "'in' over 249,998 items, in a loop": "'in' over a list would take 249,999 steps",
    "regex() overflowing RE2's DFA, in a loop": "matching a pattern would take 238,818 steps",
    "s.strip(7,901 chars) of 2,000 chars, in a loop": ".strip() would take 248,000 steps",
    "('ß' * 50000).upper(), in a loop": ".upper() would take 50,000 steps",
    "== of two 240k-item nested data lists, in a loop": "walking a value would take 1,001 steps",
    "sorted() of 900 long strings, in a loop": "sorting would take 79,720 steps",
    "str() of a 15,000-item data list, in a loop": "printing a value would take 15,001 steps",
    "cidr() against 3,900 networks, in a loop": "cidr() would take 249,929 steps",
    "2,000 sets into a 40,000-key metas map": "copying a map would take 80,004 steps",
}
COMPLETES = {"400 rules of 60 uncharged len() calls"}  # constant work: bounded by the rule files


@functools.cache
def policy(name: str) -> tuple[Case, Policy]:
    case = next(c for c in CASES if c.name == name)
    return case, load(case)


def test_every_case_has_an_expectation() -> None:
    assert {c.name for c in CASES} == set(REFUSED) | COMPLETES


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_steps_refuse_each_operation_before_it_runs(name: str) -> None:
    case, compiled = policy(name)
    decision = decide(compiled, case.op, case.content)
    assert decision.outcome is Outcome.REJECT and isinstance(decision.error, LimitError)
    assert REFUSED[name] in decision.error.message, decision.error.message


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_without_a_step_limit_the_clock_or_the_operation_limit_stops_each(name: str) -> None:
    case, compiled = policy(name)
    options = EvalOptions(max_steps=UNBOUNDED_STEPS, eval_seconds=0.01)
    decision = decide(compiled, case.op, case.content, options=options)
    assert decision.outcome is Outcome.REJECT and isinstance(decision.error, LimitError)
    message = decision.error.message
    assert "out of time" in message or "more than one operation may" in message, message


@pytest.mark.parametrize("name", sorted(COMPLETES))
def test_constant_work_runs_to_its_end(name: str) -> None:
    case, compiled = policy(name)
    decision = decide(compiled, case.op, case.content)
    assert (decision.outcome, decision.error) == (Outcome.ALLOW, None)
