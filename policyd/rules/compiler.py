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
from typing import Any, ClassVar

from policyd.errors import EvaluationError, ValidationError, did_you_mean
from policyd.rules import functions, sandbox
from policyd.rules.context import BUILTIN_NAMES, CONSTANTS, Compiled, Ctx, Scope
from policyd.rules.iteration import Loops, any_all, any_all_finish, budgeted_key, comprehend
from policyd.rules.language import Locator
from policyd.rules.schema import Field, Kind, field_of_other_ops
from policyd.rules.shapes import (
    compare,
    compare_constant,
    constant_key_path,
    field_reader,
    key_walk,
    literal_scalar,
    positional_call,
    short_method_call,
)
from policyd.rules.statefns import (
    MAX_STATE_KEY_CHARS,
    STATE_CALL_STEPS,
    STATE_FUNCTIONS,
    Param,
    call_cost,
    literal_problem,
)
from policyd.rules.suggestions import function_hint, method_hint

_KEYWORDS = frozenset({"key", "reverse", "default"})


class ExpressionCompiler:
    """Compiles one expression; `locate` maps the AST's (line, col) to the rule file."""

    # AST node type → the method compiling it; names, not bound methods, so that a compiler keeps
    # no reference cycle (compiled policies are frozen out of the garbage collector, see service/store.py).
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
        # One-argument state calls, by id(node): what they do with their argument's value.
        self.state_calls: dict[int, Callable[[Ctx, Any], Any]] = {}
        # The state functions this expression calls, and whether proxies()/sessions() is ever
        # asked about anyone but the request's own user (the engine then locks more widely).
        self.state_functions: set[str] = set()
        self.reads_other_users = False

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
        if name in STATE_FUNCTIONS:
            raise self._error(node, f"{name}() is a state function: call it, e.g. {name}(user.user)")
        if name in functions.FUNCTIONS:
            # A function as a value, e.g. sorted(xs, key=lower).
            fn = functions.FUNCTIONS[name][0]
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
                else "data/ holds no .toml or .json files"
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
                    raise EvaluationError(f"no key {sandbox.shown(attr)} in this object") from None
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
        if isinstance(node.slice, ast.Slice):
            return lambda ctx: sandbox.take_slice(value(ctx), index(ctx), ctx.budget)

        def subscript(ctx: Ctx) -> Any:
            return sandbox.lookup(value(ctx), index(ctx), False, ctx.budget)

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
            return field_reader(name == "user", schema, keys, generic)
        if name in scope.lets or (name in BUILTIN_NAMES and name not in scope.locals):
            return key_walk(name, keys, generic)
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
        return lambda ctx: fn(left(ctx), right(ctx), ctx.budget)

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
            special = compare_constant(
                node.ops[0], first, node.comparators[0], scope, lambda a: self._compile(a, scope)
            )
            if special is not None:
                return special
            return compare(node.ops[0], first, right) or (lambda ctx: fn(first(ctx), right(ctx), ctx.budget))

        def chain(ctx: Ctx) -> Any:
            left = first(ctx)
            for fn, comparator in rest:
                right = comparator(ctx)
                if not fn(left, right, ctx.budget):
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
        if name in STATE_FUNCTIONS:
            return self._compile_state_call(node, name, scope)
        if name not in functions.FUNCTIONS:
            hint = function_hint(name, node, functions.FUNCTIONS) or did_you_mean(name, STATE_FUNCTIONS)
            raise self._error(func, f"unknown function '{name}'", hint)
        fn, iterable_first = functions.FUNCTIONS[name]
        self._check_literal_arguments(node, name)
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
            return any_all(finish, plan)
        args, kwargs = self._compile_args(node, scope)
        if not kwargs:
            return positional_call(name, fn, iterable_first, args, node.args)

        def call(ctx: Ctx) -> Any:
            values = [a(ctx) for a in args]
            if iterable_first and len(values) == 1:
                sandbox.sized_iterable(values[0], ctx.budget)
            kw = {k: v(ctx) for k, v in kwargs}
            key = kw.get("key")
            if key is not None:
                if key not in functions.KEY_FUNCTIONS:
                    raise EvaluationError("key= takes one of the policy language's functions")
                kw["key"] = budgeted_key(key, ctx.budget)
            result = functions.call(name, fn, tuple(values), ctx.budget, **kw)
            return sandbox.charge_built(sandbox.check_length(result), ctx.budget)

        return call

    def _compile_state_call(self, node: ast.Call, name: str, scope: Scope) -> Compiled:
        """`proxies(u)`, `sessions(u)`, `rate(key, limit, per)`, `hits(key, per)`: arguments checked
        where the compiler can see them, the call charged once it answered (statefns.call_cost)."""
        spec = STATE_FUNCTIONS[name]
        if node.keywords:
            raise self._error(node.keywords[0].value, f"{name}() takes positional arguments only")
        signature = f"{name}({', '.join(p.name.lower() for p in spec.params)})"
        if len(node.args) != len(spec.params):
            raise self._error(node, f"{signature} takes {len(spec.params)} argument(s), not {len(node.args)}")
        for param, arg in zip(spec.params, node.args, strict=True):
            self._check_state_argument(name, param, arg, scope)
        self.state_functions.add(name)
        if spec.reads_tracking and not _is_request_user(node.args[0], scope):
            self.reads_other_users = True
        args, _ = self._compile_args(node, scope)
        call = spec.call
        if len(args) == 1:  # proxies(u), sessions(u): the common calls, without the list
            (only,) = args
            method = name  # the StateReader method of the same name (statefns: _proxies, _sessions)

            def state_value1(ctx: Ctx, who: Any) -> Any:
                if type(who) is str and len(who) <= MAX_STATE_KEY_CHARS:  # check_name's checks
                    result = getattr(ctx.state, method)(who)
                else:
                    result = call(ctx.state, who)
                n = STATE_CALL_STEPS + len(result) if type(result) is list else STATE_CALL_STEPS
                budget = ctx.budget
                steps = budget.steps + n
                if steps < budget.next_read and steps <= budget.max_steps:
                    budget.steps = steps  # charge(n), inline: no limit or clock read is reached
                else:
                    budget.charge(n)
                return result

            if self.closures is not None:
                self.state_calls[id(node)] = state_value1  # codegen passes the argument inline

            def state_call1(ctx: Ctx) -> Any:
                return state_value1(ctx, only(ctx))

            return state_call1

        def state_call(ctx: Ctx) -> Any:
            result = call(ctx.state, *[a(ctx) for a in args])
            ctx.budget.charge(call_cost(result))
            return result

        return state_call

    def _check_state_argument(self, name: str, param: Param, arg: ast.expr, scope: Scope) -> None:
        """A literal or a field of a known kind that cannot be this parameter is a load error."""
        if isinstance(arg, ast.Starred):
            raise self._error(arg, "*arguments are not available in rules")
        is_literal, value = _literal(arg)
        if is_literal:
            problem = literal_problem(name, param, value)
            if problem is not None:
                raise self._error(arg, problem if problem.startswith(name) else f"{name}(): {problem}")
            return
        if isinstance(arg, ast.List | ast.Tuple | ast.Set | ast.Dict | ast.ListComp | ast.SetComp):
            raise self._error(arg, f"{name}() takes {param.value} here, not a collection")
        field = self._static_schema(arg, scope)
        if field is None:
            return
        accepted = {Param.NAME: (Kind.STR,), Param.COUNT: (Kind.INT,), Param.PERIOD: (Kind.STR, Kind.INT)}
        if field.kind not in accepted[param]:
            kind = field.kind.value
            article = "an" if kind[0] in "aeiou" else "a"
            raise self._error(
                arg, f"{name}() takes {param.value} here, and '{ast.unparse(arg)}' is {article} {kind}"
            )

    def _check_literal_arguments(self, node: ast.Call, name: str) -> None:
        """Arguments given as literals that the function would refuse are load-time errors."""
        check = functions.LITERAL_ARGUMENTS.get(name)
        if check is None:
            return
        for position, arg in enumerate(node.args):
            literal, value = literal_scalar(arg)
            if literal:
                problem = check(position, value)
                if problem:
                    raise self._error(arg, problem)

    def _compile_method_call(self, node: ast.Call, func: ast.Attribute, scope: Scope) -> Compiled:
        name = func.attr
        if name.startswith("_") or name not in sandbox.ALL_METHOD_NAMES:
            hint = method_hint(name, sandbox.ALL_METHOD_NAMES)
            raise self._error(func, f"method '{name}' is not available in rules", hint)
        if node.keywords:
            raise self._error(node.keywords[0].value, "methods take positional arguments only")
        receiver = self._compile(func.value, scope)
        args, _ = self._compile_args(node, scope)
        if len(args) <= 1:
            return short_method_call(name, receiver, args[0] if args else None)

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
        return lambda ctx: sandbox.join_texts((p(ctx) for p in parts), ctx.budget)

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
            return comprehend(plan, ctx, sandbox.sized_iterable(plan.loops[0][1](ctx), ctx.budget))

        return comprehension

    def _comprehension_plan(
        self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp, scope: Scope
    ) -> Loops:
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
            plan = Loops(
                tuple(loops), type(node), self._compile(node.key, inner), self._compile(node.value, inner)
            )
        else:
            plan = Loops(tuple(loops), type(node), self._compile(node.elt, inner), None)
        return plan


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


def _literal(node: ast.AST) -> tuple[bool, Any]:
    """(True, value) for a scalar literal (a negative number too), else (False, None)."""
    if isinstance(node, ast.Constant):
        return True, node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
    ):
        value = node.operand.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, -value
    return False, None


def _is_request_user(node: ast.AST, scope: Scope) -> bool:
    """`user.user` (or `content.user.user`; Login's `content.user`): the request's own user."""
    if not isinstance(node, ast.Attribute) or node.attr != "user":
        return False
    inner = node.value
    if isinstance(inner, ast.Name):
        if inner.id in scope.locals or inner.id in scope.lets:
            return False
        return inner.id == "user" or (inner.id == "content" and scope.op == "Login")
    return (
        isinstance(inner, ast.Attribute)
        and inner.attr == "user"
        and isinstance(inner.value, ast.Name)
        and inner.value.id == "content"
        and "content" not in scope.locals | scope.lets
    )


def _is_singleton(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool))


def _as_text(inner: Compiled) -> Compiled:
    return lambda ctx: sandbox.to_text(inner(ctx), ctx.budget)
