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
from typing import Any, ClassVar

from policyd.errors import EvaluationError, LimitError, Location, ValidationError, did_you_mean
from policyd.rules import sandbox
from policyd.rules.sandbox import Budget
from policyd.rules.schema import Field, Kind, ZeroMap, field_of_other_ops, view, zero_value


class RequestNames(dict[str, Any]):
    """The names one request's rules see, with the `content` and `user` views built on first use.

    Most rules read single fields, which compiled closures take straight from the raw request
    (`content_raw`, `user_raw`); the whole view is built only when a rule uses the object itself.
    `user_raw` is the dict the `user` view is made of, or None for a zero user.
    """

    __slots__ = ("content_raw", "content_schema", "user_raw", "user_schema")

    def __init__(
        self,
        names: dict[str, Any],
        content_schema: Field,
        content_raw: dict[str, Any],
        user_schema: Field,
        user_raw: dict[str, Any] | None,
    ) -> None:
        dict.__init__(self, names)  # not super(): one lookup less on every request
        self.content_schema = content_schema
        self.user_schema = user_schema
        self.content_raw = content_raw
        self.user_raw = user_raw

    def __missing__(self, key: str) -> Any:
        if key == "content":
            value = view(self.content_schema, self.content_raw)
        elif key == "user":
            value = view(self.user_schema, self.user_raw)
        else:
            raise KeyError(key)
        self[key] = value
        return value

    def replace_request(self, content_raw: dict[str, Any], user_raw: dict[str, Any] | None) -> None:
        """After a `set`: later rules see the new content (views are rebuilt when used)."""
        self.content_raw = content_raw
        self.user_raw = user_raw
        self.pop("content", None)
        self.pop("user", None)


class Ctx:
    """One request's evaluation state: the names rules see and the budget they spend.

    `bound` holds the variables of the comprehensions being evaluated; `raw` is `names` when it
    is a RequestNames, which lets field reads skip building views.
    """

    __slots__ = ("bound", "budget", "names", "raw")

    def __init__(self, names: dict[str, Any], budget: Budget, bound: dict[str, Any] | None = None) -> None:
        self.names = names
        self.budget = budget
        self.bound = {} if bound is None else bound
        self.raw = names if type(names) is RequestNames else None


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


