"""Turn a validated, compiled rule expression into Python source for the request path.

The closures of policyd.rules.compiler stay the definition of what a rule does; this module
writes the common shapes (field reads, comparisons with constants, and/or/not, calls) as one
Python expression instead of a tree of closure calls, and calls a node's own closure for
everything else (comprehensions, templates, unusual values). policyd.rules.program joins the
expressions of a rule file into a few functions, so a request runs one function per chunk of
rules, not one closure per node.

No rule text ever becomes source: every constant, key, closure and helper is a reference (`@N`,
an entry of `Fragment.refs`), and the source holds only names this module writes, Python
operators and keywords. It is emitted only after the compiler accepted the expression, from the
same decisions (policyd.rules.shapes: constant_operand, invoker, ...):
tests/rules/test_differential.py holds both back ends to the reference evaluator.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policyd.rules import functions, sandbox
from policyd.rules.compiler import ExpressionCompiler
from policyd.rules.context import BUILTIN_NAMES, CONSTANTS, Scope
from policyd.rules.schema import SCALAR_ZERO, Kind, Record, ZeroMap, zero_value
from policyd.rules.shapes import (
    call_invoker,
    constant_key_path,
    constant_operand,
    field_path,
    is_dynamic_range,
    range_member,
)

# The generated function's locals an expression may use (see policyd.rules.program).
CTX, NAMES, CONTENT, USER, BUDGET = "ctx", "names", "c", "u", "b"
# The only builtins generated code uses; policyd.rules.program binds them under these names.
BUILTINS: dict[str, Any] = {
    "_type": type,
    "_dict": dict,
    "_int": int,
    "_str": str,
    "_list": list,
    "_len": len,
}
MAX_INLINE_KEYS = 3  # `data.a.b.c`: keys of a let or `data` walked inline (more: the closure)

_COMPARE_SYMBOLS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_LITERALS = {True: "True", False: "False", None: "None"}
# Types sandbox.sized_iterable accepts: an empty one makes any()/all() of a comprehension a constant.
_ITERABLES = frozenset(
    {str, list, tuple, set, frozenset, dict, ZeroMap, Record, sandbox.SafeRange}
    | {type({}.keys()), type({}.values()), type({}.items())}
)


_MISS = object()  # a key walk that left the fast path (see _Emitter._read)


# A scalar field read straight from the request: (of the user?, the field's key, its zero value).
FieldRead = tuple[bool, str, Any]


@dataclass(frozen=True, slots=True)
class Fragment:
    """A Python expression; `@N` stands for refs[N], `_tN` are its walrus temporaries, and `$N`
    for the value of reads[N], which policyd.rules.program reads once before the expressions
    that use it (a read of a dict, with no charge and no error: where it runs changes nothing)."""

    source: str
    refs: tuple[Any, ...]
    reads: tuple[FieldRead, ...] = ()


def emit(tree: ast.expr, compiler: ExpressionCompiler) -> Fragment:
    """The source of an expression `compiler` has compiled with `record=True`."""
    assert compiler.closures is not None, "compile with record=True first"
    emitter = _Emitter(compiler.scope, compiler.closures, compiler.any_all, compiler.state_calls)
    return Fragment(emitter.expr(tree), tuple(emitter.refs), tuple(emitter.reads))


class _Emitter:
    def __init__(
        self,
        scope: Scope,
        closures: dict[int, Callable[..., Any]],
        any_all: dict[int, Callable[..., Any]],
        state_calls: dict[int, Callable[..., Any]],
    ) -> None:
        self.scope = scope
        self.closures = closures
        self.any_all = any_all
        self.state_calls = state_calls
        self.refs: list[Any] = []
        self.reads: list[FieldRead] = []
        self.temps = 0

    def ref(self, value: Any) -> str:
        self.refs.append(value)
        return f"@{len(self.refs) - 1}"

    def temp(self) -> str:
        self.temps += 1
        return f"_t{self.temps - 1}"

    def closure(self, node: ast.AST) -> str:
        """The node's own closure, called: the fallback for every shape not written inline."""
        return f"{self.ref(self.closures[id(node)])}({CTX})"

    def constant(self, value: Any) -> str:
        if value is None or type(value) is bool:
            return _LITERALS[value]
        return self.ref(value)

    def expr(self, node: ast.AST) -> str:
        method: Callable[[Any], str | None] | None = getattr(self, f"_{type(node).__name__}", None)
        source = method(node) if method is not None else None
        return source if source is not None else self.closure(node)

    # -- leaves and reads --------------------------------------------------------------------
    def _Constant(self, node: ast.Constant) -> str:
        return self.constant(node.value)

    def _Name(self, node: ast.Name) -> str | None:
        name = node.id
        if name in CONSTANTS:
            return _LITERALS[CONSTANTS[name]]
        if name in self.scope.locals:
            return None
        if name in self.scope.lets or name in BUILTIN_NAMES:
            return f"{NAMES}[{self.ref(name)}]"
        return None  # a function as a value

    def _Attribute(self, node: ast.Attribute) -> str | None:
        return self._read(node)

    def _Subscript(self, node: ast.Subscript) -> str | None:
        read = self._read(node)
        if read is not None:
            return read
        if isinstance(node.slice, ast.Slice) or (
            isinstance(node.slice, ast.Constant) and type(node.slice.value) is str
        ):
            return None  # a slice, or a key path the compiler reads from the raw request
        container, key = self.expr(node.value), self.expr(node.slice)
        lookup = self.ref(sandbox.lookup)
        t = self.temp()
        if isinstance(node.slice, ast.Constant) and type(node.slice.value) is int and node.slice.value >= 0:
            # `t.ports[0]`: an index into a list, in range (anything else: lookup's answer)
            k = self.ref(node.slice.value)
            return (
                f"({t}[{k}] if _type({t} := {container}) is _list and {k} < _len({t})"
                f" else {lookup}({t}, {k}, False, {BUDGET}))"
            )
        # `data.teams[team]`: a string key of a dict, present (lookup charges only tuple keys)
        k = self.temp()
        return (
            f"(({t} := {container}), ({k} := {key}), {t}[{k}] if _type({t}) is _dict and _type({k}) is _str"
            f" and {k} in {t} else {lookup}({t}, {k}, False, {BUDGET}))[2]"
        )

    def _field(self, node: ast.Attribute | ast.Subscript, of_user: bool, keys: tuple[str, ...]) -> str | None:
        """`content.field`, `content.metas.key`, `user.metas["key"]`: shapes.field_reader's
        reads at most one record field deep, written inline."""
        where = field_path(self.scope.user_schema if of_user else self.scope.op_schema, keys)
        if where is None or len(where.path) > 1:
            return None
        final = where.final
        if len(where.path) == 1 and where.last is None and final.kind in SCALAR_ZERO:
            # `content.remote_port`, `user.user`: the same object whichever rule reads it first
            self.reads.append((of_user, where.path[0], SCALAR_ZERO[final.kind]))
            return f"${len(self.reads) - 1}"
        t = self.temp()
        node_source = USER if of_user else CONTENT
        if where.path:
            k = self.ref(where.path[0])
            node_source = (
                f"(None if {USER} is None else {USER}.get({k}))" if of_user else f"{CONTENT}.get({k})"
            )
        read = f"({t} := {node_source})"
        if where.last is not None:
            default = self.constant("" if where.last == "map" else None)
            key = self.ref(where.final_key)
            return (
                f"({default} if {read} is None else {t}.get({key}, {default})"
                f" if _type({t}) is _dict else {self.closure(node)})"
            )
        if final.kind in SCALAR_ZERO:
            return f"({self.constant(SCALAR_ZERO[final.kind])} if {read} is None else {t})"
        if final.kind is Kind.STR_LIST:
            return f"([] if {read} is None else {t})"
        zero = (
            f"{self.ref(ZeroMap)}()"
            if final.kind is Kind.STR_MAP
            else f"{self.ref(zero_value)}({self.ref(final)})"
        )
        viewed = f"{NAMES}.field_view({self.ref((of_user, where.path))}, {self.ref(final)}, {t})"
        return f"({zero} if {read} is None else {viewed} if _type({t}) is _dict else {self.closure(node)})"

    def _read(self, node: ast.Attribute | ast.Subscript) -> str | None:
        """Reads the compiler makes one closure of, inline where the shape is common: fields of
        the request (see _field; shapes.field_reader) and `name.key` of a let or `data`
        (shapes.key_walk).

        Anything unusual at run time (not a dict, a missing key) calls the node's closure.
        """
        found = constant_key_path(node)
        if found is None or found[0] in self.scope.locals:
            return None
        name, keys = found
        if name in ("content", "user") and name not in self.scope.lets:
            return self._field(node, name == "user", keys)
        if len(keys) > MAX_INLINE_KEYS or not (name in self.scope.lets or name in BUILTIN_NAMES):
            return None
        # shapes.key_walk, inline: each step a dict holding the key; else `_MISS` goes on to the
        # end, where the closure decides (the generic error, or a view's own lookup)
        source = f"{NAMES}[{self.ref(name)}]"
        if len(keys) == 1:
            t, k = self.temp(), self.ref(keys[0])
            return f"({t}[{k}] if _type({t} := {source}) is _dict and {k} in {t} else {self.closure(node)})"
        miss = self.ref(_MISS)
        for key in keys:
            t, k = self.temp(), self.ref(key)
            source = f"({t}[{k}] if _type({t} := {source}) is _dict and {k} in {t} else {miss})"
        t = self.temp()
        return f"({t} if ({t} := {source}) is not {miss} else {self.closure(node)})"

    # -- operators ---------------------------------------------------------------------------
    def _BoolOp(self, node: ast.BoolOp) -> str:
        word = " and " if isinstance(node.op, ast.And) else " or "
        return "(" + word.join(self.expr(v) for v in node.values) + ")"

    def _UnaryOp(self, node: ast.UnaryOp) -> str:
        if isinstance(node.op, ast.Not):
            return f"(not {self.expr(node.operand)})"
        return f"{self.ref(sandbox.UNARY_OPERATORS[type(node.op)])}({self.expr(node.operand)})"

    def _BinOp(self, node: ast.BinOp) -> str:
        fn = self.ref(sandbox.BINARY_OPERATORS[type(node.op)])
        return f"{fn}({self.expr(node.left)}, {self.expr(node.right)}, {BUDGET})"

    def _IfExp(self, node: ast.IfExp) -> str:
        return f"({self.expr(node.body)} if {self.expr(node.test)} else {self.expr(node.orelse)})"

    def _Compare(self, node: ast.Compare) -> str | None:
        if len(node.ops) != 1:
            return None
        op, right = node.ops[0], node.comparators[0]
        operand = constant_operand(op, right, self.scope)
        left = self.expr(node.left)
        if operand is None:
            if is_dynamic_range(op, right, self.scope):
                assert isinstance(right, ast.Call)
                member = self.ref(range_member(isinstance(op, ast.NotIn)))
                bounds = "".join(f", {self.expr(a)}" for a in right.args)
                return f"{member}({BUDGET}, {left}{bounds})"
            if isinstance(op, ast.NotIn):  # `not contains(...)`: one call, as `in` is
                return f"(not {self.ref(sandbox.contains)}({left}, {self.expr(right)}, {BUDGET}))"
            return f"{self.ref(sandbox.COMPARISONS[type(op)])}({left}, {self.expr(right)}, {BUDGET})"
        symbol = _COMPARE_SYMBOLS.get(operand.op)
        if symbol is not None:
            return f"({left} {symbol} {self.ref(operand.value)})"
        word = "not in" if operand.op is ast.NotIn else "in"
        if not isinstance(operand.value, sandbox.SafeRange):  # a literal display: no charge
            return f"({left} {word} {self.ref(operand.value)})"
        # A range: `left` first, then the charge for building it, then the test.
        t, cost = self.temp(), self.ref(operand.cost)
        charge = f"{BUDGET}.add({cost})"
        if operand.bounds is None:
            test = f"{t} {word} {self.ref(operand.value)}"
        else:
            lo, hi, rng = self.ref(operand.bounds[0]), self.ref(operand.bounds[1]), self.ref(operand.value)
            test = f"(({lo} <= {t} < {hi}) if _type({t}) is _int else ({t} in {rng}))"
            if operand.op is ast.NotIn:
                test = f"not {test}"
        return f"(({t} := {left}), {charge}, {test})[2]"

    # -- calls and displays ------------------------------------------------------------------
    def _Call(self, node: ast.Call) -> str | None:
        func = node.func
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            return None
        if isinstance(func, ast.Attribute):
            receiver = self.expr(func.value)
            args = [self.expr(a) for a in node.args]
            fast = sandbox.method_caller(func.attr, len(args)) if len(args) <= 1 else None
            if fast is not None:
                return f"{self.ref(fast)}({receiver}, " + "".join(f"{a}, " for a in args) + f"{BUDGET})"
            values = "(" + "".join(f"{a}, " for a in args) + ")"
            method = self.ref(sandbox.call_method)
            return f"{method}({receiver}, {self.ref(func.attr)}, {values}, {BUDGET})"
        if not isinstance(func, ast.Name):
            return None
        state_call = self.state_calls.get(id(node))
        if state_call is not None:  # proxies(u), sessions(u): the argument inline, then the call
            return f"{self.ref(state_call)}({CTX}, {self.expr(node.args[0])})"
        if func.id not in functions.FUNCTIONS:
            return None
        finish = self.any_all.get(id(node))
        if finish is not None:
            # any()/all() of a comprehension (iteration.any_all_finish): over an empty collection, as
            # most optional lists of a request are, the answer is known without the loop.
            comprehension = node.args[0]
            assert isinstance(comprehension, ast.GeneratorExp | ast.ListComp)
            t = self.temp()
            first = self.expr(comprehension.generators[0].iter)
            empty = "False" if func.id == "any" else "True"
            return (
                f"({empty} if _type({t} := {first}) in {self.ref(_ITERABLES)} and not {t}"
                f" else {self.ref(finish)}({CTX}, {t}))"
            )
        fn, iterable_first = functions.FUNCTIONS[func.id]
        args = [self.expr(a) for a in node.args]
        invoke = self.ref(call_invoker(func.id, fn, iterable_first, node.args))
        return f"{invoke}({BUDGET}" + "".join(f", {a}" for a in args) + ")"

    def _display(self, node: ast.List | ast.Tuple, opening: str, closing: str) -> str | None:
        if any(isinstance(e, ast.Starred) for e in node.elts):
            return None
        items = "".join(f"{self.expr(e)}, " for e in node.elts)
        return f"{self.ref(sandbox.charge_built)}({opening}{items}{closing}, {BUDGET})"

    def _List(self, node: ast.List) -> str | None:
        return self._display(node, "[", "]")

    def _Tuple(self, node: ast.Tuple) -> str | None:
        return self._display(node, "(", ")")

    # Sets and dicts are left to their closures: a comprehension hashes each item as it is
    # evaluated, a display only after evaluating all of them, and errors would come in another order.
