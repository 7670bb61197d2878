"""The fast-path shapes both back ends share: decided once at load time, from the AST.

A field read from the raw request (`content.a.b`, `user.metas["k"]`), a key walk (`data.teams.red`),
a comparison with a constant (`x == "tcp"`, `x in ("tcp", "udp")`, `x in range(6000, 7000)`),
`x in range(a, b)` with computed bounds, and calls with checked and charged results. The
compiler's closures (policyd.rules.compiler) and the generated code (policyd.rules.codegen) both
build on these, so they cannot disagree on which shapes are specialised or on what they charge.

Each closure here has exactly the semantics (value, error class, steps charged) of the generic
closures for the same node; tests/rules/test_differential.py holds them to the reference.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policyd.errors import EvaluationError
from policyd.rules import functions, sandbox
from policyd.rules.context import Compiled, Ctx, Scope
from policyd.rules.sandbox import Budget
from policyd.rules.schema import SCALAR_ZERO, Field, Kind, ZeroMap, zero_value


def constant_key_path(node: ast.Attribute | ast.Subscript) -> tuple[str, tuple[str, ...]] | None:
    """`name.a.b["c"]` as ("name", ("a", "b", "c")); None unless a name is followed by
    attributes and string-literal keys only (both back ends read such paths in one step)."""
    keys: list[str] = []
    root: ast.AST = node
    while isinstance(root, ast.Attribute | ast.Subscript):
        if isinstance(root, ast.Attribute):
            keys.append(root.attr)
        elif isinstance(root.slice, ast.Constant) and type(root.slice.value) is str:
            keys.append(root.slice.value)
        else:
            return None
        root = root.value
    if not isinstance(root, ast.Name):
        return None
    return root.id, tuple(reversed(keys))


@dataclass(frozen=True, slots=True)
class FieldPath:
    """Where `content.a.b` / `user.metas["k"]` reads in the raw request (see field_path)."""

    path: tuple[str, ...]  # record fields followed from the root
    final: Field  # the field at the end of `path`
    last: str | None = None  # then "map" (a key of a metas-like map) or "extra" (a key outside the schema)
    final_key: str = ""  # that key


def field_path(schema: Field, keys: tuple[str, ...]) -> FieldPath | None:
    """The schema followed through records down to a field, a map key or an extra key."""
    steps: list[str] = []
    f = schema
    last: str | None = None
    for i, key in enumerate(keys):
        if f.kind is Kind.RECORD and key in f.fields:
            steps.append(key)
            f = f.fields[key]
            continue
        if i != len(keys) - 1:
            return None
        if f.kind is Kind.STR_MAP:
            last = "map"
        elif f.kind is Kind.RECORD:
            last = "extra"
        else:
            return None
        steps.append(key)
    if last:
        return FieldPath(tuple(steps[:-1]), f, last, steps[-1])
    return FieldPath(tuple(steps), f)


def field_reader(of_user: bool, schema: Field, keys: tuple[str, ...], generic: Compiled) -> Compiled | None:
    """`content.a.b` / `user.metas["k"]` read from the raw request instead of a built view.

    A view (schema.view) shows an absent or null field as its zero value, a map key that is not
    there as "", and a key outside the schema as the raw value or None. The reader follows the
    schema (field_path); where the raw request holds something else than a dict on the way,
    `generic` decides.
    """
    where = field_path(schema, keys)
    if where is None:
        return None
    path, final, last, final_key = where.path, where.final, where.last, where.final_key
    view_key = (of_user, path)  # RequestNames.field_view: one view per field and request

    if last is None and len(path) == 1 and final.kind in SCALAR_ZERO:
        (key,) = path
        zero = SCALAR_ZERO[final.kind]
        if not of_user:

            def content_scalar(ctx: Ctx) -> Any:
                raw = ctx.raw
                if raw is None:
                    return generic(ctx)
                value = raw.content_raw.get(key)
                return zero if value is None else value

            return content_scalar

        def user_scalar(ctx: Ctx) -> Any:
            raw = ctx.raw
            if raw is None:
                return generic(ctx)
            record = raw.user_raw
            value = None if record is None else record.get(key)
            return zero if value is None else value

        return user_scalar

    def read(ctx: Ctx) -> Any:
        raw = ctx.raw
        if raw is None:
            return generic(ctx)
        node: Any = raw.user_raw if of_user else raw.content_raw
        for key in path:
            if node is None:
                break
            if not isinstance(node, dict):
                return generic(ctx)
            node = node.get(key)
        if last is None:
            if node is None:
                if final.kind is Kind.STR_LIST:
                    return []
                return ZeroMap() if final.kind is Kind.STR_MAP else zero_value(final)
            if final.kind in SCALAR_ZERO or final.kind is Kind.STR_LIST:
                return node
            return generic(ctx) if not isinstance(node, dict) else raw.field_view(view_key, final, node)
        if node is None:
            return "" if last == "map" else None
        if not isinstance(node, dict):
            return generic(ctx)
        return node.get(final_key, "" if last == "map" else None)

    return read


def key_walk(name: str, keys: tuple[str, ...], generic: Compiled) -> Compiled:
    """`data.teams.red` / `t["ports"]`: keys of nested mappings in one closure."""

    def walk(ctx: Ctx) -> Any:
        node = ctx.names[name]
        for key in keys:
            if not isinstance(node, dict) or (key not in node and type(node) is dict):
                return generic(ctx)  # not a mapping, or a missing key: the generic error
            node = node[key]
        return node

    if len(keys) == 1:
        (key,) = keys

        def walk1(ctx: Ctx) -> Any:
            node = ctx.names[name]
            if type(node) is dict and key in node:
                return node[key]
            return generic(ctx)

        return walk1
    return walk


def literal_scalar(node: ast.AST) -> tuple[bool, Any]:
    """(True, value) for a literal scalar, including a negative number; else (False, None)."""
    if isinstance(node, ast.Constant) and type(node.value) in sandbox.SCALARS:
        return True, node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        number: float = node.operand.value  # type: ignore[assignment]
        return True, -number
    return False, None


@dataclass(frozen=True, slots=True)
class ConstantOperand:
    """The right side of `x OP constant`, decided and built once at load time.

    Both back ends read it (the closures here and policyd.rules.codegen), so they cannot disagree on
    which comparisons are specialised or on what they charge.
    """

    op: type[ast.cmpop]
    value: Any  # the scalar; the display's tuple or list (see literal_display); or the SafeRange
    cost: int = 0  # steps a range is charged as built, after x is evaluated
    bounds: tuple[int, int] | None = None  # a step-1 range: an int x is tested by its bounds


def literal_display(node: ast.expr) -> tuple[Any, ...] | list[Any] | None:
    """The tuple or list of `x in ("tcp", "udp")`: a display of literal scalars whose strings
    come to fewer than 64 characters together (its scan costs the same whatever x is:
    sandbox.scan_cost). Testing it is constant work of the rule's own text, one comparison an
    item as `x == "tcp"` is (each item is an AST node: MAX_EXPR_NODES bounds them), so it is
    built once at load time and charges nothing. The reference evaluator reads this too."""
    if not isinstance(node, ast.Tuple | ast.List):
        return None
    items = [literal_scalar(e) for e in node.elts]
    if not all(ok for ok, _ in items):
        return None
    values = [v for _, v in items]
    container = tuple(values) if isinstance(node, ast.Tuple) else values
    if sandbox.scan_cost(container) is None:
        return None  # 64 characters of strings or more: the scan is charged (sandbox.contains)
    return container


def constant_operand(op: ast.cmpop, right_node: ast.expr, scope: Scope) -> ConstantOperand | None:
    """`x == "tcp"`, `x < 1024`, `x in ("tcp", "udp")`, `x in range(6000, 7000)`: the constant.

    A set display is left to the generic comparison (hashing a tuple x is charged by its size),
    and so are long strings, whose comparisons are charged by their length."""
    is_constant, c = literal_scalar(right_node)
    if is_constant:
        if isinstance(c, str) and len(c) >= sandbox.COPY_CHARS_PER_STEP:
            return None  # charged by its length (sandbox.charge_compare): the generic comparison
        if isinstance(op, ast.Eq | ast.NotEq | ast.Lt | ast.LtE | ast.Gt | ast.GtE):
            return ConstantOperand(type(op), c)
        return None
    if not isinstance(op, ast.In | ast.NotIn):
        return None
    if isinstance(right_node, ast.Tuple | ast.List):
        container = literal_display(right_node)
        return None if container is None else ConstantOperand(type(op), container)
    args = _constant_range_args(right_node, scope)
    if args is None:
        return None
    try:
        rng = sandbox.SafeRange(*args)
    except EvaluationError:
        return None
    r = range(*args)
    bounds = (r.start, r.stop) if r.step == 1 else None
    return ConstantOperand(type(op), rng, built_cost(rng), bounds)


def _is_range_call(node: ast.expr, scope: Scope) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and "range" not in scope.locals
        and not node.keywords
        and 1 <= len(node.args) <= 3
    )


def is_dynamic_range(op: ast.cmpop, right_node: ast.expr, scope: Scope) -> bool:
    """Whether `x OP right` is `x in range(...)` with computed bounds (see range_member)."""
    return (
        isinstance(op, ast.In | ast.NotIn)
        and _is_range_call(right_node, scope)
        and _constant_range_args(right_node, scope) is None
    )


def _constant_range_args(node: ast.expr, scope: Scope) -> list[int] | None:
    """The arguments of `range(...)` when all are integer literals."""
    if not _is_range_call(node, scope):
        return None
    assert isinstance(node, ast.Call)
    args = [literal_scalar(a) for a in node.args]
    if not all(ok and type(v) is int for ok, v in args):
        return None
    return [v for _, v in args]


def compare_constant(
    op: ast.cmpop,
    left: Compiled,
    right_node: ast.expr,
    scope: Scope,
    compile_arg: Callable[[ast.expr], Compiled] | None = None,
) -> Compiled | None:
    """A comparison with a constant (see constant_operand) as one closure, the constant built
    once at load time: a range charged as the generic closures charge it, a scalar or a literal
    display (literal_display) charged nothing."""
    operand = constant_operand(op, right_node, scope)
    if operand is None:
        if compile_arg is not None and is_dynamic_range(op, right_node, scope):
            assert isinstance(right_node, ast.Call)
            return _in_dynamic_range(left, right_node, isinstance(op, ast.NotIn), compile_arg)
        return None
    c = operand.value
    kind = operand.op
    if kind is ast.Eq:
        return lambda ctx: left(ctx) == c
    if kind is ast.NotEq:
        return lambda ctx: left(ctx) != c
    if kind is ast.Lt:
        return lambda ctx: left(ctx) < c
    if kind is ast.LtE:
        return lambda ctx: left(ctx) <= c
    if kind is ast.Gt:
        return lambda ctx: left(ctx) > c
    if kind is ast.GtE:
        return lambda ctx: left(ctx) >= c
    negate = kind is ast.NotIn
    cost = operand.cost
    if not isinstance(c, sandbox.SafeRange):  # a literal display: constant work, no charge
        container = c
        if negate:
            return lambda ctx: left(ctx) not in container
        return lambda ctx: left(ctx) in container
    rng = c
    lo, hi = operand.bounds if operand.bounds is not None else (0, 0)
    step1 = operand.bounds is not None

    # range() returns a SafeRange, charged as built after `left` is evaluated; for an int,
    # membership of a step-1 range is a bounds check.
    def in_range(ctx: Ctx) -> bool:
        value = left(ctx)
        ctx.budget.add(cost)
        if type(value) is int and step1:
            return (lo <= value < hi) is not negate
        return (value in rng) is not negate

    return in_range


def invoker(name: str, fn: Callable[..., Any], iterable_first: bool) -> Callable[..., Any]:
    """`invoke(budget, *values)`: a function called with evaluated positional arguments, its
    input checked and its result checked and charged (both back ends call it)."""

    cost = functions.CHARGES.get(fn)

    def invoke(budget: Budget, *values: Any) -> Any:
        if iterable_first and len(values) == 1:
            sandbox.sized_iterable(values[0], budget)
        if cost is not None:
            result = functions.call(name, fn, values, budget)
        else:
            try:
                result = fn(*values)
            except (TypeError, ValueError, OverflowError) as e:
                raise EvaluationError(f"{name}(): {sandbox.error_text(e)}") from None
        if type(result) in _NUMBERS:  # nothing to check or charge
            return result
        return sandbox.charge_built(sandbox.check_length(result), budget)

    return invoke


def call_invoker(
    name: str, fn: Callable[..., Any], iterable_first: bool, arg_nodes: list[ast.expr]
) -> Callable[..., Any]:
    """invoker(), or for `regex("literal", x)` and `glob("literal", x)` the pattern's own
    matcher (functions.literal_pattern_matcher): same arguments, charges and result."""
    if name in ("regex", "glob") and len(arg_nodes) == 2:
        first = arg_nodes[0]
        if isinstance(first, ast.Constant) and type(first.value) is str:
            matcher = functions.literal_pattern_matcher(name, first.value)
            if matcher is not None:
                return matcher
    return invoker(name, fn, iterable_first)


def positional_call(
    name: str,
    fn: Callable[..., Any],
    iterable_first: bool,
    args: list[Compiled],
    arg_nodes: list[ast.expr] | None = None,
) -> Compiled:
    """A function call without keyword arguments (the generic call, minus the keyword handling)."""
    invoke = call_invoker(name, fn, iterable_first, arg_nodes or [])
    if len(args) == 1:
        (arg,) = args
        return lambda ctx: invoke(ctx.budget, arg(ctx))
    return lambda ctx: invoke(ctx.budget, *[a(ctx) for a in args])


# Results that check_length and charge_built leave alone (neither strings nor containers).
_NUMBERS = frozenset({bool, int, float, type(None)})


def compare(op: ast.cmpop, left: Compiled, right: Compiled) -> Compiled | None:
    """One comparison, both sides evaluated left to right, without the operator table's call."""
    eq, ne, contains = sandbox.eq, sandbox.ne, sandbox.contains
    if isinstance(op, ast.Eq):
        return lambda ctx: eq(left(ctx), right(ctx), ctx.budget)
    if isinstance(op, ast.NotEq):
        return lambda ctx: ne(left(ctx), right(ctx), ctx.budget)
    if isinstance(op, ast.In):

        def in_(ctx: Ctx) -> bool:
            item = left(ctx)
            return contains(item, right(ctx), ctx.budget)

        return in_
    if isinstance(op, ast.NotIn):

        def not_in(ctx: Ctx) -> bool:
            item = left(ctx)
            return not contains(item, right(ctx), ctx.budget)

        return not_in
    return None


