"""The compile stage: parsed rules (policyd.rules.language) validated and compiled into Statements.

A Statement carries what both back ends run: each expression as closures (policyd.rules.compiler)
and as source for the rule file's program (policyd.rules.codegen, policyd.rules.program).
`compile_rules` does a whole file: names resolved against the op's schema, the lets above each
rule and the data files, with every error collected; a rule unchanged since the previous load is
reused instead of compiled again.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policyd.errors import (
    EvaluationError,
    InternalError,
    LoadLimitError,
    Location,
    ParseError,
    PolicyError,
    ValidationError,
    did_you_mean,
)
from policyd.rules.codegen import Fragment, emit
from policyd.rules.compiler import ExpressionCompiler
from policyd.rules.context import BUILTIN_NAMES, CONSTANTS, Compiled, Ctx, Scope
from policyd.rules.decision import Part
from policyd.rules.functions import FUNCTIONS
from policyd.rules.language import (
    Action,
    Expression,
    Key,
    Line,
    ParsedRule,
    hidden_characters,
    logical_lines,
    parse_rule,
)
from policyd.rules.reads import NO_READS, FieldRead, Reads, reads_of, union
from policyd.rules.sandbox import MAX_FILE_RULES, MAX_POLICY_NODES, join_texts, to_text
from policyd.rules.schema import Field, Kind, field_of_other_ops, type_matches
from policyd.rules.statefns import STATE_FUNCTIONS

# Characters of a rule's id: a hash of its text, so it names the rule wherever the rule moves.
RULE_ID_CHARS = 12


@dataclass(frozen=True, slots=True)
class Template:
    """A reason/message string whose `{expr}` parts are evaluated like an f-string's.

    `kinds` says of each part what masking may do with it (policyd.rules.secrets); `reads` are
    the fields and lets each `{expr}` part reads (NO_READS for text).
    """

    parts: tuple[str | Compiled, ...]
    kinds: tuple[Part, ...] = ()
    reads: tuple[Reads, ...] = ()

    def render(self, ctx: Ctx) -> str:
        return self.render_parts(ctx)[0]

    def render_parts(self, ctx: Ctx) -> tuple[str, list[str]]:
        """The text, and its parts as rendered (the text is refused as soon as it is too long),
        charged to the request's budget as an f-string is."""
        rendered: list[str] = []
        budget = ctx.budget

        def each() -> Iterator[str]:
            for p in self.parts:
                text = p if isinstance(p, str) else to_text(p(ctx), budget)
                rendered.append(text)
                yield text

        return join_texts(each(), budget), rendered


# What a compiled rule depends on besides its text: (op, lets above it, data file names, text).
CacheKey = tuple[str, frozenset[str], frozenset[str], str]


@dataclass(frozen=True, slots=True)
class Statement:
    """One compiled rule. `path` is the set target below `content` or the let name."""

    action: Action
    location: Location
    source: str
    condition: Compiled | None = None
    message: Template | None = None
    value: Compiled | None = None
    path: tuple[str, ...] = ()
    field: Field | None = None
    # The condition and value as source for the rule file's program (policyd.rules.program).
    condition_code: Fragment | None = None
    value_code: Fragment | None = None
    # What the condition, value and message read (lets unresolved), and after `resolve_lets`
    # the request fields read in all, lets included: the decision log shows their values.
    direct: Reads = NO_READS
    reads: tuple[FieldRead, ...] = ()
    rule_id: str = ""  # a short hash of the rule's text: the same rule wherever it moves
    # The state functions it calls (policyd.rules.statefns); whether it asks proxies() or
    # sessions() about anyone but the request's own user.
    state_functions: frozenset[str] = frozenset()
    reads_other_users: bool = False
    cost: int = 0  # AST nodes of its expressions: what it costs to load (PolicyBudget)


def rule_id(source: str) -> str:
    """The id of a rule's text: whitespace runs count as one space."""
    normal = " ".join(source.split())
    return hashlib.sha256(normal.encode()).hexdigest()[:RULE_ID_CHARS]


def resolve_lets(statements: Sequence[Statement]) -> list[Statement]:
    """Each statement with the request fields it reads in all, through the lets above it, and
    its message's parts that read a credential field marked SECRET (policyd.rules.secrets)."""
    let_fields: dict[str, frozenset[FieldRead]] = {}
    out = []
    for s in statements:
        fields = s.direct.resolved(let_fields)
        if s.action is Action.LET:
            let_fields[s.path[0]] = fields
        message = s.message
        if message is not None:
            kinds = tuple(
                Part.SECRET if kind is Part.VALUE and any(f.secret for f in r.resolved(let_fields)) else kind
                for kind, r in zip(message.kinds, message.reads, strict=True)
            )
            if kinds != message.kinds:
                message = dataclasses.replace(message, kinds=kinds)
        out.append(dataclasses.replace(s, reads=tuple(sorted(fields)), message=message))
    return out


