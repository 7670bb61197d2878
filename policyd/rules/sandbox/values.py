"""Values rules build and show: `range()`, text (str() of any value, charged), and values in
error messages (bounded, never an object's repr or a memory address); iterating a value, bounded."""

from __future__ import annotations

import re
from collections.abc import ItemsView, Iterable, Iterator, KeysView, ValuesView
from typing import Any

from policyd.errors import EvaluationError, LimitError
from policyd.rules.sandbox.budget import (
    BUILT,
    CHEAP,
    COPY_CHARS_PER_STEP,
    DICT_VIEWS,
    MAX_COLLECTION_LENGTH,
    MAX_INT_BITS,
    MAX_STRING_LENGTH,
    TEXT_CHARS_PER_STEP,
    Budget,
    check_length,
)


# -- values ---------------------------------------------------------------------------------
class SafeRange:
    """`range()` for rules: membership is O(1) whatever the operand; iteration is bounded."""

    __slots__ = ("_range",)

    def __init__(self, *args: Any) -> None:
        for a in args:
            if not isinstance(a, int) or isinstance(a, bool):
                raise EvaluationError(f"range() takes integers, not {type(a).__name__}")
        if len(args) == 3 and args[2] == 0:
            raise EvaluationError("range() step must not be zero")
        self._range = range(*args)

    def __contains__(self, item: object) -> bool:
        # Python's own range scans element by element for non-int operands (floats, strings).
        if isinstance(item, bool) or not isinstance(item, int):
            if isinstance(item, float) and item.is_integer():
                return int(item) in self._range
            return False
        return item in self._range

    def __len__(self) -> int:
        return len(self._range)

    def __iter__(self) -> Iterator[int]:
        if len(self._range) > MAX_COLLECTION_LENGTH:
            raise LimitError(f"iterating range of {len(self._range)} items exceeds {MAX_COLLECTION_LENGTH}")
        return iter(self._range)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SafeRange) and self._range == other._range

    def __hash__(self) -> int:
        return hash(self._range)

    def __repr__(self) -> str:
        return repr(self._range)


_SIZED = (*BUILT, SafeRange)


