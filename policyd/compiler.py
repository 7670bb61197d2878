"""Validate a rule expression once at load time and compile it into a tree of closures.

The node table follows simpleeval's model: each allowed AST node type maps to one `_compile_<node>`
method; a node type not in the table is refused. Everything that can be decided from the source
(names, schema fields, method names, literal sizes, nesting) is decided here, so the request path
only runs closures. No closure keeps per-call state: a request's names and budget live in `Ctx`.

Attribute access never calls Python's getattr: `x.name` is a key lookup on a mapping, and methods
are reached only in call position through the `sandbox.METHODS` table, by the receiver's exact type.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from policyd import sandbox
from policyd.errors import EvaluationError, LimitError, Location, ValidationError
from policyd.sandbox import Budget
from policyd.schema import Field, Kind, did_you_mean, field_of_other_ops


class Ctx:
    """One request's evaluation state: the names rules see and the budget they spend."""

    __slots__ = ("budget", "names")

    def __init__(self, names: dict[str, Any], budget: Budget) -> None:
        self.names = names
        self.budget = budget


Compiled = Callable[[Ctx], Any]
Locator = Callable[[int, int], Location]

# Names every rule can use; their schema (where known) drives field validation.
BUILTIN_NAMES = ("op", "content", "user", "data", "reqid", "now")
CONSTANTS = {"True": True, "False": False, "None": None}

_KEYWORDS = frozenset({"key", "reverse", "default"})


@dataclass(frozen=True)
class Scope:
    """What the compiler knows about names at one point of a rule file."""

    op_schema: Field
    user_schema: Field
    data_names: frozenset[str]
    op: str = "this op"
    lets: frozenset[str] = frozenset()
    locals: frozenset[str] = frozenset()

    def known_names(self) -> set[str]:
        return {*BUILTIN_NAMES, *CONSTANTS, *sandbox.FUNCTIONS, *self.lets, *self.locals}


def _describe(value: Any) -> str:
    names: dict[type, str] = {dict: "object", list: "list", tuple: "tuple", str: "string"}
    return names.get(type(value), type(value).__name__)


def _lookup(container: Any, key: Any, dotted: bool) -> Any:
    """`x.key` / `x[key]` for rules: mappings by key, sequences by index; nothing else."""
    if isinstance(container, dict):
        try:
            return container[key]
        except KeyError:
            raise EvaluationError(f"no key {key!r} in this object") from None
        except TypeError:
            raise EvaluationError(f"{_describe(key)} cannot be a key") from None
    if dotted:
        raise EvaluationError(f"'.{key}' is not available on a {_describe(container)}")
    if isinstance(container, list | tuple | str):
        try:
            return container[key]
        except IndexError:
            raise EvaluationError(f"index {key!r} out of range (length {len(container)})") from None
        except TypeError:
            raise EvaluationError(f"cannot index a {_describe(container)} with {_describe(key)}") from None
    raise EvaluationError(f"cannot index a {_describe(container)}")


