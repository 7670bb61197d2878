"""The compile stage: parsed rules (policyd.rules.language) validated and compiled into Statements.

A Statement carries what both back ends run: each expression as closures (policyd.rules.compiler)
and as source for the rule file's program (policyd.rules.codegen, policyd.rules.program).
`compile_rules` does a whole file: names resolved against the op's schema, the lets above each
rule and the data files, with every error collected; a rule unchanged since the previous load is
reused instead of compiled again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policyd.errors import Location, ParseError, PolicyError, did_you_mean
from policyd.rules.codegen import Fragment, emit
from policyd.rules.compiler import ExpressionCompiler
from policyd.rules.context import BUILTIN_NAMES, CONSTANTS, Compiled, Ctx, Scope
from policyd.rules.decision import Part
from policyd.rules.functions import FUNCTIONS
from policyd.rules.language import Action, Expression, Key, ParsedRule, logical_lines, parse_rule
from policyd.rules.reads import NO_READS, FieldRead, Reads, reads_of, union
from policyd.rules.sandbox import MAX_FILE_RULES, join_texts, to_text
from policyd.rules.schema import Field, Kind, field_of_other_ops
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
        return join_texts(p if isinstance(p, str) else to_text(p(ctx)) for p in self.parts)

    def render_parts(self, ctx: Ctx) -> tuple[str, list[str]]:
        """The text, and its parts as rendered (the text is refused as soon as it is too long)."""
        rendered: list[str] = []

        def each() -> Iterator[str]:
            for p in self.parts:
                text = p if isinstance(p, str) else to_text(p(ctx))
                rendered.append(text)
                yield text

        return join_texts(each()), rendered


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
        state_functions=frozenset(use.functions),
        reads_other_users=use.reads_other_users,
    )


def _compile_rule(rule: ParsedRule, scope: Scope, use: _StateUse) -> Statement:
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
) -> list[Statement]:
    """Compile a rule file; every error found goes to `errors` (the file is bad if any).

    Every rule is checked, so that a load can say how many errors it found beyond those it
    reports (errors.MAX_LOAD_ERRORS).

    `pause` is called between rules: a reload in a background thread uses it to let the
    serving thread have the GIL while thousands of rules compile. A rule found in `reuse` (the
    previous load's `keep`) under the same text, op, lets above it and data files is not
    compiled again, only moved to its new line: an edit recompiles the lines it changed.
    """
    statements: list[Statement] = []
    lets: set[str] = set()
    for count, line in enumerate(logical_lines(source), 1):
        if count > MAX_FILE_RULES:
            errors.append(
                ParseError(f"more than {MAX_FILE_RULES} rules in one file", Location(path, line.line))
            )
            break
        key = (scope.op, frozenset(lets), scope.data_names, line.text)
        cached = reuse.get(key) if reuse is not None else None
        if cached is not None:
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
        except PolicyError as e:
            errors.append(e)
            # Keep later lines from cascading into "unknown name" for a broken `let`.
            head = line.text.split(None, 2)
            if len(head) >= 2 and head[0] == "let":
                lets.add(head[1].rstrip("="))
            continue
        if keep is not None:
            keep[key] = statement
        if statement.action is Action.LET:
            lets.add(statement.path[0])
        statements.append(statement)
    return resolve_lets(statements)


def _with_lets(scope: Scope, lets: set[str]) -> Scope:
    return dataclasses.replace(scope, lets=frozenset(lets))