@dataclass(slots=True)
class _StateUse:
    """The state functions one rule calls, gathered from each expression's compiler."""

    functions: set[str] = dataclasses.field(default_factory=set)
    reads_other_users: bool = False

    def add(self, compiler: ExpressionCompiler) -> None:
        self.functions |= compiler.state_functions
        self.reads_other_users = self.reads_other_users or compiler.reads_other_users


@dataclass
class PolicyBudget:
    """What the rule files of one policy may still cost to load, shared by their compile_rules.

    Per-rule and per-file limits alone let six files of 2,000 rules x 500 nodes take minutes
    and gigabytes to load; the policy's expressions share MAX_POLICY_NODES.
    """

    nodes_left: int = dataclasses.field(default_factory=lambda: MAX_POLICY_NODES)
    exhausted: bool = False


def rule_cost(rule: ParsedRule) -> int:
    """The AST nodes of a rule's expressions (condition, value, the `{...}` of its message)."""
    parts = [rule.condition, rule.value, *(p for p in rule.message or () if not isinstance(p, str))]
    return sum(sum(1 for _ in ast.walk(e.tree)) for e in parts if e is not None)


def _expression(expression: Expression, scope: Scope, use: _StateUse) -> tuple[Compiled, Fragment]:
    """The expression's closure and its source for the rule file's program."""
    compiler = ExpressionCompiler(scope, expression.locate, record=True)
    compiled = compiler.compile(expression.tree)
    use.add(compiler)
    return compiled, emit(expression.tree, compiler)


def _condition(rule: ParsedRule, scope: Scope, use: _StateUse) -> tuple[Compiled | None, Fragment | None]:
    return (None, None) if rule.condition is None else _expression(rule.condition, scope, use)


def _template(parts: tuple[str | Expression, ...], scope: Scope, use: _StateUse) -> Template:
    compiled: list[str | Compiled] = []
    for p in parts:
        if isinstance(p, str):
            compiled.append(p)
            continue
        compiler = ExpressionCompiler(scope, p.locate)
        compiled.append(compiler.compile(p.tree))
        use.add(compiler)
    return Template(
        tuple(compiled),
        tuple(Part.TEXT if isinstance(p, str) else Part.VALUE for p in parts),
        tuple(NO_READS if isinstance(p, str) else reads_of(p.tree, scope) for p in parts),
    )


def _reads(rule: ParsedRule, scope: Scope, message: Template | None) -> Reads:
    """What the rule's condition, value and message read directly."""
    trees = [e.tree for e in (rule.condition, rule.value) if e is not None]
    return union([*(reads_of(t, scope) for t in trees), *(message.reads if message else ())])


def _set_target(keys: tuple[Key, ...], scope: Scope) -> tuple[tuple[str, ...], Field]:
    """The `set` path checked against the op's schema, and the field it ends at."""
    path: list[str] = []
    f = scope.op_schema
    for key in keys:
        name = key.name
        if f.kind is Kind.RECORD:
            if name not in f.fields:
                where = "content." + ".".join(path) if path else "content"
                hint = did_you_mean(name, f.fields) or ("" if path else field_of_other_ops(name))
                raise ParseError(f"'{where}' has no field '{name}' in {scope.op}", key.location, hint=hint)
            f = f.fields[name]
        elif f.kind is Kind.STR_MAP:
            f = Field(Kind.STR)
        else:
            raise ParseError(f"'content.{'.'.join(path)}' is a {f.kind.value}; set it whole", key.location)
        if name.startswith("_"):
            raise ParseError(f"'{name}' is private", key.location)
        path.append(name)
    return tuple(path), f


def _constant(node: ast.expr) -> tuple[bool, object]:
    """(True, value) for a literal written in the rule (`"x"`, `-1`, `["a", "b"]`, `{"k": "v"}`)."""
    if isinstance(node, ast.Constant):
        return True, node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        ok, value = _constant(node.operand)
        if ok and isinstance(value, int | float) and not isinstance(value, bool):
            return True, -value if isinstance(node.op, ast.USub) else value
        return False, None
    if isinstance(node, ast.List | ast.Tuple):
        items = [_constant(e) for e in node.elts]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = [_constant(k) for k in node.keys if k is not None]
        values = [_constant(v) for v in node.values]
        ok = all(k for k, _ in keys) and all(v for v, _ in values)
        return ok, dict(zip((k for _, k in keys), (v for _, v in values), strict=True)) if ok else None
    return False, None