class ExpressionCompiler:
    """Compiles one expression; `locate` maps the AST's (line, col) to the rule file."""

    def __init__(self, scope: Scope, locate: Locator) -> None:
        self.scope = scope
        self.locate = locate
        self._nodes: dict[type[ast.AST], Callable[[Any, Scope], Compiled]] = {
            ast.Constant: self._compile_constant,
            ast.Name: self._compile_name,
            ast.Attribute: self._compile_attribute,
            ast.Subscript: self._compile_subscript,
            ast.Slice: self._compile_slice,
            ast.BinOp: self._compile_binop,
            ast.UnaryOp: self._compile_unaryop,
            ast.BoolOp: self._compile_boolop,
            ast.Compare: self._compile_compare,
            ast.IfExp: self._compile_ifexp,
            ast.Call: self._compile_call,
            ast.List: self._compile_list,
            ast.Tuple: self._compile_tuple,
            ast.Set: self._compile_set,
            ast.Dict: self._compile_dict,
            ast.ListComp: self._compile_comprehension,
            ast.GeneratorExp: self._compile_comprehension,
            ast.SetComp: self._compile_comprehension,
            ast.DictComp: self._compile_comprehension,
            ast.JoinedStr: self._compile_joinedstr,
        }

    # -- entry -----------------------------------------------------------------------------
    def compile(self, tree: ast.expr) -> Compiled:
        self._check_size(tree)
        return self._compile(tree, self.scope)

    def _error(self, node: ast.AST, message: str, hint: str = "") -> ValidationError:
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        return ValidationError(message, self.locate(line, col), hint=hint)

    def _check_size(self, tree: ast.AST) -> None:
        count = 0
        stack: list[tuple[ast.AST, int]] = [(tree, 1)]
        while stack:
            node, depth = stack.pop()
            count += 1
            if count > sandbox.MAX_EXPR_NODES:
                raise self._error(tree, f"expression has more than {sandbox.MAX_EXPR_NODES} parts")
            if depth > sandbox.MAX_EXPR_DEPTH:
                raise self._error(node, f"expression nests deeper than {sandbox.MAX_EXPR_DEPTH} levels")
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))

    def _compile(self, node: ast.AST, scope: Scope) -> Compiled:
        handler = self._nodes.get(type(node))
        if handler is None:
            raise self._error(node, f"{_node_name(node)} is not available in rules")
        return handler(node, scope)

    # -- leaves ----------------------------------------------------------------------------
    def _compile_constant(self, node: ast.Constant, scope: Scope) -> Compiled:
        value = node.value
        if type(value) not in sandbox.SCALARS:
            raise self._error(node, f"{type(value).__name__} literals are not available in rules")
        if isinstance(value, str) and len(value) > sandbox.MAX_STRING_LENGTH:
            raise self._error(node, f"string literal longer than {sandbox.MAX_STRING_LENGTH} characters")
        return lambda ctx: value

    def _compile_name(self, node: ast.Name, scope: Scope) -> Compiled:
        name = node.id
        if name in CONSTANTS:
            value = CONSTANTS[name]
            return lambda ctx: value
        if name in scope.locals or name in scope.lets or name in BUILTIN_NAMES:
            return lambda ctx: ctx.names[name]
        if name in sandbox.FUNCTIONS:
            # A function as a value, e.g. sorted(xs, key=lower).
            fn = sandbox.FUNCTIONS[name][0]
            return lambda ctx: fn
        if name.startswith("_"):
            raise self._error(node, f"name '{name}' is private and not available in rules")
        raise self._error(node, f"unknown name '{name}'", did_you_mean(name, scope.known_names()))

    # -- access ----------------------------------------------------------------------------
    def _static_schema(self, node: ast.AST, scope: Scope) -> Field | None:
        """The schema field an expression like `content.user.metas` denotes, if known."""
        if isinstance(node, ast.Name) and node.id not in scope.locals and node.id not in scope.lets:
            if node.id == "content":
                return scope.op_schema
            if node.id == "user":
                return scope.user_schema
            return None
        if isinstance(node, ast.Attribute):
            parent = self._static_schema(node.value, scope)
            if parent is not None and parent.kind is Kind.RECORD:
                return parent.fields.get(node.attr)
        return None

    def _is_data(self, node: ast.AST, scope: Scope) -> bool:
        return isinstance(node, ast.Name) and node.id == "data" and "data" not in scope.lets | scope.locals

    def _key_error(
        self, node: ast.Attribute | ast.Subscript, message: str, hint: str = ""
    ) -> ValidationError:
        """An error about the key of `x.key` / `x["key"]`, placed at the key, not at `x`."""
        if isinstance(node, ast.Subscript):
            return self._error(node.slice, message, hint)
        line = node.end_lineno or node.lineno
        col = (node.end_col_offset or 0) - len(node.attr.encode())
        return ValidationError(message, self.locate(line, col), hint=hint)

    def _check_field(self, node: ast.Attribute | ast.Subscript, key: str, scope: Scope) -> None:
        parent = self._static_schema(node.value, scope)
        if parent is not None:
            if parent.kind is Kind.RECORD and key not in parent.fields:
                where = ast.unparse(node.value)
                hint = did_you_mean(key, parent.fields)
                if not hint and parent is scope.op_schema:
                    hint = field_of_other_ops(key)
                raise self._key_error(node, f"'{where}' has no field '{key}' in {scope.op}", hint)
            if parent.kind in (Kind.STR, Kind.INT, Kind.BOOL, Kind.STR_LIST):
                raise self._key_error(
                    node,
                    f"'{ast.unparse(node.value)}' is a {parent.kind.value}; it has no field '{key}'",
                )
        elif self._is_data(node.value, scope) and key not in scope.data_names:
            hint = did_you_mean(key, scope.data_names) or (
                f"data files: {', '.join(sorted(scope.data_names))}"
                if scope.data_names
                else "policies/data/ is empty"
            )
            raise self._key_error(node, f"no data file named '{key}'", hint)

    def _compile_attribute(self, node: ast.Attribute, scope: Scope) -> Compiled:
        attr = node.attr
        if attr.startswith("_"):
            raise self._error(node, f"attribute '{attr}' is private and not available in rules")
        self._check_field(node, attr, scope)
        value = self._compile(node.value, scope)

        def attribute(ctx: Ctx) -> Any:
            container = value(ctx)
            if isinstance(container, dict):
                try:
                    return container[attr]
                except KeyError:
                    raise EvaluationError(f"no key {attr!r} in this object") from None
            return _lookup(container, attr, True)

        return attribute

    def _compile_subscript(self, node: ast.Subscript, scope: Scope) -> Compiled:
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            key = node.slice.value
            if key.startswith("_") and self._static_schema(node.value, scope) is not None:
                raise self._error(node, f"field '{key}' is private and not available in rules")
            if self._is_data(node.value, scope):
                self._check_field(node, key, scope)
        value = self._compile(node.value, scope)
        index = self._compile(node.slice, scope)
        return lambda ctx: _lookup(value(ctx), index(ctx), False)

    def _compile_slice(self, node: ast.Slice, scope: Scope) -> Compiled:
        parts = [
            self._compile(p, scope) if p is not None else None for p in (node.lower, node.upper, node.step)
        ]

        def make_slice(ctx: Ctx) -> slice:
            lo, hi, step = (p(ctx) if p is not None else None for p in parts)
            return slice(lo, hi, step)

        return make_slice

    # -- operators -------------------------------------------------------------------------
    def _compile_binop(self, node: ast.BinOp, scope: Scope) -> Compiled:
        fn = sandbox.BINARY_OPERATORS.get(type(node.op))
        if fn is None:
            raise self._error(node, f"operator {type(node.op).__name__} is not available in rules")
        left, right = self._compile(node.left, scope), self._compile(node.right, scope)
        # A container result is charged like a literal: `l = l + l` doubles how often every item
        # is referenced, so without the charge ten lines made one == or hash cost seconds.
        return lambda ctx: sandbox.charge_built(fn(left(ctx), right(ctx)), ctx.budget)

    def _compile_unaryop(self, node: ast.UnaryOp, scope: Scope) -> Compiled:
        fn = sandbox.UNARY_OPERATORS[type(node.op)]
        operand = self._compile(node.operand, scope)
        return lambda ctx: fn(operand(ctx))

    def _compile_boolop(self, node: ast.BoolOp, scope: Scope) -> Compiled:
        parts = [self._compile(v, scope) for v in node.values]
        if isinstance(node.op, ast.And):

            def and_(ctx: Ctx) -> Any:
                result: Any = True
                for part in parts:
                    result = part(ctx)
                    if not result:
                        return result
                return result

            return and_

        def or_(ctx: Ctx) -> Any:
            result: Any = False
            for part in parts:
                result = part(ctx)
                if result:
                    return result
            return result

        return or_

    def _compile_compare(self, node: ast.Compare, scope: Scope) -> Compiled:
        operands = [node.left, *node.comparators]
        for i, o in enumerate(node.ops):
            if isinstance(o, ast.Is | ast.IsNot) and not (
                _is_singleton(operands[i]) or _is_singleton(operands[i + 1])
            ):
                # Identity of other values is an implementation detail (views are built lazily).
                raise self._error(node, "'is' compares with None, True or False only; use '=='")
        first = self._compile(node.left, scope)
        rest = [
            (sandbox.COMPARISONS[type(o)], self._compile(c, scope))
            for o, c in zip(node.ops, node.comparators, strict=True)
        ]
        if len(rest) == 1:
            fn, right = rest[0]
            return lambda ctx: fn(first(ctx), right(ctx))

        def chain(ctx: Ctx) -> Any:
            left = first(ctx)
            for fn, comparator in rest:
                right = comparator(ctx)
                if not fn(left, right):
                    return False
                left = right
            return True

        return chain

    def _compile_ifexp(self, node: ast.IfExp, scope: Scope) -> Compiled:
        test, body, orelse = (self._compile(n, scope) for n in (node.test, node.body, node.orelse))
        return lambda ctx: body(ctx) if test(ctx) else orelse(ctx)

    # -- calls -----------------------------------------------------------------------------
    def _compile_args(
        self, node: ast.Call, scope: Scope
    ) -> tuple[list[Compiled], list[tuple[str, Compiled]]]:
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self._error(a, "*arguments are not available in rules")
        for k in node.keywords:
            if k.arg is None:
                raise self._error(k.value, "**arguments are not available in rules")
            if k.arg not in _KEYWORDS:
                raise self._error(k.value, f"keyword argument '{k.arg}' is not available in rules")
        args = [self._compile(a, scope) for a in node.args]
        kwargs = [(k.arg, self._compile(k.value, scope)) for k in node.keywords if k.arg]
        return args, kwargs

    def _compile_call(self, node: ast.Call, scope: Scope) -> Compiled:
        func = node.func
        if isinstance(func, ast.Attribute):
            return self._compile_method_call(node, func, scope)
        if not isinstance(func, ast.Name) or func.id in scope.locals or func.id in scope.lets:
            raise self._error(node, "only the functions listed in the policy language can be called")
        name = func.id
        if name not in sandbox.FUNCTIONS:
            hint = did_you_mean(name, sandbox.FUNCTIONS)
            raise self._error(func, f"unknown function '{name}'", hint)
        fn, iterable_first = sandbox.FUNCTIONS[name]
        args, kwargs = self._compile_args(node, scope)

        def call(ctx: Ctx) -> Any:
            values = [a(ctx) for a in args]
            if iterable_first and len(values) == 1:
                sandbox.sized_iterable(values[0], ctx.budget)
            kw = {k: v(ctx) for k, v in kwargs}
            key = kw.get("key")
            if key is not None:
                if key not in sandbox.KEY_FUNCTIONS:
                    raise EvaluationError("key= takes one of the policy language's functions")
                kw["key"] = _budgeted_key(key, ctx.budget)
            try:
                result = fn(*values, **kw)
            except (TypeError, ValueError, OverflowError) as e:
                raise EvaluationError(f"{name}(): {e}") from None
            return sandbox.charge_built(sandbox.check_length(result), ctx.budget)

        return call

    def _compile_method_call(self, node: ast.Call, func: ast.Attribute, scope: Scope) -> Compiled:
        name = func.attr
        if name.startswith("_") or name not in sandbox.ALL_METHOD_NAMES:
            hint = did_you_mean(name, sandbox.ALL_METHOD_NAMES)
            raise self._error(func, f"method '{name}' is not available in rules", hint)
        if node.keywords:
            raise self._error(node.keywords[0].value, "methods take positional arguments only")
        receiver = self._compile(func.value, scope)
        args, _ = self._compile_args(node, scope)

        def method_call(ctx: Ctx) -> Any:
            obj = receiver(ctx)
            allowed = sandbox.METHODS.get(type(obj))
            if allowed is None or name not in allowed:
                raise EvaluationError(f"method '{name}' is not available on a {_describe(obj)}")
            values = tuple(a(ctx) for a in args)
            sandbox.precheck_method(obj, name, values)
            try:
                result = getattr(obj, name)(*values)
            except (TypeError, ValueError, OverflowError) as e:
                raise EvaluationError(f".{name}(): {e}") from None
            if isinstance(result, list):
                ctx.budget.charge(len(result))
            return sandbox.check_length(result)

        return method_call

    # -- literals --------------------------------------------------------------------------
    def _compile_elements(self, elts: Iterable[ast.expr], scope: Scope) -> list[Compiled]:
        out = []
        for e in elts:
            if isinstance(e, ast.Starred):
                raise self._error(e, "*unpacking is not available in rules")
            out.append(self._compile(e, scope))
        return out

    def _compile_list(self, node: ast.List, scope: Scope) -> Compiled:
        parts = self._compile_elements(node.elts, scope)
        return lambda ctx: sandbox.charge_built([p(ctx) for p in parts], ctx.budget)

    def _compile_tuple(self, node: ast.Tuple, scope: Scope) -> Compiled:
        parts = self._compile_elements(node.elts, scope)
        return lambda ctx: sandbox.charge_built(tuple(p(ctx) for p in parts), ctx.budget)

    def _compile_set(self, node: ast.Set, scope: Scope) -> Compiled:
        parts = self._compile_elements(node.elts, scope)
        return lambda ctx: sandbox.charge_built({p(ctx) for p in parts}, ctx.budget)

    def _compile_dict(self, node: ast.Dict, scope: Scope) -> Compiled:
        pairs = []
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                raise self._error(v, "**unpacking is not available in rules")
            pairs.append((self._compile(k, scope), self._compile(v, scope)))
        return lambda ctx: sandbox.charge_built({k(ctx): v(ctx) for k, v in pairs}, ctx.budget)

    def _compile_joinedstr(self, node: ast.JoinedStr, scope: Scope) -> Compiled:
        parts: list[Compiled] = []
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                if v.format_spec is not None or v.conversion != -1:
                    raise self._error(v, "format specs and conversions (:>10, !r) are not available in rules")
                inner = self._compile(v.value, scope)
                parts.append(_as_text(inner))
            else:
                parts.append(self._compile(v, scope))
        return lambda ctx: sandbox.join_texts(p(ctx) for p in parts)

    # -- comprehensions --------------------------------------------------------------------
    def _target_names(self, target: ast.AST) -> list[str]:
        if isinstance(target, ast.Name):
            if target.id.startswith("_") or target.id in BUILTIN_NAMES or target.id in CONSTANTS:
                raise self._error(target, f"'{target.id}' cannot be a loop variable")
            return [target.id]
        if isinstance(target, ast.Tuple):
            return [n for t in target.elts for n in self._target_names(t)]
        raise self._error(target, "loop variables must be names or tuples of names")

    def _compile_comprehension(
        self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp, scope: Scope
    ) -> Compiled:
        loops: list[tuple[ast.AST, Compiled, list[Compiled]]] = []
        inner = scope
        for gen in node.generators:
            if gen.is_async:
                raise self._error(node, "async comprehensions are not available in rules")
            iterable = self._compile(gen.iter, inner)
            names = self._target_names(gen.target)
            inner = dataclasses.replace(inner, locals=inner.locals | set(names))
            conditions = [self._compile(c, inner) for c in gen.ifs]
            loops.append((gen.target, iterable, conditions))
        if isinstance(node, ast.DictComp):
            key_fn, value_fn = self._compile(node.key, inner), self._compile(node.value, inner)
        else:
            elt_fn = self._compile(node.elt, inner)
        kind = type(node)

        def assign(names: dict[str, Any], target: ast.AST, value: Any) -> None:
            if isinstance(target, ast.Name):
                names[target.id] = value
                return
            assert isinstance(target, ast.Tuple)
            if not isinstance(value, list | tuple) or len(value) != len(target.elts):
                raise EvaluationError(f"cannot unpack a {_describe(value)} into {len(target.elts)} names")
            for t, v in zip(target.elts, value, strict=True):
                assign(names, t, v)

        def comprehension(ctx: Ctx) -> Any:
            local = Ctx(dict(ctx.names), ctx.budget)
            budget = ctx.budget
            results: list[Any] = []
            pairs: dict[Any, Any] = {}

            def run(level: int) -> None:
                target, iterable, conditions = loops[level]
                for item in sandbox.sized_iterable(iterable(local), budget):
                    budget.charge()
                    assign(local.names, target, item)
                    if not all(c(local) for c in conditions):
                        continue
                    if level + 1 < len(loops):
                        run(level + 1)
                    elif kind is ast.DictComp:
                        pairs[key_fn(local)] = sandbox.charge_built(value_fn(local), budget)
                    else:
                        results.append(sandbox.charge_built(elt_fn(local), budget))
                    if len(results) + len(pairs) > sandbox.MAX_COLLECTION_LENGTH:
                        raise LimitError(
                            f"comprehension builds more than {sandbox.MAX_COLLECTION_LENGTH} items"
                        )

            run(0)
            if kind is ast.DictComp:
                return pairs
            if kind is ast.SetComp:
                return set(results)
            return results

        return comprehension


