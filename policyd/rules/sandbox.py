"""The sandbox's limits and allowlists: every bound, operator, method and lookup a rule can reach.

Everything a rule can call is in `functions.FUNCTIONS` or `METHODS` below; anything else is
refused, at load time where the name alone says so, at evaluation time where the receiver's type
decides. Every function here is pure and bounded; none mutates its arguments, so shared `data`
and the request stay unchanged whatever a rule does. Limits are named constants with their units.
"""

from __future__ import annotations

import ast
import operator
import re
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
MAX_STEPS = 200_000  # per decision: units of work (see "What a step is" below)
MAX_OPERATION_STEPS = 250_000  # one operation: what may run between two reads of the clock
DEFAULT_EVAL_SECONDS = 0.1  # per decision: CPU time of the deciding thread (see Budget)
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

# -- what a step is -------------------------------------------------------------------------
# One step is about the cost of visiting one item in C (~16 ns here): an item a rule builds,
# iterates, scans (`in`, `.index()`), compares or walks; one loop iteration; COPY_CHARS_PER_STEP
# characters compared, copied or hashed; TEXT_CHARS_PER_STEP characters of text work (case
# mapping, searching, splitting, stripping, parsing, printing). An operation whose time grows with
# its operands is charged before it runs, from their sizes, and refused if that is more than is
# left, or more than MAX_OPERATION_STEPS: no single operation runs longer than that, whatever
# --max-steps allows in total.
COPY_CHARS_PER_STEP = 64  # memcmp/memcpy-like work: ==, <, startswith, slices, +, hashing
TEXT_CHARS_PER_STEP = 1  # per-character work: upper(), find(), split(), strip(), regex(), str()
STRIP_CHARS_PER_STEP = 64  # strip(chars) tests every character against every one of `chars`
CIDR_NETWORK_STEPS = 64  # one network tested by cidr(), parsed or cached (~1 µs at most)
PATTERN_COMPILE_STEPS = 32  # per pattern character: compiling a regex()/glob() pattern

# -- the clock ------------------------------------------------------------------------------
# The wall clock is cheap to read (~45 ns); the thread's CPU clock is a system call (~600 ns,
# over 1.5 µs on a busy host). A decision reads the wall clock every CLOCK_EVERY steps, before
# every operation charged that many steps or more, and between chunks of rules (engine.decide).
# It reads the CPU clock once it has run CPU_CLOCK_AFTER_S of wall time (a thread cannot have
# spent more CPU than that before) or charged CPU_CLOCK_AFTER_STEPS steps (before the operation
# that reaches them runs), and when the wall clock says the budget is spent: time spent
# waiting for the GIL (a reload parsing a big data file) or for a CPU is not the decision's own
# work and is not counted. Most decisions end well before CPU_CLOCK_AFTER_S and never read it.
CLOCK_EVERY = 256  # steps between two reads of the wall clock
CPU_CLOCK_AFTER_S = 0.0005  # wall seconds a decision runs before its CPU time is counted ...
CPU_CLOCK_AFTER_STEPS = 2_048  # ... or steps it has charged (an operation this big or bigger)
BACKSTOP_FACTOR = 10  # wall-clock backstop: this many budgets of wall time ...
MIN_BACKSTOP_SECONDS = 1.0  # ... and at least this long, whatever the CPU clock says

_wall = time.perf_counter  # one global lookup less: read every CLOCK_EVERY steps
_cpu = time.thread_time

SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
# Compared, hashed and tested for truth in O(1) (integers are bounded by MAX_INT_BITS or by the
# data loaders' 4,300 digits).
_CHEAP: frozenset[type] = frozenset({int, float, bool, type(None)})
# Tuples, not `list | tuple` unions: a union in isinstance() is built anew on every call (~8x slower).
_SEQUENCES = (list, tuple)
_COLLECTIONS = (list, tuple, set, frozenset)
_BUILT = (list, tuple, set, frozenset, dict)
_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))