def _value_phrase(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number with a fraction"}
    names |= {list: "a list", dict: "a map", type(None): "None"}
    return names.get(type(value), f"a {type(value).__name__}")


def _check_set_constant(value: Expression, f: Field, path: tuple[str, ...]) -> None:
    """A `set` of a literal frps could not take is a load error, not an error on every request."""
    ok, constant = _constant(value.tree)
    if not ok or type_matches(f, constant):
        return
    target = "content." + ".".join(path)
    hint = ""
    if f.kind is Kind.INT and isinstance(constant, str) and constant.strip().lstrip("-").isdigit():
        hint = f"write the number without quotes: {constant.strip()}"
    elif f.kind is Kind.STR and isinstance(constant, int | float) and not isinstance(constant, bool):
        hint = f'put it in quotes: "{constant}"'
    elif f.kind is Kind.BOOL and isinstance(constant, str) and constant.lower() in ("true", "false"):
        hint = f"write {constant.capitalize()} without quotes"
    raise ValidationError(
        f"{target} is {f.kind.phrase}; this value is {_value_phrase(constant)}",
        value.locate(value.tree.lineno, value.tree.col_offset),
        hint=hint,
    )


def _check_at_load(rule: ParsedRule) -> None:
    """What the language refuses that the compiler would let through to fail on every request:
    `%`-formatting of a string literal, a constant `range()` with step 0."""
    parts = [rule.condition, rule.value, *(p for p in rule.message or () if not isinstance(p, str))]
    for expression in parts:
        if expression is None:
            continue
        for node in ast.walk(expression.tree):
            where = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mod)
                and (
                    isinstance(node.left, ast.JoinedStr)
                    or (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str))
                )
            ):
                raise ValidationError(
                    "%-formatting is not available in rules",
                    expression.locate(*where),
                    hint='use a template, reject "port {content.remote_port}", or an f-string',
                )
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "range"
                and len(node.args) == 3
                and isinstance(node.args[2], ast.Constant)
                and node.args[2].value == 0
                and not isinstance(node.args[2].value, bool)
            ):
                raise ValidationError(
                    "range() step must not be zero",
                    expression.locate(node.args[2].lineno, node.args[2].col_offset),
                )


def _let_name(key: Key) -> str:
    name = key.name
    if name in BUILTIN_NAMES or name in CONSTANTS or name in FUNCTIONS or name in STATE_FUNCTIONS:
        raise ParseError(f"'{name}' is a built-in name and cannot be redefined", key.location)
    if name == "when":
        raise ParseError(f"'{name}' is a built-in name and cannot be redefined", key.location)
    if name.startswith("_"):
        raise ParseError("names starting with '_' are not available in rules", key.location)
    return name


def compile_rule(rule: ParsedRule, scope: Scope) -> Statement:
    """Validate one parsed rule against `scope` and compile it; raise the first PolicyError."""
    use = _StateUse()
    statement = _compile_rule(rule, scope, use)
    reads = _reads(rule, scope, statement.message)
    return dataclasses.replace(
        statement,
        direct=reads,
        rule_id=rule_id(rule.source),
        cost=rule_cost(rule),
        state_functions=frozenset(use.functions),
        reads_other_users=use.reads_other_users,
    )


def _compile_rule(rule: ParsedRule, scope: Scope, use: _StateUse) -> Statement:
    _check_at_load(rule)
    action, location, source = rule.action, rule.location, rule.source
    if action is Action.LET:
        name = _let_name(rule.target[0])
        assert rule.value is not None
        value, code = _expression(rule.value, scope, use)
        return Statement(action, location, source, value=value, value_code=code, path=(name,))
    if action is Action.REJECT or action is Action.WARN:
        assert rule.message is not None
        message = _template(rule.message, scope, use)
        cond, cond_code = _condition(rule, scope, use)
        return Statement(action, location, source, cond, message=message, condition_code=cond_code)
    if action is Action.ALLOW:
        cond, cond_code = _condition(rule, scope, use)
        return Statement(action, location, source, cond, condition_code=cond_code)
    path, f = _set_target(rule.target, scope)
    assert rule.value is not None
    _check_set_constant(rule.value, f, path)
    value, code = _expression(rule.value, scope, use)
    cond, cond_code = _condition(rule, scope, use)
    return Statement(
        action,
        location,
        source,
        cond,
        value=value,
        path=path,
        field=f,
        condition_code=cond_code,
        value_code=code,
    )


