"""The methods a rule can call (one allowlist per receiver type), attribute and index lookup, and
slices: each charged before it runs, and refused when its result would pass a limit."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

from policyd.errors import EvaluationError, LimitError
from policyd.rules.sandbox.budget import (
    CHEAP,
    COPY_CHARS_PER_STEP,
    MAX_COLLECTION_LENGTH,
    MAX_STRING_LENGTH,
    STRIP_CHARS_PER_STEP,
    TEXT_CHARS_PER_STEP,
    Budget,
    check_length,
    deep_size,
    length_of,
)
from policyd.rules.sandbox.operators import scan
from policyd.rules.sandbox.values import describe, error_text, shown
from policyd.rules.schema import Record, ZeroMap

_STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
        "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
        "isupper", "join", "lower", "lstrip", "partition", "removeprefix", "removesuffix",
        "replace", "rfind", "rindex", "rpartition", "rsplit", "rstrip", "split", "splitlines",
        "startswith", "strip", "swapcase", "title", "upper",
    }
)  # fmt: skip
_DICT_METHODS = frozenset({"get", "keys", "values", "items"})
_SEQ_METHODS = frozenset({"index", "count"})
_SET_METHODS = frozenset(
    {
        "union",
        "intersection",
        "difference",
        "symmetric_difference",
        "issubset",
        "issuperset",
        "isdisjoint",
    }
)

# receiver type → methods a rule may call on it. None of them mutates the receiver.
METHODS: dict[type, frozenset[str]] = {
    str: _STR_METHODS,
    dict: _DICT_METHODS,
    ZeroMap: _DICT_METHODS,
    Record: _DICT_METHODS,  # content.get("future_field", ""), user.keys()
    list: _SEQ_METHODS,
    tuple: _SEQ_METHODS,
    set: _SET_METHODS,
    frozenset: _SET_METHODS,
}
ALL_METHOD_NAMES = frozenset().union(*METHODS.values())


def lookup(container: Any, key: Any, dotted: bool, budget: Budget | None = None) -> Any:
    """`x.key` / `x[key]` for rules: mappings by key, sequences by index; nothing else.

    Both evaluators use it, so a rule reaches Python objects only through this one door. A tuple
    key is hashed again on every lookup: with a budget, that walk is charged.
    """
    if isinstance(container, dict):
        if budget is not None and type(key) is tuple:
            deep_size(key, budget)
        try:
            return container[key]
        except KeyError:
            raise EvaluationError(f"no key {shown(key)} in this object") from None
        except TypeError:
            raise EvaluationError(f"{describe(key)} cannot be a key") from None
    if dotted:
        raise EvaluationError(f"'.{key}' is not available on a {describe(container)}")
    if isinstance(container, (list, tuple, str)):
        try:
            return container[key]
        except IndexError:
            raise EvaluationError(f"index {shown(key)} out of range (length {len(container)})") from None
        except TypeError:
            raise EvaluationError(f"cannot index a {describe(container)} with {describe(key)}") from None
    raise EvaluationError(f"cannot index a {describe(container)}")


def take_slice(container: Any, key: slice, budget: Budget) -> Any:
    """`x[a:b:c]` for rules: charged for what it copies before it copies it."""
    if isinstance(container, (list, tuple, str)):
        try:
            n = len(range(*key.indices(len(container))))
        except (TypeError, ValueError):
            n = 0  # lookup() gives the error
        if isinstance(container, str):
            n //= COPY_CHARS_PER_STEP if key.step in (None, 1) else STRIDE_CHARS_PER_STEP
        if n:
            budget.charge(n, "a slice")
    return lookup(container, key, False)


STRIDE_CHARS_PER_STEP = 16  # characters a strided slice (s[::-1]) gathers per step

_PREFIX_METHODS = frozenset({"startswith", "endswith", "removeprefix", "removesuffix"})
_STRIP_METHODS = frozenset({"strip", "lstrip", "rstrip"})
_METHOD_WHAT = {name: f".{name}()" for name in ALL_METHOD_NAMES}


def _prefix_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, tuple | list):
        return sum(len(v) if isinstance(v, str) else 1 for v in value)
    return 0


def charge_method(receiver: Any, name: str, args: tuple[Any, ...], budget: Budget) -> None:
    """Charge `receiver.name(*args)` before it runs, from its operands' sizes."""
    kind = type(receiver)
    n = 0
    if kind is str:
        if name in _PREFIX_METHODS:
            n = (_prefix_chars(args[0]) if args else 0) // COPY_CHARS_PER_STEP
            if name.startswith("remove"):
                n += len(receiver) // COPY_CHARS_PER_STEP
        elif name in _STRIP_METHODS and args and isinstance(args[0], str):
            n = len(receiver) * (1 + len(args[0]) // STRIP_CHARS_PER_STEP)
        elif name != "isascii" and name != "join":
            n = (len(receiver) + sum(len(a) for a in args if isinstance(a, str))) // TEXT_CHARS_PER_STEP
    elif kind is list or kind is tuple:
        if args:
            scan(receiver, args[0], budget, _METHOD_WHAT.get(name, ""))
    elif kind is set or kind is frozenset:
        n = len(receiver) + sum(length_of(a) for a in args)
    elif args and type(args[0]) is tuple:  # dict.get(): a tuple key is hashed again
        deep_size(args[0], budget)
    if n:
        budget.charge(n, _METHOD_WHAT.get(name, ""))


def call_method(receiver: Any, name: str, args: tuple[Any, ...], budget: Budget) -> Any:
    """`receiver.name(*args)` for rules: allowed by the receiver's exact type, sized before and after."""
    allowed = METHODS.get(type(receiver))
    if allowed is None or name not in allowed:
        raise EvaluationError(f"method '{name}' is not available on a {type(receiver).__name__}")
    charge_method(receiver, name, args, budget)
    precheck_method(receiver, name, args, budget)
    try:
        result = getattr(receiver, name)(*args)
    except (TypeError, ValueError, OverflowError) as e:
        if name == "index" and isinstance(e, ValueError) and args:
            raise EvaluationError(f".index(): {shown(args[0])} is not in the {describe(receiver)}") from None
        raise EvaluationError(f".{name}(): {error_text(e)}") from None
    if isinstance(result, list):
        budget.charge(len(result))
    return check_length(result)


# String methods callable without an argument that call_method charges len(receiver) steps.
_STR_NO_ARGUMENT = frozenset(
    {
        "capitalize", "casefold", "isalnum", "isalpha", "isdecimal", "isdigit", "islower",
        "isnumeric", "isspace", "istitle", "isupper", "lower", "lstrip", "rsplit", "rstrip",
        "split", "splitlines", "strip", "swapcase", "title", "upper",
    }
)  # fmt: skip
# Receivers of get/keys/values/items (neither view class overrides them).
_MAPPINGS: frozenset[type] = frozenset((dict, ZeroMap, Record))


def method_caller(name: str, arity: int) -> Callable[..., Any] | None:
    """`receiver.name()` as `fn(receiver, budget)`, or `receiver.name(arg)` as `fn(receiver, arg,
    budget)`: call_method with the common receiver's case first (a string's prefix test, a
    mapping's get/keys/values/items, a string's own text work), charging and checking exactly as
    call_method does; any other receiver or argument goes to call_method. None: no fast case."""
    what = _METHOD_WHAT.get(name, "")
    if arity == 1 and name in ("startswith", "endswith"):
        prefix_test = getattr(str, name)

        def prefix(receiver: Any, arg: Any, budget: Budget) -> Any:
            if type(receiver) is str and type(arg) is str:
                n = len(arg) // COPY_CHARS_PER_STEP
                if n:
                    budget.charge(n, what)
                return prefix_test(receiver, arg)
            return call_method(receiver, name, (arg,), budget)

        return prefix
    if arity == 1 and name == "get":

        def get(receiver: Any, arg: Any, budget: Budget) -> Any:
            if type(receiver) in _MAPPINGS and type(arg) is str:
                result = dict.get(receiver, arg)
                kind = type(result)
                if kind in CHEAP:
                    return result
                if isinstance(result, list):
                    budget.charge(len(result))
                return check_length(result)
            return call_method(receiver, name, (arg,), budget)

        return get
    if arity == 0 and name in ("keys", "values", "items"):
        view_of = getattr(dict, name)

        def dict_view(receiver: Any, budget: Budget) -> Any:
            if type(receiver) in _MAPPINGS:
                return view_of(receiver)  # a view: nothing to charge or check
            return call_method(receiver, name, (), budget)

        return dict_view
    if arity == 0 and name in _STR_NO_ARGUMENT:
        text_work = getattr(str, name)

        def str_method(receiver: Any, budget: Budget) -> Any:
            if type(receiver) is str:
                n = len(receiver) // TEXT_CHARS_PER_STEP
                if n:
                    budget.charge(n, what)
                result = text_work(receiver)
                kind = type(result)
                if kind is bool:
                    return result
                if kind is list:
                    budget.charge(len(result))
                return check_length(result)
            return call_method(receiver, name, (), budget)

        return str_method
    return None


def precheck_method(receiver: Any, name: str, args: tuple[Any, ...], budget: Budget) -> None:
    """Refuse method calls whose result would exceed the size limits before doing the work."""
    if not isinstance(receiver, str):
        return
    if name == "join" and args:
        # Any iterable joins, a string or a dict too: ("a" * 100000).join("b" * 100000) is 10 GB.
        items = args[0]
        if isinstance(items, str):
            total = len(items)
        elif isinstance(items, Sized) and isinstance(items, Iterable):
            if len(items) > MAX_COLLECTION_LENGTH:
                raise LimitError(f"join of {len(items)} items exceeds {MAX_COLLECTION_LENGTH}")
            budget.charge(len(items), ".join()")
            total = sum(len(x) if isinstance(x, str) else 0 for x in items)
        else:
            return
        size = total + len(receiver) * len(items)
        if size > MAX_STRING_LENGTH:
            raise LimitError(f"join would build a string over {MAX_STRING_LENGTH} characters")
        if size >= COPY_CHARS_PER_STEP:
            budget.charge(size // COPY_CHARS_PER_STEP, ".join()")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        grow = len(args[1]) - len(args[0])
        if grow > 0:
            hits = receiver.count(args[0]) if args[0] else len(receiver) + 1
            if len(receiver) + hits * grow > MAX_STRING_LENGTH:
                raise LimitError(f"replace would build a string over {MAX_STRING_LENGTH} characters")