class Budget:
    """Per-decision evaluation budget: steps counted, time measured on the deciding thread's CPU.

    `seconds` is CPU time of the thread that decides (time.thread_time), so a decision that waits
    for the GIL while a reload parses a big data file, or for a CPU on a busy host, is not charged
    for the wait; a wall-clock backstop (BACKSTOP_FACTOR budgets, at least MIN_BACKSTOP_SECONDS)
    still ends one that never gets to run. The CPU clock is read lazily (see the clock constants):
    a decision counts its CPU from the first clock read after CPU_CLOCK_AFTER_S of wall time or
    CPU_CLOCK_AFTER_STEPS steps, or from the moment the wall clock first passes the budget. What
    it did before is not counted: under CPU_CLOCK_AFTER_STEPS steps of work, and at most
    CPU_CLOCK_AFTER_S of CPU plus the constant work of the rules since the last clock read.

    One Budget per decision, never shared: compiled rules keep no per-call state of their own.
    """

    __slots__ = ("backstop", "cpu_due", "cpu_start", "deadline", "max_steps", "next_read", "seconds", "steps")

    def __init__(self, max_steps: int = MAX_STEPS, seconds: float = DEFAULT_EVAL_SECONDS) -> None:
        # Built for every decision: only what the first clock read needs (backstop: lazily).
        self.max_steps = max_steps
        self.steps = 0
        self.next_read = CLOCK_EVERY
        self.seconds = seconds
        now = _wall()
        self.deadline = now + seconds
        self.cpu_due = now + CPU_CLOCK_AFTER_S
        self.cpu_start = -1.0  # not read yet

    def charge(self, n: int = 1, what: str = "") -> None:
        """Charge n steps before doing their work; refuse it if that is more than is left."""
        steps = self.steps = self.steps + n
        if steps > self.max_steps or n > MAX_OPERATION_STEPS:
            self._too_many(n, what)
        if steps >= self.next_read:
            self.read_clock()

    def add(self, n: int) -> None:
        """Charge n steps without reading the clock: for work bounded by a rule's own text (a
        literal display or range, charged as built), which cannot run long between two reads.
        Most conditions test such a constant, so this keeps them cheap."""
        steps = self.steps = self.steps + n
        if steps > self.max_steps:
            self._too_many(n, "")

    def add2(self, first: int, then: int) -> None:
        """add(first) then add(then), in one call: a display charged as built, then scanned."""
        steps = self.steps = self.steps + first
        if steps > self.max_steps:
            self._too_many(first, "")
        steps = self.steps = steps + then
        if steps > self.max_steps:
            self._too_many(then, "")

    def _too_many(self, n: int, what: str) -> None:
        left = self.max_steps - self.steps + n
        if n > MAX_OPERATION_STEPS and self.steps <= self.max_steps:
            raise LimitError(
                f"{what or 'one operation'} would take {n:,} steps, more than one operation may "
                f"({MAX_OPERATION_STEPS:,})"
            )
        if what and n > 1:
            raise LimitError(
                f"{what} would take {n:,} steps, more than the {max(left, 0):,} left "
                f"of the {self.max_steps:,} a decision may use"
            )
        raise LimitError(f"evaluation took more than {self.max_steps} steps")

    def read_clock(self) -> None:
        """Read the wall clock; past the deadline, ask the CPU clock whether the budget is spent."""
        self.next_read = self.steps + CLOCK_EVERY
        now = _wall()
        if now > self.deadline:
            self._past_deadline(now)
        elif self.cpu_start < 0 and (self.steps >= CPU_CLOCK_AFTER_STEPS or now >= self.cpu_due):
            self.cpu_start = _cpu()  # before the operation charged: its work is counted

    def tick(self) -> None:
        """Between two chunks of rules: read the clock as read_clock does (16 rules at most go
        without a read: SECURITY.md's bound)."""
        now = _wall()
        if now > self.deadline:
            self._past_deadline(now)
        elif now >= self.cpu_due and self.cpu_start < 0:
            self.cpu_start = _cpu()

    def _past_deadline(self, now: float) -> None:
        backstop = getattr(self, "backstop", None)
        if backstop is None:  # the first time: the deadline is still the one set at the start
            started = self.deadline - self.seconds
            backstop = self.backstop = started + max(self.seconds * BACKSTOP_FACTOR, MIN_BACKSTOP_SECONDS)
        if now >= backstop:
            raise LimitError("evaluation ran out of time (wall-clock backstop)")
        cpu = _cpu()
        if self.cpu_start < 0:
            # The last clock read came before CPU_CLOCK_AFTER_S of wall time: little work was
            # done since, and the rest of the wall time was spent waiting. Count from here.
            self.cpu_start = cpu
            self.deadline = now + self.seconds
            return
        left = self.seconds - (cpu - self.cpu_start)
        if left <= self.seconds / 64:  # spent (to within 1.6%: no endless rereads)
            raise LimitError("evaluation ran out of time")
        # The thread cannot spend CPU faster than the wall clock runs: no earlier end is possible.
        self.deadline = now + left


