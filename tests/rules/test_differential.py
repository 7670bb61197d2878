"""Both fast paths against the reference evaluator: same result, error class and steps.

Hypothesis generates expressions over the language's grammar (fields of the op's schema, lets,
data, functions, methods, operators, displays, comprehensions, f-strings) and request contents
(fields present, absent, null, or of the wrong type; unknown fields), with budgets small enough
to hit the step limit. Every expression the compiler accepts must evaluate identically through
`ExpressionCompiler` closures (as `decide()` runs them) and through `policyd.rules.reference`.
Example counts are bounded and generation is derandomized, so the test is deterministic.
"""

from __future__ import annotations

import ast
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import new_context
from policyd.errors import Location, ValidationError
from policyd.rules import reference, sandbox
from policyd.rules.codegen import emit
from policyd.rules.compiler import ExpressionCompiler
from policyd.rules.context import Scope
from policyd.rules.decision import Op
from policyd.rules.program import compile_fragment
from policyd.rules.sandbox import Budget
from policyd.rules.schema import SCHEMAS, USER
from tests.rules.expressions import (
    CONTENTS,
    DATA,
    LETS,
    NOW,
    OPS,
    SETTINGS,
    SPECIALISED,
    expressions,
    lets,
    records,
)


def compile_expression(source: str, op: Op) -> Any:
    """The expression's AST, its closure and its generated function (policyd.rules.codegen)."""
    scope = Scope(SCHEMAS[op], USER, frozenset(DATA), op.value, lets=frozenset(LETS))
    tree = ast.parse(source, mode="eval").body
    compiler = ExpressionCompiler(scope, lambda line, col: Location("t.rules", line, col), record=True)
    compiled = compiler.compile(tree)
    return tree, compiled, compile_fragment(emit(tree, compiler))


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "value", fn()
    except Exception as e:  # every error class is part of the contract
        return "error", type(e)


def same(a: Any, b: Any) -> bool:
    """Equal values of the very same types, all the way down (NaN equals NaN here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, type({}.keys()) | type({}.values()) | type({}.items())):
        return same(list(a), list(b))
    return bool(a == b)


def check(op: Op, source: str, content: dict[str, Any], let_values: dict[str, Any], max_steps: int) -> None:
    try:
        tree, compiled, generated = compile_expression(source, op)
    except (ValidationError, SyntaxError):
        return  # refused at load time (or an f-string nested in one): never evaluated by either
    ref_budget = Budget(max_steps, 60.0)
    names = reference.request_names(op, content, data=DATA, reqid="ab12", now=NOW) | let_values
    ref = outcome(lambda: reference.evaluate(tree, names, ref_budget))
    for name, fn in (("closures", compiled), ("generated code", generated)):
        budget = Budget(max_steps, 60.0)
        ctx = new_context(op, content, data=DATA, budget=budget, reqid="ab12", now=NOW)
        ctx.names.update(let_values)
        fast = outcome(lambda fn=fn, ctx=ctx: fn(ctx))  # type: ignore[misc]
        assert fast[0] == ref[0] and same(fast[1], ref[1]), (
            f"{source!r}: {name} {fast!r} != reference {ref!r}"
        )
        steps = (budget.steps, ref_budget.steps)
        assert steps[0] == steps[1], f"{source!r}: steps charged ({name}, reference) {steps}"


@st.composite
def cases(draw: st.DrawFn) -> tuple[Op, str, dict[str, Any], dict[str, Any], int]:
    op = draw(st.sampled_from(OPS))
    content = draw(records(SCHEMAS[op]))
    return op, draw(expressions(op)), content, draw(lets), draw(st.sampled_from([4, 40, sandbox.MAX_STEPS]))


@SETTINGS
@given(cases())
def test_compiled_expressions_agree_with_the_reference(
    case: tuple[Op, str, dict[str, Any], dict[str, Any], int],
) -> None:
    check(*case)


# Shapes the fast path specialises, each against contents where the field is there, absent,
# null and of the wrong type.
@pytest.mark.parametrize("source", SPECIALISED)
@pytest.mark.parametrize("index", range(len(CONTENTS)))
@pytest.mark.parametrize("max_steps", [1, sandbox.MAX_STEPS])
def test_specialised_shapes_agree_with_the_reference(source: str, index: int, max_steps: int) -> None:
    let_values = {"team": "red", "ports": [6000, 6999], "xs": ["a"], "n": 3, "t": {"ports": [1, 2]}}
    for op in (Op.NEW_PROXY, Op.LOGIN):
        check(op, source, CONTENTS[index], let_values, max_steps)


def test_the_generated_grammar_mostly_compiles() -> None:
    """Guards the differential test against testing nothing: most generated expressions compile."""
    compiled = 0
    total = 0

    @settings(max_examples=200, derandomize=True, deadline=None, database=None)
    @given(st.sampled_from(OPS).flatmap(lambda op: st.tuples(st.just(op), expressions(op))))
    def count(case: tuple[Op, str]) -> None:
        nonlocal compiled, total
        total += 1
        try:
            compile_expression(case[1], case[0])
        except (ValidationError, SyntaxError):
            return
        compiled += 1

    count()
    assert compiled > total * 0.6, (compiled, total)


LONG_ITEM = "x" * (sandbox.COPY_CHARS_PER_STEP + 6)


@pytest.mark.parametrize(
    ("source", "charged"),
    [
        ('content.proxy_type in ("tcp", "udp")', False),
        ("content.remote_port not in [6666, 6667, 6697]", False),
        ("content.proxy_type in ()", False),
        (f'content.proxy_type in ("tcp", "{LONG_ITEM}")', True),  # 64+ characters of strings: charged
        ('"a" < content.proxy_type in ("tcp", "udp")', True),  # a chain: the generic comparison
    ],
)
def test_membership_in_a_literal_display_is_constant_work(source: str, charged: bool) -> None:
    """`x in ("tcp", "udp")` costs what `x == "tcp"` does, one comparison an item of the rule's
    own text: nothing is charged, on every back end, however long x is."""
    content = {"proxy_type": "y" * 5_000, "remote_port": 6001}
    tree, compiled, generated = compile_expression(source, Op.NEW_PROXY)
    ref_budget = Budget(sandbox.MAX_STEPS, 60.0)
    names = reference.request_names(Op.NEW_PROXY, content, data=DATA, reqid="ab12", now=NOW)
    reference.evaluate(tree, names, ref_budget)
    steps = [ref_budget.steps]
    for fn in (compiled, generated):
        budget = Budget(sandbox.MAX_STEPS, 60.0)
        fn(new_context(Op.NEW_PROXY, content, data=DATA, budget=budget, reqid="ab12", now=NOW))
        steps.append(budget.steps)
    assert len(set(steps)) == 1, steps
    assert (steps[0] > 0) is charged, steps