def compile_rules(
    path: str,
    source: str,
    scope: Scope,
    errors: list[PolicyError],
    pause: Callable[[], None] | None = None,
    reuse: Mapping[CacheKey, Statement] | None = None,
    keep: dict[CacheKey, Statement] | None = None,
    budget: PolicyBudget | None = None,
) -> list[Statement]:
    """Compile a rule file; every error found goes to `errors` (the file is bad if any).

    Every rule is checked, so that a load can say how many errors it found beyond those it
    reports (errors.MAX_LOAD_ERRORS). Every error is located (at least `file:line`), whatever
    raised it: nothing a rule file holds can make a load fail any other way.

    A file with characters that hide text (language.hidden_characters) is not compiled: what
    runs must be what its readers see. `pause` is called between rules: a reload in a
    background thread uses it to let the serving thread have the GIL while thousands of rules
    compile. A rule found in `reuse` (the previous load's `keep`) under the same text, op, lets
    above it and data files is not compiled again, only moved to its new line: an edit
    recompiles the lines it changed. `budget` is shared by the files of one policy.
    """
    hidden = hidden_characters(path, source)
    if hidden:
        errors.extend(hidden)
        return []
    if budget is not None and budget.exhausted:
        return []
    statements: list[Statement] = []
    lets: set[str] = set()
    for count, line in enumerate(logical_lines(source), 1):
        where = Location(path, line.line)
        if count > MAX_FILE_RULES:
            errors.append(ParseError(f"more than {MAX_FILE_RULES} rules in one file", where))
            break
        key = (scope.op, frozenset(lets), scope.data_names, line.text)
        cached = reuse.get(key) if reuse is not None else None
        if cached is not None:
            if not _spend(budget, cached.cost, where, errors):
                break
            statement = dataclasses.replace(
                cached, location=Location(path, line.line, cached.location.column)
            )
            if keep is not None:
                keep[key] = statement
            if statement.action is Action.LET:
                lets.add(statement.path[0])
            statements.append(statement)
            continue
        if pause is not None:
            pause()
        try:
            statement = compile_rule(parse_rule(path, line), _with_lets(scope, lets))
        except Exception as e:  # every failure of a rule is an error of that rule
            errors.append(_located(e, where))
            _define_broken_let(line, lets)
            continue
        if not _spend(budget, statement.cost, where, errors):
            break
        if keep is not None:
            keep[key] = statement
        if statement.action is Action.LET:
            lets.add(statement.path[0])
        statements.append(statement)
    return resolve_lets(statements)


def _spend(budget: PolicyBudget | None, cost: int, where: Location, errors: list[PolicyError]) -> bool:
    """Charge a rule's cost to the policy's budget; False (and the error) once it is spent."""
    if budget is None:
        return True
    budget.nodes_left -= cost
    if budget.nodes_left >= 0:
        return True
    budget.exhausted = True
    errors.append(
        LoadLimitError(
            f"the rule files hold more than {MAX_POLICY_NODES:,} expression parts together; "
            "this rule passes that limit, so loading stops here",
            where,
            hint="keep long per-user lists in a data file: `reject ... when user.user in data.bans.users`",
        )
    )
    return False


def _located(error: Exception, where: Location) -> PolicyError:
    """Any failure of one rule as a load error located at the rule (at least its line)."""
    if isinstance(error, EvaluationError):
        # Raised by work done once at load time (a constant range built, a literal checked):
        # an error of the rule as written, not of a request.
        return ValidationError(error.message, error.location or where, hint=error.hint)
    if isinstance(error, PolicyError):
        error.at(where)
        return error
    return InternalError(
        f"policyd failed to compile this rule: {type(error).__name__}: {error}",
        where,
        hint="a bug in policyd; please report it with this rule",
    )


def _define_broken_let(line: Line, lets: set[str]) -> None:
    """Keep later lines from cascading into "unknown name" for a broken `let`."""
    head = line.text.split(None, 2)
    if len(head) >= 2 and head[0] == "let":
        lets.add(head[1].rstrip("="))


def _with_lets(scope: Scope, lets: set[str]) -> Scope:
    return dataclasses.replace(scope, lets=frozenset(lets))