class ExpressionCompiler:
    """Compiles one expression; `locate` maps the AST's (line, col) to the rule file."""

    # AST node type → the method compiling it; names, not bound methods, so that a compiler keeps
    # no reference cycle (compiled policies are frozen out of the garbage collector, see store.py).
    _NODES: ClassVar[dict[type[ast.AST], str]] = {
        ast.Constant: "_compile_constant",
        ast.Name: "_compile_name",
        ast.Attribute: "_compile_attribute",
        ast.Subscript: "_compile_subscript",
        ast.Slice: "_compile_slice",
        ast.BinOp: "_compile_binop",
        ast.UnaryOp: "_compile_unaryop",
        ast.BoolOp: "_compile_boolop",
        ast.Compare: "_compile_compare",
        ast.IfExp: "_compile_ifexp",
        ast.Call: "_compile_call",
        ast.List: "_compile_list",
        ast.Tuple: "_compile_tuple",
        ast.Set: "_compile_set",
        ast.Dict: "_compile_dict",
        ast.ListComp: "_compile_comprehension",
        ast.GeneratorExp: "_compile_comprehension",
        ast.SetComp: "_compile_comprehension",
        ast.DictComp: "_compile_comprehension",
        ast.JoinedStr: "_compile_joinedstr",
    }

    def __init__(self, scope: Scope, locate: Locator, *, record: bool = False) -> None:
        self.scope = scope
        self.locate = locate
        # With `record`, every node's closure by id(node): policyd.rules.codegen calls the closures of
        # the nodes it does not inline.
        self.closures: dict[int, Compiled] | None = {} if record else None
        self.any_all: dict[int, Callable[[Ctx, Any], Any]] = {}  # any()/all() calls, by id(node)

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
        method = self._NODES.get(type(node))
        if method is None:
            raise self._error(node, f"{_node_name(node)} is not available in rules")
        handler: Callable[[Any, Scope], Compiled] = getattr(self, method)
        compiled = handler(node, scope)
        if self.closures is not None:
            self.closures[id(node)] = compiled
        return compiled

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
        if name in scope.locals:
            return lambda ctx: ctx.bound[name]
        if name in scope.lets or name in BUILTIN_NAMES:
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
            return sandbox.lookup(container, attr, True)

        return self._key_path(node, scope, attribute) or attribute

    def _compile_subscript(self, node: ast.Subscript, scope: Scope) -> Compiled:
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            key = node.slice.value
            if key.startswith("_") and self._static_schema(node.value, scope) is not None:
                raise self._error(node, f"field '{key}' is private and not available in rules")
            if self._is_data(node.value, scope):
                self._check_field(node, key, scope)
        value = self._compile(node.value, scope)
        index = self._compile(node.slice, scope)

        def subscript(ctx: Ctx) -> Any:
            return sandbox.lookup(value(ctx), index(ctx), False)

        return self._key_path(node, scope, subscript) or subscript

    def _key_path(
        self, node: ast.Attribute | ast.Subscript, scope: Scope, generic: Compiled
    ) -> Compiled | None:
        """One closure for `name.a.b["c"]`: fields read from the raw request, or keys walked.

        `generic` (the node compiled the ordinary way) answers whenever the shortcut meets
        anything unusual, so values and errors stay exactly those of the generic closures.
        """
        found = constant_key_path(node)
        if found is None:
            return None
        name, keys = found
        if name in ("content", "user") and name not in scope.locals and name not in scope.lets:
            schema = scope.op_schema if name == "content" else scope.user_schema
            return _field_reader(name == "user", schema, keys, generic)
        if name in scope.lets or (name in BUILTIN_NAMES and name not in scope.locals):
            return _key_walk(name, keys, generic)
        return None

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
        if isinstance(node.op, ast.Not):
            return lambda ctx: not operand(ctx)
        return lambda ctx: fn(operand(ctx))

    def _compile_boolop(self, node: ast.BoolOp, scope: Scope) -> Compiled:
        parts = [self._compile(v, scope) for v in node.values]
        if len(parts) == 2:
            a, b = parts
            if isinstance(node.op, ast.And):
                return lambda ctx: a(ctx) and b(ctx)
            return lambda ctx: a(ctx) or b(ctx)
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
            special = _compare_constant(
                node.ops[0], first, node.comparators[0], scope, lambda a: self._compile(a, scope)
            )
            if special is not None:
                return special
            return _compare(node.ops[0], first, right) or (lambda ctx: fn(first(ctx), right(ctx)))

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
        if (
            name in ("any", "all")
            and len(node.args) == 1
            and not node.keywords
            and isinstance(node.args[0], ast.GeneratorExp | ast.ListComp)
        ):
            plan = self._comprehension_plan(node.args[0], scope)
            finish = any_all_finish(name, fn, plan)
            if self.closures is not None:
                self.any_all[id(node)] = finish
            return _any_all(finish, plan)
        args, kwargs = self._compile_args(node, scope)
        if not kwargs:
            return _positional_call(name, fn, iterable_first, args)

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
        if len(args) <= 1:
            return _method_call(name, receiver, args[0] if args else None)

        def method_call(ctx: Ctx) -> Any:
            obj = receiver(ctx)
            return sandbox.call_method(obj, name, tuple([a(ctx) for a in args]), ctx.budget)

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
        plan = self._comprehension_plan(node, scope)

        def comprehension(ctx: Ctx) -> Any:
            # The first loop's iterable sees no loop variable yet: evaluate it before making the
            # comprehension's own context, which an empty iterable never needs.
            return _comprehend(plan, ctx, sandbox.sized_iterable(plan.loops[0][1](ctx), ctx.budget))

        return comprehension

    def _comprehension_plan(
        self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp, scope: Scope
    ) -> _Loops:
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
            plan = _Loops(
                tuple(loops), type(node), self._compile(node.key, inner), self._compile(node.value, inner)
            )
        else:
            plan = _Loops(tuple(loops), type(node), self._compile(node.elt, inner), None)
        return plan


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
class _Loops:
    """A compiled comprehension: its loops (target, iterable, conditions) and what it builds."""

    loops: tuple[tuple[ast.AST, Compiled, list[Compiled]], ...]
    kind: type[ast.AST]
    element: Compiled  # the element, or the key of a dict comprehension
    value: Compiled | None  # the value of a dict comprehension