def _text_floor(value: Any, budget: Budget | None = None) -> int:
    """A lower bound on len(str(value)), found walking at most MAX_STRING_LENGTH nodes.

    str() of a container builds the whole text in C before its length can be checked, and a
    container holding the same long string (or list) many times prints it every time:
    `str(["a" * 100000] * 10000)` is a 1 GB string. Every node adds at least one character, so
    the walk stops early on exactly those values; with a budget, each container's items are
    charged before they are walked. Only data prints: a function's text would show frps's
    client a memory address.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool) or item is None or isinstance(item, float | SafeRange):
            total += 1
        elif isinstance(item, int):
            total += 1 + item.bit_length() // 4  # decimal digits >= bits * log10(2)
        elif isinstance(item, dict | list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
            children: tuple[Any, ...] = (
                (*item.keys(), *item.values()) if isinstance(item, dict) else tuple(item)
            )
            total += 2 + len(children)
            if total <= MAX_STRING_LENGTH:
                if budget is not None:
                    budget.charge(1 + len(children), "printing a value")
                total += _flat_text(children, stack)
        else:
            raise EvaluationError(f"{_kind(item)} cannot be turned into text")
        if total > MAX_STRING_LENGTH:
            raise LimitError(f"text of this value would exceed {MAX_STRING_LENGTH} characters")
    return total


def _flat_text(children: tuple[Any, ...], stack: list[Any]) -> int:
    """The text floor of a container's items when they are all strings or all integers, in C
    (~20 ns an item); otherwise they go on the stack and 0 is returned."""
    kinds = set(map(type, children))
    if kinds == {str}:
        return sum(map(len, children))
    if kinds == {int}:
        return len(children) + sum(map(int.bit_length, children)) // 4
    stack.extend(children)
    return 0


def to_text(value: Any, budget: Budget | None = None) -> str:
    """`str()` for rules and {templates}: bounded in size before any text is built, and with a
    budget charged for it (the walk, then each character printed as text work)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitError(f"integer exceeds {MAX_INT_BITS} bits")
    floor = _text_floor(value, budget)
    if budget is not None and floor >= TEXT_CHARS_PER_STEP:
        budget.charge(floor // TEXT_CHARS_PER_STEP, "printing a value")
    text = str(value)
    check_length(text)
    return text


def text_cost(budget: Budget, value: Any) -> None:
    """What `str(value)` is charged before it runs (to_text's walk and characters)."""
    if not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            return  # to_text refuses it
        floor = _text_floor(value, budget)
        if floor >= TEXT_CHARS_PER_STEP:
            budget.charge(floor // TEXT_CHARS_PER_STEP, "printing a value")


def join_texts(texts: Iterable[str], budget: Budget | None = None) -> str:
    """Concatenate the parts of a template or f-string, refusing it as soon as it is too long.

    Each part is bounded on its own, so joining first and checking after built up to
    (parts x MAX_STRING_LENGTH) characters: 2,600 "{s}" in one reason made 260 MB. With a
    budget, the joined text is charged as built.
    """
    out: list[str] = []
    total = 0
    for text in texts:
        total += len(text)
        if total > MAX_STRING_LENGTH:
            raise LimitError(f"text of more than {MAX_STRING_LENGTH} characters")
        out.append(text)
    if budget is not None and total >= COPY_CHARS_PER_STEP:
        budget.charge(total // COPY_CHARS_PER_STEP, "building a string")
    return "".join(out)


# -- values in messages ---------------------------------------------------------------------
MESSAGE_VALUE_CHARS = 60  # characters of a value an error message shows at most
_ADDRESS_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")


def _kind(value: Any) -> str:
    """'a function', 'a list', ...: what a value is, for messages (never its repr)."""
    name = describe(value) if type(value) in _DESCRIBED else type(value).__name__
    if callable(value):
        name = "function"
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def shown(value: Any) -> str:
    """A value as an error message shows it: data as a short literal (at most
    MESSAGE_VALUE_CHARS characters), anything else by its kind, never a Python repr (which
    for a function holds a memory address). The one place values are rendered into messages."""
    out: list[str] = []
    _show(value, out, 3)
    text = "".join(out)
    if len(text) > MESSAGE_VALUE_CHARS:
        text = text[: MESSAGE_VALUE_CHARS - 3] + "..."
    return text


def _show(value: Any, out: list[str], depth: int) -> None:
    # Stops once enough text is written: a value's size never matters here.
    if sum(map(len, out)) > MESSAGE_VALUE_CHARS:
        return
    kind = type(value)
    if kind is str:
        out.append(repr(value[: MESSAGE_VALUE_CHARS + 1]))
    elif kind in CHEAP:
        out.append(repr(value) if kind is not int or value.bit_length() < 200 else "a large integer")
    elif kind is SafeRange:
        out.append(repr(value))
    elif isinstance(value, dict | list | tuple | set | frozenset) and depth > 0:
        opening, closing = ("{", "}") if isinstance(value, dict | set | frozenset) else ("[", "]")
        if isinstance(value, tuple):
            opening, closing = "(", ")"
        out.append(opening)
        items = value.items() if isinstance(value, dict) else value
        for i, item in enumerate(items):
            if i:
                out.append(", ")
            if sum(map(len, out)) > MESSAGE_VALUE_CHARS:
                out.append("...")
                break
            if isinstance(value, dict):
                _show(item[0], out, depth - 1)
                out.append(": ")
                _show(item[1], out, depth - 1)
            else:
                _show(item, out, depth - 1)
        out.append(closing)
    else:
        out.append(_kind(value))


def error_text(error: BaseException) -> str:
    """A Python exception's text as a rule error message may carry it: object reprs (which name
    memory addresses) replaced by their kind, and cut to a bounded length."""
    text = _ADDRESS_REPR.sub("<an object>", str(error))
    return text if len(text) <= 300 else text[:297] + "..."


_DESCRIBED: dict[type, str] = {dict: "object", list: "list", tuple: "tuple", str: "string"}


def describe(value: Any) -> str:
    return _DESCRIBED.get(type(value), type(value).__name__)


def sized_iterable(value: Any, budget: Budget) -> Iterable[Any]:
    """What a rule may iterate: a bounded, sized collection; charges one step per item."""
    if isinstance(value, str):
        n = len(value)
    elif isinstance(value, _SIZED):
        n = len(value)
        if n > MAX_COLLECTION_LENGTH:
            raise LimitError(f"iterating {n} items exceeds {MAX_COLLECTION_LENGTH}")
    elif isinstance(value, DICT_VIEWS):
        n = len(value)  # type: ignore[arg-type]
    else:
        raise EvaluationError(f"cannot iterate over a value of type {type(value).__name__}")
    budget.charge(n)
    return value  # type: ignore[no-any-return]
