"""No error message carries an object's repr or a memory address.

Rule errors reach the log, the decision log, `/status` and `policyd eval`; Python's own texts
for some errors embed reprs (`<function _lower at 0x7f...> is not in list`). Every message comes
from sandbox.shown() (values) or sandbox.error_text() (Python's texts), which never render one.
Checked on hand-made leaks, the whole escape corpus and the differential test's grammar.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.engine import new_context
from policyd.errors import PolicyError, ValidationError
from policyd.rules import reference
from policyd.rules.decision import Op
from policyd.rules.sandbox import Budget, error_text
from policyd.rules.schema import SCHEMAS
from tests.rules.expressions import DATA, NOW, OPS, SETTINGS, expressions, lets, records
from tests.rules.test_differential import compile_expression
from tests.security.corpus import EVAL_FAILS, LOAD_REFUSED, as_rule
from tests.security.harness import decide_and_check_unchanged, load_failure, rules_policy

LEAK = re.compile(r"0x[0-9a-fA-F]{6,}|<[^<>]* at [^<>]*>")


def assert_no_leak(message: str) -> None:
    assert not LEAK.search(message), f"message shows an object: {message!r}"


@pytest.mark.parametrize(
    ("rule", "shown"),
    [
        ("reject 'x' when [1].index(lower)", ".index(): a function is not in the list"),
        ("reject 'x' when (1,).index(upper)", ".index(): a function is not in the tuple"),
        ("reject 'x' when data.teams[lower]", "no key a function in this object"),
        ("reject 'x' when {'a': 1}[(lower, 1)]", "no key (a function, 1) in this object"),
        ("set content.subdomain = lower", "must be a string, not function (a function)"),
        ("reject 'x' when lower << 5000", "a function << 5000"),
        ("reject 'x' when sorted([lower, upper])", "not supported between instances of 'function'"),
        ("reject 'x' when min(lower, cidr)", "not supported"),
        ("reject '{lower}'", "a function cannot be turned into text"),
        ("reject 'x' when str([1, cidr])", "a function cannot be turned into text"),
    ],
)
def test_functions_as_values_are_named_by_their_kind(rule: str, shown: str) -> None:
    decision = decide_and_check_unchanged(rules_policy(rule)).decision
    assert decision.error is not None
    assert shown in decision.error.message
    assert_no_leak(str(decision.error))


def test_values_in_messages_are_cut_short() -> None:
    decision = decide_and_check_unchanged(rules_policy("reject 'x' when data.teams['k' * 5000]")).decision
    assert decision.error is not None
    assert "no key 'kkkk" in decision.error.message and len(decision.error.message) < 120


@pytest.mark.parametrize("case", EVAL_FAILS, ids=[c[0] for c in EVAL_FAILS])
def test_corpus_failures_show_no_object(case: tuple[str, str, str]) -> None:
    decision = decide_and_check_unchanged(rules_policy(as_rule(case[1]))).decision
    assert decision.error is not None
    assert_no_leak(str(decision.error))


@pytest.mark.parametrize("case", LOAD_REFUSED, ids=[c[0] for c in LOAD_REFUSED])
def test_corpus_refusals_show_no_object(case: tuple[str, str, str]) -> None:
    for error in load_failure(as_rule(case[1])).errors:
        assert_no_leak(str(error))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Op, str, dict[str, Any], dict[str, Any]]:
    op = draw(st.sampled_from(OPS))
    return op, draw(expressions(op)), draw(records(SCHEMAS[op])), draw(lets)


@SETTINGS
@given(cases())
def test_errors_of_the_generated_grammar_show_no_object(
    case: tuple[Op, str, dict[str, Any], dict[str, Any]],
) -> None:
    op, source, content, let_values = case
    try:
        tree, compiled, generated = compile_expression(source, op)
    except ValidationError as e:
        assert_no_leak(str(e))
        return
    except SyntaxError:
        return
    names = reference.request_names(op, content, data=DATA, reqid="ab12", now=NOW) | let_values
    runs = [lambda: reference.evaluate(tree, names, Budget(40, 60.0))]
    for fn in (compiled, generated):
        ctx = new_context(op, content, data=DATA, budget=Budget(40, 60.0), reqid="ab12", now=NOW)
        ctx.names.update(let_values)
        runs.append(lambda fn=fn, ctx=ctx: fn(ctx))
    for run in runs:
        try:
            run()
        except PolicyError as e:
            assert_no_leak(str(e))
        except Exception as e:  # decide() wraps it as EvaluationError(error_text(e))
            assert_no_leak(error_text(e))
