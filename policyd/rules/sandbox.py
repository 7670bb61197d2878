"""The sandbox's limits and allowlists: every bound, operator, method and lookup a rule can reach.

Everything a rule can call is in `functions.FUNCTIONS` or `METHODS` below; anything else is
refused, at load time where the name alone says so, at evaluation time where the receiver's type
decides. Every function here is pure and bounded; none mutates its arguments, so shared `data`
and the request stay unchanged whatever a rule does. Limits are named constants with their units.
"""

from __future__ import annotations

import ast
import itertools
import operator
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Sized, ValuesView
from typing import Any, TypeVar

from policyd.errors import EvaluationError, LimitError
from policyd.rules.schema import Record, ZeroMap

T = TypeVar("T")

# -- limits ---------------------------------------------------------------------------------
MAX_STRING_LENGTH = 100_000  # characters in any string a rule builds
MAX_COLLECTION_LENGTH = 10_000  # items in any list/set/dict/range a rule builds or iterates
MAX_INT_BITS = 4_096  # bits in any integer a rule computes (** * << results)
MAX_STEPS = 200_000  # per request: loop iterations + items built or walked
DEFAULT_EVAL_SECONDS = 0.1  # per request: wall-clock budget, checked every CLOCK_EVERY steps
CLOCK_EVERY = 1  # steps between clock checks: one step may be an `in` over a big data list
MAX_RULE_CHARS = 8_000  # characters in one (logical) rule line
MAX_FILE_RULES = 2_000  # rules (logical lines) in one rule file: bounds load time
MAX_EXPR_NODES = 500  # AST nodes in one expression
MAX_EXPR_DEPTH = 40  # nesting depth of one expression's AST
# AST nodes of all expressions of a policy's rule files together: the 10,000-rule benchmark
# policy (per-user rules of ~34 nodes) holds 340,000; a load of 400,000 takes seconds, not minutes.
MAX_POLICY_NODES = 400_000
MAX_REGEX_CHARS = 1_000  # characters in a regex() or glob() pattern
MAX_REGEX_MEMORY = 1 << 20  # bytes one compiled regex() pattern may use (RE2 program + DFA)
REGEX_CACHE_SIZE = 128  # compiled regex() patterns kept between requests
MAX_ROUND_DIGITS = 100  # |ndigits| of round(): round(n, -10**7) would compute 10**(10**7)

_clock = time.perf_counter  # one global lookup less: charge() runs for most steps

SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
# Tuples, not `list | tuple` unions: a union in isinstance() is built anew on every call (~8x slower).
_SEQUENCES = (list, tuple)
_COLLECTIONS = (list, tuple, set, frozenset)
_BUILT = (list, tuple, set, frozenset, dict)
_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))


class Budget:
    """Per-request evaluation budget: steps counted, wall clock checked every CLOCK_EVERY steps.

    One Budget per request, never shared: compiled rules keep no per-call state of their own.
    """

    __slots__ = ("deadline", "steps", "steps_left")

    def __init__(self, max_steps: int = MAX_STEPS, seconds: float = DEFAULT_EVAL_SECONDS) -> None:
        self.steps_left = max_steps
        self.steps = 0
        self.deadline = time.perf_counter() + seconds

    def charge(self, n: int = 1) -> None:
        before = self.steps
        steps = self.steps = before + n
        if steps > self.steps_left:
            raise LimitError(f"evaluation took more than {self.steps_left} steps")
        if (
            n if CLOCK_EVERY == 1 else before // CLOCK_EVERY != steps // CLOCK_EVERY
        ) and _clock() > self.deadline:
            raise LimitError("evaluation ran out of time")

    def add(self, n: int) -> None:
        """Charge n steps without reading the clock: for work bounded by a rule's own text (a
        literal display or range, charged as built), which cannot run long between two reads.
        Most conditions test such a constant, so this keeps them cheap (127 -> ~70 ns)."""
        steps = self.steps = self.steps + n
        if steps > self.steps_left:
            raise LimitError(f"evaluation took more than {self.steps_left} steps")