def built_cost(value: Any) -> int:
    """The steps sandbox.charge_built() charges for `value`, a constant built once at load time."""
    scratch = Budget(max_steps=1 << 62, seconds=1e9)
    sandbox.charge_built(value, scratch)
    return scratch.steps


def range_member(negate: bool) -> Callable[..., bool]:
    """`member(budget, x, *bounds)`: `x in range(*bounds)` with computed bounds, x evaluated first.

    As the generic call: range() refuses non-integers, the range is charged as built (what does
    not depend on its bounds), and membership is SafeRange's; no SafeRange is built for int
    bounds and an int x. Both back ends call it.
    """
    cost = built_cost(sandbox.SafeRange(0))

    def member(budget: Budget, value: Any, *bounds: Any) -> bool:
        if len(bounds) == 2 and type(bounds[0]) is int and type(bounds[1]) is int:
            budget.charge(cost)
            if type(value) is int:
                return (bounds[0] <= value < bounds[1]) is not negate
            rng = sandbox.SafeRange(*bounds)
        else:
            try:
                rng = sandbox.SafeRange(*bounds)
            except (TypeError, ValueError, OverflowError) as e:
                raise EvaluationError(f"range(): {e}") from None
            budget.charge(cost)
        return (value in rng) is not negate

    return member


