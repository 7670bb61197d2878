"""The reference evaluator: the definition of what a rule expression means when it runs.

A simpleeval `EvalWithCompoundTypes` configured from the sandbox's tables: the functions in
`functions.FUNCTIONS`, methods from `sandbox.METHODS` by the receiver's exact type, the safe
operators, key lookup instead of getattr, and the same limits and per-request `Budget`. It walks
the expression's AST node by node on every call, which makes it slow and easy to read; the
compiler's closures are the fast path, and `tests/rules/test_differential.py` holds the two to the same
result, the same error class and the same steps charged for every expression it generates.

The reference evaluates trees that passed the compiler's load-time validation (names, fields,
private attributes, node types); it refuses any other node type itself, as simpleeval does.

Budget (what a request pays in steps, on top of the wall clock):
- a call of a function that takes an iterable, with that one argument: the iterable's length;
- a container a function or an operator returns, or a display (`[...]`, `(...)`, `{...}`)
  builds: its deep size (`sandbox.deep_size`);
- a key= function: one step per call, and what a call of it would cost;
- a method that returns a list: its length;
- a comprehension: each loop's iterable length, one per item, and the deep size of each element;
- a state function: STATE_CALL_STEPS, plus one per item of the list it answers.

One instance per evaluation: simpleeval keeps per-call state on the instance.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from typing import Any

from simpleeval import EvalWithCompoundTypes, FeatureNotAvailable, NameNotDefined

from policyd.errors import EvaluationError, LimitError
from policyd.rules import functions, sandbox
from policyd.rules.context import CONSTANTS
from policyd.rules.decision import Op
from policyd.rules.sandbox import Budget
from policyd.rules.schema import SCHEMAS, USER, view
from policyd.rules.shapes import literal_display
from policyd.rules.statefns import STATE_FUNCTIONS, UNAVAILABLE, StateReader, call_cost


class ReferenceEvaluator(EvalWithCompoundTypes):  # type: ignore[misc]
    """Evaluates one validated expression tree against `names`, charging `budget`; the state
    functions read and count through `state`."""

    def __init__(self, names: Mapping[str, Any], budget: Budget, state: StateReader = UNAVAILABLE) -> None:
        operators: dict[type[ast.AST], Any] = {}
        for table in (sandbox.BINARY_OPERATORS, sandbox.UNARY_OPERATORS, sandbox.COMPARISONS):
            operators.update(table.items())
        super().__init__(operators=operators, names=dict(names))
        # EvalWithCompoundTypes adds tuple() and dict(); the language has exactly functions.FUNCTIONS.
        self.functions = {name: fn for name, (fn, _) in functions.FUNCTIONS.items()}
        self.budget = budget
        self.state = state
        self.bound: dict[str, Any] = {}  # comprehension variables in scope
        self.nodes = {
            ast.Constant: self._eval_constant,
            ast.Name: self._eval_name,
            ast.Attribute: self._eval_attribute,
            ast.Subscript: self._eval_subscript,
            ast.Slice: self._eval_slice,
            ast.BinOp: self._eval_binop,
            ast.UnaryOp: self._eval_unaryop,
            ast.BoolOp: self._eval_boolop,
            ast.Compare: self._eval_compare,
            ast.IfExp: self._eval_ifexp,
            ast.Call: self._eval_call,
            ast.List: self._eval_list,
            ast.Tuple: self._eval_tuple,
            ast.Set: self._eval_set,
            ast.Dict: self._eval_dict,
            ast.ListComp: self._eval_comprehension,
            ast.GeneratorExp: self._eval_comprehension,
            ast.SetComp: self._eval_comprehension,
            ast.DictComp: self._eval_comprehension,
            ast.JoinedStr: self._eval_joinedstr,
        }

    def evaluate(self, tree: ast.expr) -> Any:
        """The value of an already parsed and validated expression."""
        return self.eval("<expression>", previously_parsed=tree)

    # -- leaves ----------------------------------------------------------------------------
    def _eval_constant(self, node: ast.Constant) -> Any:
        if type(node.value) not in sandbox.SCALARS:
            raise FeatureNotAvailable(f"{type(node.value).__name__} literals are not available")
        return node.value

    def _eval_name(self, node: ast.Name) -> Any:
        name = node.id
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in self.bound:
            return self.bound[name]
        if name in self.names:
            return self.names[name]
        if name in self.functions:
            return self.functions[name]  # a function as a value: sorted(xs, key=lower)
        raise NameNotDefined(name, self.expr)

    # -- access: keys of mappings, indexes of sequences, nothing else ---------------------
    def _eval_attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):
            raise FeatureNotAvailable(f"attribute '{node.attr}' is private")
        return sandbox.lookup(self._eval(node.value), node.attr, True)

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        container = self._eval(node.value)
        key = self._eval(node.slice)
        if isinstance(node.slice, ast.Slice):
            return sandbox.take_slice(container, key, self.budget)
        return sandbox.lookup(container, key, False, self.budget)

    def _eval_slice(self, node: ast.Slice) -> slice:
        lower, upper, step = (
            self._eval(part) if part is not None else None for part in (node.lower, node.upper, node.step)
        )
        return slice(lower, upper, step)

    # -- operators -------------------------------------------------------------------------
    def _eval_binop(self, node: ast.BinOp) -> Any:
        fn = self.operators.get(type(node.op))
        if fn is None or type(node.op) not in sandbox.BINARY_OPERATORS:
            raise FeatureNotAvailable(f"operator {type(node.op).__name__} is not available")
        return fn(self._eval(node.left), self._eval(node.right), self.budget)

    def _eval_unaryop(self, node: ast.UnaryOp) -> Any:
        return self.operators[type(node.op)](self._eval(node.operand))

    def _eval_boolop(self, node: ast.BoolOp) -> Any:
        result: Any = isinstance(node.op, ast.And)
        for value in node.values:
            result = self._eval(value)
            if bool(result) is not isinstance(node.op, ast.And):
                return result
        return result

    def _eval_compare(self, node: ast.Compare) -> Any:
        if len(node.ops) == 1 and isinstance(node.ops[0], ast.In | ast.NotIn):
            display = literal_display(node.comparators[0])
            if display is not None:  # `x in ("tcp", "udp")`: constant work, charged nothing
                found = self._eval(node.left) in display
                return found if isinstance(node.ops[0], ast.In) else not found
        left = self._eval(node.left)
        result: Any = True
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self._eval(comparator)
            result = sandbox.COMPARISONS[type(op)](left, right, self.budget)
            if not result:
                return result
            left = right
        return result

    def _eval_ifexp(self, node: ast.IfExp) -> Any:
        return self._eval(node.body) if self._eval(node.test) else self._eval(node.orelse)

    # -- calls -----------------------------------------------------------------------------
    def _eval_call(self, node: ast.Call) -> Any:
        if isinstance(node.func, ast.Attribute):
            return self._call_method(node, node.func)
        if isinstance(node.func, ast.Name) and node.func.id in STATE_FUNCTIONS:
            values = [self._eval(a) for a in node.args]
            result = STATE_FUNCTIONS[node.func.id].call(self.state, *values)
            self.budget.charge(call_cost(result))
            return result
        if not isinstance(node.func, ast.Name) or node.func.id not in functions.FUNCTIONS:
            raise FeatureNotAvailable("only the policy language's functions can be called")
        name = node.func.id
        fn, iterable_first = functions.FUNCTIONS[name]
        values = [self._eval(a) for a in node.args]
        if iterable_first and len(values) == 1:
            sandbox.sized_iterable(values[0], self.budget)
        kwargs = {k.arg: self._eval(k.value) for k in node.keywords if k.arg is not None}
        key = kwargs.get("key")
        if key is not None:
            if key not in functions.KEY_FUNCTIONS:
                raise EvaluationError("key= takes one of the policy language's functions")
            kwargs["key"] = self._key(key)
        result = functions.call(name, fn, tuple(values), self.budget, **kwargs)
        return sandbox.charge_built(sandbox.check_length(result), self.budget)

    def _key(self, fn: Any) -> Any:
        """A key= function, called once per item by sorted()/min()/max(), runs as a call does."""
        name, iterable_first = next((n, takes) for n, (f, takes) in functions.FUNCTIONS.items() if f is fn)

        def key(value: Any) -> Any:
            self.budget.charge()
            if iterable_first:
                sandbox.sized_iterable(value, self.budget)
            result = functions.call(name, fn, (value,), self.budget)
            return sandbox.charge_built(sandbox.check_length(result), self.budget)

        return key

    def _call_method(self, node: ast.Call, func: ast.Attribute) -> Any:
        name = func.attr
        receiver = self._eval(func.value)
        return sandbox.call_method(receiver, name, tuple(self._eval(a) for a in node.args), self.budget)

    # -- displays --------------------------------------------------------------------------
    def _elements(self, elts: list[ast.expr]) -> list[Any]:
        if any(isinstance(e, ast.Starred) for e in elts):
            raise FeatureNotAvailable("*unpacking is not available")
        return [self._eval(e) for e in elts]

    def _eval_list(self, node: ast.List) -> Any:
        return sandbox.charge_built(self._elements(node.elts), self.budget)

    def _eval_tuple(self, node: ast.Tuple) -> Any:
        return sandbox.charge_built(tuple(self._elements(node.elts)), self.budget)

    def _eval_set(self, node: ast.Set) -> Any:
        result = set()
        for e in node.elts:  # each element hashed as soon as it is evaluated, as Python does
            if isinstance(e, ast.Starred):
                raise FeatureNotAvailable("*unpacking is not available")
            result.add(self._eval(e))
        return sandbox.charge_built(result, self.budget)

    def _eval_dict(self, node: ast.Dict) -> Any:
        result = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                raise FeatureNotAvailable("**unpacking is not available")
            key = self._eval(k)
            result[key] = self._eval(v)
        return sandbox.charge_built(result, self.budget)

    def _eval_joinedstr(self, node: ast.JoinedStr) -> str:
        def parts() -> Iterator[str]:  # one at a time: join_texts stops at the first too many
            for value in node.values:
                if isinstance(value, ast.FormattedValue):
                    if value.format_spec is not None or value.conversion != -1:
                        raise FeatureNotAvailable("format specs and conversions are not available")
                    yield sandbox.to_text(self._eval(value.value), self.budget)
                else:
                    yield self._eval(value)

        return sandbox.join_texts(parts(), self.budget)

    # -- comprehensions --------------------------------------------------------------------
    def _assign(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.bound[target.id] = value
            return
        if not isinstance(target, ast.Tuple):
            raise FeatureNotAvailable("loop variables must be names or tuples of names")
        if not isinstance(value, list | tuple) or len(value) != len(target.elts):
            raise EvaluationError(f"cannot unpack a {type(value).__name__} into {len(target.elts)} names")
        for t, v in zip(target.elts, value, strict=True):
            self._assign(t, v)

    def _eval_comprehension(self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp) -> Any:
        outer = self.bound
        self.bound = dict(outer)
        results: list[Any] = []
        pairs: dict[Any, Any] = {}

        def run(level: int) -> None:
            gen = node.generators[level]
            for item in sandbox.sized_iterable(self._eval(gen.iter), self.budget):
                self.budget.charge()
                self._assign(gen.target, item)
                if not all(self._eval(c) for c in gen.ifs):
                    continue
                if level + 1 < len(node.generators):
                    run(level + 1)
                elif isinstance(node, ast.DictComp):
                    key = self._eval(node.key)
                    pairs[key] = sandbox.charge_built(self._eval(node.value), self.budget)
                else:
                    results.append(sandbox.charge_built(self._eval(node.elt), self.budget))
                if len(results) + len(pairs) > sandbox.MAX_COLLECTION_LENGTH:
                    raise LimitError(f"comprehension builds more than {sandbox.MAX_COLLECTION_LENGTH} items")

        try:
            run(0)
        finally:
            self.bound = outer
        if isinstance(node, ast.DictComp):
            return pairs
        if isinstance(node, ast.SetComp):
            return set(results)
        return results


def evaluate(
    tree: ast.expr, names: Mapping[str, Any], budget: Budget, state: StateReader = UNAVAILABLE
) -> Any:
    """Evaluate a validated expression tree with a fresh ReferenceEvaluator."""
    return ReferenceEvaluator(names, budget, state).evaluate(tree)


def request_names(
    op: Op, content: dict[str, Any], *, data: dict[str, Any], reqid: str = "", now: int = 0
) -> dict[str, Any]:
    """The names every rule of one request sees, built in full (the fast path builds them lazily).

    `content` is the op's schema view of the request; `user` is `content.user` for every op but
    Login, where it is built from the login's own user, metas and run_id fields.
    """
    if op is Op.LOGIN:
        raw_user: Any = {k: content.get(k) for k in ("user", "metas", "run_id")}
    else:
        raw_user = content.get("user")
    return {
        "op": op.value,
        "content": view(SCHEMAS[op], content),
        "user": view(USER, raw_user if isinstance(raw_user, dict) else None),
        "data": data,
        "reqid": reqid,
        "now": now,
    }