def deep_size(value: Any, budget: Budget) -> int:
    """Count the items inside a container, charging each to the budget.

    Charging rule-built containers by their deep size keeps the work of later hashing,
    comparing or printing them linear in what the budget allowed, even when the same object
    is shared many times (`let b = (a, a)` doubling per line). Scalar items count too, strings
    for their characters as well (one step per COPY_CHARS_PER_STEP), and a container's items are
    charged before they are walked: a list holding one list of 10,000 numbers 8,192 times would
    otherwise walk 80 million items for 8,192 steps. The same walk bounds the work of comparing
    or hashing a value of any origin (data, the request), so it is also what those are charged.
    """
    stack = [value]
    count = 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            children: tuple[Any, ...] = (*item.keys(), *item.values())
        elif isinstance(item, _COLLECTIONS):
            children = tuple(item)
        elif isinstance(item, _DICT_VIEWS):
            children = tuple(item)  # type: ignore[arg-type]
        else:
            continue
        n = 1 + len(children)
        budget.charge(n, "walking a value")
        # The children's kinds in C (~15 ns an item): flat lists of scalars, the common case,
        # never enter the Python loop.
        kinds = set(map(type, children))
        if kinds <= SCALARS:
            chars = 0
            if str in kinds:
                chars = sum(map(len, children)) if len(kinds) == 1 else _chars(children)
        else:
            chars = 0
            for child in children:
                kind = type(child)
                if kind is str:
                    chars += len(child)
                elif kind not in SCALARS:
                    stack.append(child)
        count += n
        if chars >= COPY_CHARS_PER_STEP:
            count += chars // COPY_CHARS_PER_STEP
            budget.charge(chars // COPY_CHARS_PER_STEP, "walking a value")
    return count


def _chars(children: tuple[Any, ...]) -> int:
    return sum(len(c) for c in children if type(c) is str)


def charge_compare(a: Any, b: Any, budget: Budget) -> None:
    """Charge `a OP b` (==, <, ...) before it runs: a comparison stops where the smaller operand
    ends, so it is charged the walk of the one with fewer items."""
    ka, kb = type(a), type(b)
    if ka in _CHEAP or kb in _CHEAP:
        return
    if ka is str:
        if kb is str:
            n = min(len(a), len(b)) // COPY_CHARS_PER_STEP
            if n:
                budget.charge(n, "comparing strings")
        return
    if kb is str:
        return
    deep_size(a if _size(a) <= _size(b) else b, budget)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else 0


def charge_built(value: Any, budget: Budget) -> Any:
    """Charge a value a rule has just built for what it holds; numbers are free."""
    kind = type(value)
    if kind is str:
        n = len(value) // COPY_CHARS_PER_STEP
        if n:
            budget.charge(n, "building a string")
    elif kind not in SCALARS:
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
    elif isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES) and len(a) + len(b) > MAX_COLLECTION_LENGTH:
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
_SET_LIKE = (set, frozenset, dict, *_DICT_VIEWS)


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
    return kind in _CHEAP or (kind is str and len(value) < COPY_CHARS_PER_STEP)


def scan(container: Any, item: Any, budget: Budget, what: str) -> None:
    """Charge a scan of a list or tuple for `item` (`in`, `.index()`, `.count()`) before it runs.

    Each item is compared with `item`; a cheap item (see _is_cheap) costs O(1) per comparison,
    so the scan is charged its length (plus one); any other is charged the walk of the container
    (deep_size), which bounds every comparison with every item. For a display of short scalars
    (shapes.constant_operand) both are the same number, so that constant is charged at load time.
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


def contains(container: Any, item: Any, budget: Budget) -> bool:
    """`item in container`, charged before it runs: a list or tuple is scanned (see scan()), a
    string searched character by character, and a tuple hashed again on every lookup."""
    kind = type(container)
    if kind is list or kind is tuple:  # first: the common case, `user.user in data.admins`
        n = len(container)
        if n:
            k = type(item)
            if k in _CHEAP or (k is str and len(item) < COPY_CHARS_PER_STEP):
                budget.charge(n + 1, "'in' over a list")
            else:
                deep_size(container, budget)
        return item in container
    if kind is str:
        if type(item) is not str:
            raise EvaluationError(f"'in <string>' needs a string on the left, not {type(item).__name__}")
        n = (len(container) + len(item)) // TEXT_CHARS_PER_STEP
        if n:
            budget.charge(n, "'in' over a string")
    elif kind is _VALUES_VIEW:
        scan(container, item, budget, "'in' over a list")
    elif type(item) is tuple:  # dict, set, keys: a tuple's hash is computed again on every lookup
        deep_size(item, budget)
    return item in container


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


def _in(a: Any, b: Any, budget: Budget) -> bool:
    """`a in b`: contains(b, a) with its two common cases first, without the second call (a
    rule's `x in data.list` or `x in data.table` runs this once per request)."""
    kind = type(b)
    if kind is dict:
        if type(a) is tuple:
            deep_size(a, budget)
        return a in b
    if kind is list:
        n = len(b)
        if n:
            k = type(a)
            if k in _CHEAP or (k is str and len(a) < COPY_CHARS_PER_STEP):
                budget.charge(n + 1, "'in' over a list")
            else:
                deep_size(b, budget)
        return a in b
    return contains(b, a, budget)


def _not_in(a: Any, b: Any, budget: Budget) -> bool:
    """`a not in b`: _in's two common cases, copied (one call less per request)."""
    kind = type(b)
    if kind is dict:
        if type(a) is tuple:
            deep_size(a, budget)
        return a not in b
    if kind is list:
        n = len(b)
        if n:
            k = type(a)
            if k in _CHEAP or (k is str and len(a) < COPY_CHARS_PER_STEP):
                budget.charge(n + 1, "'in' over a list")
            else:
                deep_size(b, budget)
        return a not in b
    return not contains(b, a, budget)


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
    ast.In: _in,
    ast.NotIn: _not_in,
    ast.Is: lambda a, b, budget: a is b,
    ast.IsNot: lambda a, b, budget: a is not b,
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
    elif kind in _CHEAP:
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


_DESCRIBED: dict[type, str] = {dict: "object", list: "list", tuple: "tuple", str: "string"}


def describe(value: Any) -> str:
    return _DESCRIBED.get(type(value), type(value).__name__)


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
        n = len(receiver) + sum(_size(a) for a in args)
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
                if kind in _CHEAP:
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
