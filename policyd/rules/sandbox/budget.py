"""The sandbox's limits, what a step is, and the budget that charges them: every bound a rule
meets is a named constant here, and every operation charges its operands' size before it runs."""

from __future__ import annotations

import time
from collections.abc import Sized
from typing import Any, TypeVar

from policyd.errors import LimitError

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
# every operation charged that many steps or more, and between chunks of rules (policyd.rules.program).
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
CHEAP: frozenset[type] = frozenset({int, float, bool, type(None)})
# Tuples, not `list | tuple` unions: a union in isinstance() is built anew on every call (~8x slower).
SEQUENCES = (list, tuple)
_COLLECTIONS = (list, tuple, set, frozenset)
BUILT = (list, tuple, set, frozenset, dict)
DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))


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
        elif isinstance(item, DICT_VIEWS):
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
    if ka in CHEAP or kb in CHEAP:
        return
    if ka is str:
        if kb is str:
            n = min(len(a), len(b)) // COPY_CHARS_PER_STEP
            if n:
                budget.charge(n, "comparing strings")
        return
    if kb is str:
        return
    deep_size(a if length_of(a) <= length_of(b) else b, budget)


def length_of(value: Any) -> int:
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
    elif isinstance(value, BUILT) and len(value) > MAX_COLLECTION_LENGTH:
        raise LimitError(f"collection of {len(value)} items exceeds {MAX_COLLECTION_LENGTH}")
    return value