def _in_dynamic_range(
    left: Compiled, call: ast.Call, negate: bool, compile_arg: Callable[[ast.expr], Compiled]
) -> Compiled:
    """`x in range(a, b)` with computed bounds (see range_member)."""
    args = [compile_arg(a) for a in call.args]
    member = range_member(negate)

    def in_range(ctx: Ctx) -> bool:
        value = left(ctx)
        return member(ctx.budget, value, *[a(ctx) for a in args])

    return in_range


def short_method_call(name: str, receiver: Compiled, arg: Compiled | None) -> Compiled:
    """A method call with at most one argument (the generic method call, minus the tuple; the
    common receivers' cases first, sandbox.method_caller)."""
    fast = sandbox.method_caller(name, 0 if arg is None else 1)
    if fast is not None:
        if arg is None:
            call0 = fast
            return lambda ctx: call0(receiver(ctx), ctx.budget)
        call1, argument = fast, arg

        def fast_call(ctx: Ctx) -> Any:
            obj = receiver(ctx)
            return call1(obj, argument(ctx), ctx.budget)

        return fast_call

    def method_call(ctx: Ctx) -> Any:
        obj = receiver(ctx)
        return sandbox.call_method(obj, name, () if arg is None else (arg(ctx),), ctx.budget)

    return method_call
