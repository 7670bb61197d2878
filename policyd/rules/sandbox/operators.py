"""The operators a rule can use, each charging what its operands cost before it runs: the safe
arithmetic, `in` and the comparisons, and the tables that map AST operators to them."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from policyd.errors import EvaluationError, LimitError
from policyd.rules.sandbox.budget import (
    CHEAP,
    COPY_CHARS_PER_STEP,
    DICT_VIEWS,
    MAX_COLLECTION_LENGTH,
    MAX_INT_BITS,
    MAX_STRING_LENGTH,
    SCALARS,
    SEQUENCES,
    TEXT_CHARS_PER_STEP,
    Budget,
    charge_built,
    charge_compare,
    deep_size,
)
from policyd.rules.sandbox.values import shown


# -- safe operators -------------------------------------------------------------------------
def _int_bits(value: Any) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def safe_pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and _int_bits(a) * b > MAX_INT_BITS:
        raise LimitError(f"{shown(a)} ** {shown(b)} would exceed {MAX_INT_BITS} bits")
    if isinstance(b, int | float) and abs(b) > MAX_INT_BITS:
        raise LimitError(f"exponent {shown(b)} exceeds {MAX_INT_BITS}")
    return a**b


def _repeat_check(seq: Any, times: Any) -> None:
    if not isinstance(times, int):
        return
    if isinstance(seq, str):
        if len(seq) * times > MAX_STRING_LENGTH:
            raise LimitError(
                f"repeating a string to {len(seq) * times} characters exceeds {MAX_STRING_LENGTH}"
            )
    elif isinstance(seq, list | tuple):
        if len(seq) * times > MAX_COLLECTION_LENGTH:
            raise LimitError(f"repeating a list to {len(seq) * times} items exceeds {MAX_COLLECTION_LENGTH}")
        if any(type(x) not in SCALARS for x in seq):
            raise EvaluationError("only lists of plain values may be repeated with *")


def safe_mul(a: Any, b: Any) -> Any:
    _repeat_check(a, b)
    _repeat_check(b, a)
    if isinstance(a, int) and isinstance(b, int) and _int_bits(a) + _int_bits(b) > MAX_INT_BITS:
        raise LimitError(f"product would exceed {MAX_INT_BITS} bits")
    return a * b


def safe_add(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, str):
        if len(a) + len(b) > MAX_STRING_LENGTH:
            raise LimitError(f"string of {len(a) + len(b)} characters exceeds {MAX_STRING_LENGTH}")
    elif isinstance(a, SEQUENCES) and isinstance(b, SEQUENCES) and len(a) + len(b) > MAX_COLLECTION_LENGTH:
        raise LimitError(f"collection of {len(a) + len(b)} items exceeds {MAX_COLLECTION_LENGTH}")
    return a + b


def safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and _int_bits(a) + b > MAX_INT_BITS:
        raise LimitError(f"{shown(a)} << {shown(b)} would exceed {MAX_INT_BITS} bits")
    return a << b


def safe_mod(a: Any, b: Any) -> Any:
    # str % args is printf-style formatting, which has width/precision tricks ('%*s').
    if isinstance(a, str):
        raise EvaluationError("'%' formatting of strings is not available; use a {template}")
    return a % b


# Set-like operators (`a - b`, `a & b`, `a | b`, `a ^ b` on sets and dict views) work through
# both operands whatever the result's size: charged for both before they run.
_SET_LIKE = (set, frozenset, dict, *DICT_VIEWS)


def _charged_operator(fn: Callable[[Any, Any], Any], set_like: bool) -> Callable[[Any, Any, Budget], Any]:
    """The operator as rules apply it: operands sized before, the result charged as built.

    A container result is charged like a literal: `l = l + l` doubles how often every item is
    referenced, so without the charge ten lines made one == or hash cost seconds.
    """
    if not set_like:
        return lambda a, b, budget: charge_built(fn(a, b), budget)

    def apply(a: Any, b: Any, budget: Budget) -> Any:
        if isinstance(a, _SET_LIKE) and isinstance(b, _SET_LIKE):
            budget.charge(len(a) + len(b), "a set operation")  # type: ignore[arg-type]
        return charge_built(fn(a, b), budget)

    return apply


def _is_cheap(value: Any) -> bool:
    """Compared with anything in O(1): a number, a boolean, None or a short string."""
    kind = type(value)
    return kind in CHEAP or (kind is str and len(value) < COPY_CHARS_PER_STEP)


def scan(container: Any, item: Any, budget: Budget, what: str) -> None:
    """Charge a scan of a list or tuple for `item` (`in`, `.index()`, `.count()`) before it runs.

    Each item is compared with `item`; a cheap item (see _is_cheap) costs O(1) per comparison,
    so the scan is charged its length (plus one); any other is charged the walk of the container
    (deep_size), which bounds every comparison with every item. For a literal display whose
    strings come to fewer than COPY_CHARS_PER_STEP characters, both are the same number
    (scan_cost), whatever the item: testing it is constant work (shapes.literal_display).
    """
    n = len(container)
    if n:
        if _is_cheap(item):
            budget.charge(n + 1, what)
        else:
            deep_size(container, budget)


def scan_cost(container: tuple[Any, ...] | list[Any]) -> int | None:
    """What scan() charges for a constant display whatever the item, or None if that depends on it."""
    if not container:
        return 0
    walk = Budget(max_steps=1 << 62, seconds=1e9)
    deep_size(container, walk)
    return walk.steps if walk.steps == len(container) + 1 else None


def contains(item: Any, container: Any, budget: Budget) -> bool:
    """`item in container`, charged before it runs: a list or tuple is scanned (see scan()), a
    string searched character by character, and a tuple hashed again on every lookup. The two
    common cases come first (`x in data.list`, `x in data.table`): a rule's `in` and `not in`
    are this one call."""
    kind = type(container)
    if kind is list or kind is tuple:
        n = len(container)
        if n:
            k = type(item)
            if k in CHEAP or (k is str and len(item) < COPY_CHARS_PER_STEP):
                steps = budget.steps + n + 1
                if steps < budget.next_read and steps <= budget.max_steps:
                    budget.steps = steps  # charge(n + 1), inline: no limit or clock read is reached
                else:
                    budget.charge(n + 1, "'in' over a list")
            else:
                deep_size(container, budget)
        return item in container
    if kind is dict:  # `x in data.table`: only a tuple key costs more than its hash
        if type(item) is tuple:
            deep_size(item, budget)
        return item in container
    if kind is str:
        if type(item) is not str:
            raise EvaluationError(f"'in <string>' needs a string on the left, not {type(item).__name__}")
        n = (len(container) + len(item)) // TEXT_CHARS_PER_STEP
        if n:
            budget.charge(n, "'in' over a string")
    elif kind is _VALUES_VIEW:
        scan(container, item, budget, "'in' over a list")
    elif type(item) is tuple:  # set, keys: a tuple's hash is computed again on every lookup
        deep_size(item, budget)
    return item in container


def not_contains(item: Any, container: Any, budget: Budget) -> bool:
    """`item not in container`: contains(), negated."""
    return not contains(item, container, budget)


_VALUES_VIEW: type = type({}.values())


def _compare(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Budget], Any]:
    def compare(a: Any, b: Any, budget: Budget) -> Any:
        charge_compare(a, b, budget)
        return fn(a, b)

    return compare


def eq(a: Any, b: Any, budget: Budget) -> Any:
    """`a == b`: charge_compare then the comparison, two strings (the common case) in one call."""
    if type(a) is str and type(b) is str:
        n = min(len(a), len(b)) // COPY_CHARS_PER_STEP
        if n:
            budget.charge(n, "comparing strings")
        return a == b
    charge_compare(a, b, budget)
    return a == b


def ne(a: Any, b: Any, budget: Budget) -> Any:
    """`a != b`, as eq()."""
    if type(a) is str and type(b) is str:
        n = min(len(a), len(b)) // COPY_CHARS_PER_STEP
        if n:
            budget.charge(n, "comparing strings")
        return a != b
    charge_compare(a, b, budget)
    return a != b


# AST operator → the function that applies it: the only operators a rule can use. Binary
# operators and comparisons take the budget last: they charge what their operands cost.
def _add(a: Any, b: Any, budget: Budget) -> Any:
    """`a + b` as rules apply it (safe_add, then the result charged as built), with two strings
    and two integers, the common cases, in one call."""
    ka = type(a)
    if ka is str and type(b) is str:
        n = len(a) + len(b)
        if n > MAX_STRING_LENGTH:
            raise LimitError(f"string of {n} characters exceeds {MAX_STRING_LENGTH}")
        if n >= COPY_CHARS_PER_STEP:
            result = a + b
            budget.charge(n // COPY_CHARS_PER_STEP, "building a string")
            return result
        return a + b
    if ka is int and type(b) is int:
        return a + b
    return charge_built(safe_add(a, b), budget)


BINARY_OPERATORS: dict[type[ast.operator], Callable[[Any, Any, Budget], Any]] = {
    ast.Add: _add,
    ast.Sub: _charged_operator(operator.sub, True),
    ast.Mult: _charged_operator(safe_mul, False),
    ast.Div: _charged_operator(operator.truediv, False),
    ast.FloorDiv: _charged_operator(operator.floordiv, False),
    ast.Mod: _charged_operator(safe_mod, False),
    ast.Pow: _charged_operator(safe_pow, False),
    ast.LShift: _charged_operator(safe_lshift, False),
    ast.RShift: _charged_operator(operator.rshift, False),
    ast.BitAnd: _charged_operator(operator.and_, True),
    ast.BitOr: _charged_operator(operator.or_, True),
    ast.BitXor: _charged_operator(operator.xor, True),
}
UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}
COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any, Budget], Any]] = {
    ast.Eq: eq,
    ast.NotEq: ne,
    ast.Lt: _compare(operator.lt),
    ast.LtE: _compare(operator.le),
    ast.Gt: _compare(operator.gt),
    ast.GtE: _compare(operator.ge),
    ast.In: contains,
    ast.NotIn: not_contains,
    ast.Is: lambda a, b, budget: a is b,
    ast.IsNot: lambda a, b, budget: a is not b,
}