def deep_size(value: Any, budget: Budget) -> int:
    """Count the items inside a container, charging each to the budget.

    Charging rule-built containers by their deep size keeps the work of later hashing,
    comparing or printing them linear in what the budget allowed, even when the same object
    is shared many times (`let b = (a, a)` doubling per line). Scalar items count too, and a
    container's items are charged before they are walked: a list holding one list of 10,000
    numbers 8,192 times would otherwise walk 80 million items for 8,192 steps.
    """
    stack = [value]
    count = 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = itertools.chain(item.keys(), item.values())
            n = 2 * len(item)
        elif isinstance(item, _COLLECTIONS):
            children, n = item, len(item)
        else:
            continue
        count += 1 + n
        budget.charge(1 + n)
        stack.extend(c for c in children if type(c) not in SCALARS)
    return count


def charge_built(value: Any, budget: Budget) -> Any:
    """Charge a container a rule has just built for what it holds; scalars are free."""
    if type(value) not in SCALARS:
        deep_size(value, budget)
    return value


def check_length(value: T) -> T:
    """Refuse strings and collections a rule builds beyond the limits."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise LimitError(f"string of {len(value)} characters exceeds {MAX_STRING_LENGTH}")
    elif isinstance(value, _BUILT) and len(value) > MAX_COLLECTION_LENGTH:
        raise LimitError(f"collection of {len(value)} items exceeds {MAX_COLLECTION_LENGTH}")
    return value


def sized_iterable(value: Any, budget: Budget) -> Iterable[Any]:
    """What a rule may iterate: a bounded, sized collection; charges one step per item."""
    if isinstance(value, str):
        n = len(value)
    elif isinstance(value, _SIZED):
        n = len(value)
        if n > MAX_COLLECTION_LENGTH:
            raise LimitError(f"iterating {n} items exceeds {MAX_COLLECTION_LENGTH}")
    elif isinstance(value, _DICT_VIEWS):
        n = len(value)  # type: ignore[arg-type]
    else:
        raise EvaluationError(f"cannot iterate over a value of type {type(value).__name__}")
    budget.charge(n)
    return value  # type: ignore[no-any-return]


# -- safe operators -------------------------------------------------------------------------
def _int_bits(value: Any) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def safe_pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and _int_bits(a) * b > MAX_INT_BITS:
        raise LimitError(f"{a} ** {b} would exceed {MAX_INT_BITS} bits")
    if isinstance(b, int | float) and abs(b) > MAX_INT_BITS:
        raise LimitError(f"exponent {b} exceeds {MAX_INT_BITS}")
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
    elif isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES) and len(a) + len(b) > MAX_COLLECTION_LENGTH:
        raise LimitError(f"collection of {len(a) + len(b)} items exceeds {MAX_COLLECTION_LENGTH}")
    return a + b


def safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and _int_bits(a) + b > MAX_INT_BITS:
        raise LimitError(f"{a} << {b} would exceed {MAX_INT_BITS} bits")
    return a << b


def safe_mod(a: Any, b: Any) -> Any:
    # str % args is printf-style formatting, which has width/precision tricks ('%*s').
    if isinstance(a, str):
        raise EvaluationError("'%' formatting of strings is not available; use a {template}")
    return a % b


def safe_contains(container: Any, item: Any) -> bool:
    if isinstance(container, str) and not isinstance(item, str):
        raise EvaluationError(f"'in <string>' needs a string on the left, not {type(item).__name__}")
    return item in container


# AST operator → the function that applies it: the only operators a rule can use.
BINARY_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: safe_add,
    ast.Sub: operator.sub,
    ast.Mult: safe_mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: safe_mod,
    ast.Pow: safe_pow,
    ast.LShift: safe_lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}
COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: safe_contains(b, a),
    ast.NotIn: lambda a, b: not safe_contains(b, a),
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


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


_SIZED = (*_BUILT, SafeRange)


def _text_floor(value: Any) -> int:
    """A lower bound on len(str(value)), found walking at most MAX_STRING_LENGTH nodes.

    str() of a container builds the whole text in C before its length can be checked, and a
    container holding the same long string (or list) many times prints it every time:
    `str(["a" * 100000] * 10000)` is a 1 GB string. Every node adds at least one character, so
    the walk stops early on exactly those values. Only data prints: a function's text would
    show frps's client a memory address.
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
        elif isinstance(item, dict):
            total += 2 * len(item)
            if total <= MAX_STRING_LENGTH:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
            total += 2 + len(item)
            if total <= MAX_STRING_LENGTH:
                stack.extend(item)
        else:
            raise EvaluationError(f"a {type(item).__name__} cannot be turned into text")
        if total > MAX_STRING_LENGTH:
            raise LimitError(f"text of this value would exceed {MAX_STRING_LENGTH} characters")
    return total