def _node_name(node: ast.AST) -> str:
    names = {
        "Lambda": "lambda",
        "NamedExpr": "':=' assignment",
        "Await": "await",
        "Yield": "yield",
        "YieldFrom": "yield",
        "Starred": "*unpacking",
    }
    return names.get(type(node).__name__, f"'{type(node).__name__}' syntax")


# key= functions by function object: whether each takes an iterable first.
_KEY_TAKES_ITERABLE = {fn: iterable_first for fn, iterable_first in sandbox.FUNCTIONS.values()}


def _budgeted_key(fn: Callable[[Any], Any], budget: Budget) -> Callable[[Any], Any]:
    """A key= function run like a direct call: its input checked, its work and result charged.

    sorted() and min()/max() call the key once per item from C, past the closures that charge
    the budget: sorted(xs, key=list) over 10,000 long strings built 10,000 long lists.
    """
    iterable_first = _KEY_TAKES_ITERABLE[fn]

    def key(value: Any) -> Any:
        budget.charge()
        if iterable_first:
            sandbox.sized_iterable(value, budget)
        return sandbox.charge_built(sandbox.check_length(fn(value)), budget)

    return key


def _is_singleton(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool))


def _as_text(inner: Compiled) -> Compiled:
    return lambda ctx: sandbox.to_text(inner(ctx))
