"""The loops compiled expressions run: comprehensions, any()/all() over one, and key= functions.

Module-level functions that take what they need as arguments (a compiled `Loops` plan, the
request's `Ctx`): nothing here is a closure over the compiler, so a compiled policy holds no
reference cycles and can be frozen out of the garbage collector (docs/architecture.md).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from policyd.errors import EvaluationError, LimitError
from policyd.rules import functions, sandbox
from policyd.rules.context import Compiled, Ctx
from policyd.rules.sandbox import Budget


@dataclass(frozen=True, slots=True)
class Loops:
    """A compiled comprehension: its loops (target, iterable, conditions) and what it builds."""

    loops: tuple[tuple[ast.AST, Compiled, list[Compiled]], ...]
    kind: type[ast.AST]
    element: Compiled  # the element, or the key of a dict comprehension
    value: Compiled | None  # the value of a dict comprehension


def comprehend(plan: Loops, ctx: Ctx, items: Iterable[Any]) -> Any:
    """A comprehension's value, its first iterable already evaluated (and charged)."""
    results: list[Any] = []
    pairs: dict[Any, Any] = {}
    if len(items):  # type: ignore[arg-type]
        run_loops(plan, 0, Ctx(ctx.names, ctx.budget, dict(ctx.bound), ctx.state), results, pairs, items)
    if plan.kind is ast.DictComp:
        return pairs
    if plan.kind is ast.SetComp:
        return set(results)
    return results


def _assign(bound: dict[str, Any], target: ast.AST, value: Any) -> None:
    if isinstance(target, ast.Name):
        bound[target.id] = value
        return
    assert isinstance(target, ast.Tuple)
    if not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
        raise EvaluationError(f"cannot unpack a {sandbox.describe(value)} into {len(target.elts)} names")
    for t, v in zip(target.elts, value, strict=True):
        _assign(bound, t, v)


def run_loops(
    plan: Loops,
    level: int,
    local: Ctx,
    results: list[Any],
    pairs: dict[Any, Any],
    items: Iterable[Any] | None = None,
) -> None:
    # Module-level and recursive by argument: a nested closure calling itself is a reference
    # cycle per evaluation, left for the garbage collector.
    budget = local.budget
    target, iterable, conditions = plan.loops[level]
    last = level + 1 == len(plan.loops)
    if items is None:
        items = sandbox.sized_iterable(iterable(local), budget)
    for item in items:
        budget.charge()
        _assign(local.bound, target, item)
        if not all(c(local) for c in conditions):
            continue
        if not last:
            run_loops(plan, level + 1, local, results, pairs)
        elif plan.value is not None:
            pairs[plan.element(local)] = sandbox.charge_built(plan.value(local), budget)
        else:
            results.append(sandbox.charge_built(plan.element(local), budget))
        if len(results) + len(pairs) > sandbox.MAX_COLLECTION_LENGTH:
            raise LimitError(f"comprehension builds more than {sandbox.MAX_COLLECTION_LENGTH} items")


# key= functions by function object: their name and whether each takes an iterable first.
_KEY_FUNCTIONS = {fn: (name, iterable_first) for name, (fn, iterable_first) in functions.FUNCTIONS.items()}


def budgeted_key(fn: Callable[[Any], Any], budget: Budget) -> Callable[[Any], Any]:
    """A key= function run like a direct call: its input checked, its work and result charged.

    sorted() and min()/max() call the key once per item from C, past the closures that charge
    the budget: sorted(xs, key=list) over 10,000 long strings built 10,000 long lists.
    """
    name, iterable_first = _KEY_FUNCTIONS[fn]

    def key(value: Any) -> Any:
        budget.charge()
        if iterable_first:
            sandbox.sized_iterable(value, budget)
        return sandbox.charge_built(sandbox.check_length(functions.call(name, fn, (value,), budget)), budget)

    return key


def any_all_finish(name: str, fn: Callable[..., Any], plan: Loops) -> Callable[[Ctx, Any], Any]:
    """`any(x for x in xs)` once `xs` is evaluated: the generic call of a comprehension, with the
    call's closure and the comprehension's folded into one (its list still built and charged in
    full first)."""

    def finish(ctx: Ctx, first: Any) -> Any:
        budget = ctx.budget
        values = comprehend(plan, ctx, sandbox.sized_iterable(first, budget))
        sandbox.sized_iterable(values, budget)
        return functions.call(name, fn, (values,), budget)

    return finish


def any_all(finish: Callable[[Ctx, Any], Any], plan: Loops) -> Compiled:
    first = plan.loops[0][1]
    return lambda ctx: finish(ctx, first(ctx))