def to_text(value: Any) -> str:
    """`str()` for rules and {templates}: bounded in size before any text is built."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise LimitError(f"integer exceeds {MAX_INT_BITS} bits")
    _text_floor(value)
    text = str(value)
    check_length(text)
    return text


def join_texts(texts: Iterable[str]) -> str:
    """Concatenate the parts of a template or f-string, refusing it as soon as it is too long.

    Each part is bounded on its own, so joining first and checking after built up to
    (parts x MAX_STRING_LENGTH) characters: 2,600 "{s}" in one reason made 260 MB.
    """
    out: list[str] = []
    total = 0
    for text in texts:
        total += len(text)
        if total > MAX_STRING_LENGTH:
            raise LimitError(f"text of more than {MAX_STRING_LENGTH} characters")
        out.append(text)
    return "".join(out)


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


def describe(value: Any) -> str:
    names: dict[type, str] = {dict: "object", list: "list", tuple: "tuple", str: "string"}
    return names.get(type(value), type(value).__name__)


def lookup(container: Any, key: Any, dotted: bool) -> Any:
    """`x.key` / `x[key]` for rules: mappings by key, sequences by index; nothing else.

    Both evaluators use it, so a rule reaches Python objects only through this one door.
    """
    if isinstance(container, dict):
        try:
            return container[key]
        except KeyError:
            raise EvaluationError(f"no key {key!r} in this object") from None
        except TypeError:
            raise EvaluationError(f"{describe(key)} cannot be a key") from None
    if dotted:
        raise EvaluationError(f"'.{key}' is not available on a {describe(container)}")
    if isinstance(container, (list, tuple, str)):
        try:
            return container[key]
        except IndexError:
            raise EvaluationError(f"index {key!r} out of range (length {len(container)})") from None
        except TypeError:
            raise EvaluationError(f"cannot index a {describe(container)} with {describe(key)}") from None
    raise EvaluationError(f"cannot index a {describe(container)}")


def call_method(receiver: Any, name: str, args: tuple[Any, ...], budget: Budget) -> Any:
    """`receiver.name(*args)` for rules: allowed by the receiver's exact type, sized before and after."""
    allowed = METHODS.get(type(receiver))
    if allowed is None or name not in allowed:
        raise EvaluationError(f"method '{name}' is not available on a {type(receiver).__name__}")
    precheck_method(receiver, name, args)
    try:
        result = getattr(receiver, name)(*args)
    except (TypeError, ValueError, OverflowError) as e:
        raise EvaluationError(f".{name}(): {e}") from None
    if isinstance(result, list):
        budget.charge(len(result))
    return check_length(result)


def precheck_method(receiver: Any, name: str, args: tuple[Any, ...]) -> None:
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
            total = sum(len(x) if isinstance(x, str) else 0 for x in items)
        else:
            return
        if total + len(receiver) * len(items) > MAX_STRING_LENGTH:
            raise LimitError(f"join would build a string over {MAX_STRING_LENGTH} characters")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        grow = len(args[1]) - len(args[0])
        if grow > 0:
            hits = receiver.count(args[0]) if args[0] else len(receiver) + 1
            if len(receiver) + hits * grow > MAX_STRING_LENGTH:
                raise LimitError(f"replace would build a string over {MAX_STRING_LENGTH} characters")