def _comprehend(plan: _Loops, ctx: Ctx, items: Iterable[Any]) -> Any:
    """A comprehension's value, its first iterable already evaluated (and charged)."""
    results: list[Any] = []
    pairs: dict[Any, Any] = {}
    if len(items):  # type: ignore[arg-type]
        _run_loops(plan, 0, Ctx(ctx.names, ctx.budget, dict(ctx.bound)), results, pairs, items)
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


def _run_loops(
    plan: _Loops,
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
            _run_loops(plan, level + 1, local, results, pairs)
        elif plan.value is not None:
            pairs[plan.element(local)] = sandbox.charge_built(plan.value(local), budget)
        else:
            results.append(sandbox.charge_built(plan.element(local), budget))
        if len(results) + len(pairs) > sandbox.MAX_COLLECTION_LENGTH:
            raise LimitError(f"comprehension builds more than {sandbox.MAX_COLLECTION_LENGTH} items")


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


# -- specialised closures ---------------------------------------------------------------------
# Each returns a closure with exactly the semantics (value, error class, steps charged) of the
# generic closures for the same node; tests/rules/test_differential.py checks them against the reference.

_SCALAR_ZERO: dict[Kind, Any] = {Kind.STR: "", Kind.INT: 0, Kind.BOOL: False}


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


def _field_reader(of_user: bool, schema: Field, keys: tuple[str, ...], generic: Compiled) -> Compiled | None:
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

    if last is None and len(path) == 1 and final.kind in _SCALAR_ZERO:
        (key,) = path
        zero = _SCALAR_ZERO[final.kind]
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
            if final.kind in _SCALAR_ZERO or final.kind is Kind.STR_LIST:
                return node
            return generic(ctx) if not isinstance(node, dict) else view(final, node)
        if node is None:
            return "" if last == "map" else None
        if not isinstance(node, dict):
            return generic(ctx)
        return node.get(final_key, "" if last == "map" else None)

    return read


def _key_walk(name: str, keys: tuple[str, ...], generic: Compiled) -> Compiled:
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


def _constant(node: ast.AST) -> tuple[bool, Any]:
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
    value: Any  # the scalar; the display's tuple, list or set; or the SafeRange
    cost: int = 0  # steps a display or range is charged as built, after x is evaluated
    bounds: tuple[int, int] | None = None  # a step-1 range: an int x is tested by its bounds


def constant_operand(op: ast.cmpop, right_node: ast.expr, scope: Scope) -> ConstantOperand | None:
    """`x == "tcp"`, `x < 1024`, `x in ("tcp", "udp")`, `x in range(6000, 7000)`: the constant."""
    is_constant, c = _constant(right_node)
    if is_constant:
        if isinstance(op, ast.Eq | ast.NotEq | ast.Lt | ast.LtE | ast.Gt | ast.GtE):
            return ConstantOperand(type(op), c)
        return None
    if not isinstance(op, ast.In | ast.NotIn):
        return None
    if isinstance(right_node, ast.Tuple | ast.List | ast.Set):
        items = [_constant(e) for e in right_node.elts]
        if not all(ok for ok, _ in items):
            return None
        values = [v for _, v in items]
        container = (
            tuple(values)
            if isinstance(right_node, ast.Tuple)
            else values
            if isinstance(right_node, ast.List)
            else set(values)
        )
        return ConstantOperand(type(op), container, _built_cost(container))
    args = _constant_range_args(right_node, scope)
    if args is None:
        return None
    try:
        rng = sandbox.SafeRange(*args)
    except EvaluationError:
        return None
    r = range(*args)
    bounds = (r.start, r.stop) if r.step == 1 else None
    return ConstantOperand(type(op), rng, _built_cost(rng), bounds)


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
    args = [_constant(a) for a in node.args]
    if not all(ok and type(v) is int for ok, v in args):
        return None
    return [v for _, v in args]


def _compare_constant(
    op: ast.cmpop,
    left: Compiled,
    right_node: ast.expr,
    scope: Scope,
    compile_arg: Callable[[ast.expr], Compiled] | None = None,
) -> Compiled | None:
    """A comparison with a constant (see constant_operand) as one closure, the constant built
    once at load time and still charged as the generic closures charge it."""
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
    if not isinstance(c, sandbox.SafeRange):
        container = c
        if negate:

            def not_in_display(ctx: Ctx) -> bool:
                value = left(ctx)
                ctx.budget.add(cost)
                return value not in container

            return not_in_display

        def in_display(ctx: Ctx) -> bool:
            value = left(ctx)
            ctx.budget.add(cost)
            return value in container

        return in_display
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

    def invoke(budget: Budget, *values: Any) -> Any:
        if iterable_first and len(values) == 1:
            sandbox.sized_iterable(values[0], budget)
        try:
            result = fn(*values)
        except (TypeError, ValueError, OverflowError) as e:
            raise EvaluationError(f"{name}(): {e}") from None
        if type(result) in _NUMBERS:  # nothing to check or charge
            return result
        return sandbox.charge_built(sandbox.check_length(result), budget)

    return invoke


def _positional_call(
    name: str, fn: Callable[..., Any], iterable_first: bool, args: list[Compiled]
) -> Compiled:
    """A function call without keyword arguments (the generic call, minus the keyword handling)."""
    invoke = invoker(name, fn, iterable_first)
    if len(args) == 1:
        (arg,) = args
        return lambda ctx: invoke(ctx.budget, arg(ctx))
    return lambda ctx: invoke(ctx.budget, *[a(ctx) for a in args])


# Results that check_length and charge_built leave alone (neither strings nor containers).
_NUMBERS = frozenset({bool, int, float, type(None)})


def _compare(op: ast.cmpop, left: Compiled, right: Compiled) -> Compiled | None:
    """One comparison, both sides evaluated left to right, without the operator table's call."""
    if isinstance(op, ast.Eq):
        return lambda ctx: left(ctx) == right(ctx)
    if isinstance(op, ast.NotEq):
        return lambda ctx: left(ctx) != right(ctx)
    if isinstance(op, ast.In):

        def in_(ctx: Ctx) -> bool:
            item = left(ctx)
            return sandbox.safe_contains(right(ctx), item)

        return in_
    if isinstance(op, ast.NotIn):

        def not_in(ctx: Ctx) -> bool:
            item = left(ctx)
            return not sandbox.safe_contains(right(ctx), item)

        return not_in
    return None


def _built_cost(value: Any) -> int:
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
    cost = _built_cost(sandbox.SafeRange(0))

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


def _method_call(name: str, receiver: Compiled, arg: Compiled | None) -> Compiled:
    """A method call with at most one argument (the generic method call, minus the tuple)."""

    def method_call(ctx: Ctx) -> Any:
        obj = receiver(ctx)
        return sandbox.call_method(obj, name, () if arg is None else (arg(ctx),), ctx.budget)

    return method_call


def any_all_finish(name: str, fn: Callable[..., Any], plan: _Loops) -> Callable[[Ctx, Any], Any]:
    """`any(x for x in xs)` once `xs` is evaluated: the generic call of a comprehension, with the
    call's closure and the comprehension's folded into one (its list still built and charged in
    full first)."""

    def finish(ctx: Ctx, first: Any) -> Any:
        budget = ctx.budget
        values = _comprehend(plan, ctx, sandbox.sized_iterable(first, budget))
        sandbox.sized_iterable(values, budget)
        try:
            return fn(values)
        except (TypeError, ValueError, OverflowError) as e:
            raise EvaluationError(f"{name}(): {e}") from None

    return finish


def _any_all(finish: Callable[[Ctx, Any], Any], plan: _Loops) -> Compiled:
    first = plan.loops[0][1]
    return lambda ctx: finish(ctx, first(ctx))
