"""Deciding one request: the front door the service and every CLI verb call.

`decide(policy, op, content)` runs the op's rules top to bottom against one request and returns
a Decision. It never raises for a rule's own failure: an evaluation error becomes a fail-closed
reject (or a counted fail-open allow, for ops the operator chose) with the error attached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from policyd.errors import EvaluationError, PolicyError, StateError
from policyd.policy import TRACKING_FUNCTIONS, Policy, RuleFile
from policyd.rules.context import Ctx, RequestNames
from policyd.rules.decision import (
    GENERIC_ERROR_REASON,
    Change,
    Decision,
    Op,
    Outcome,
    RuleWarning,
    TraceStep,
)
from policyd.rules.language import Action
from policyd.rules.program import RuleFailed
from policyd.rules.sandbox import DEFAULT_EVAL_SECONDS, MAX_STEPS, Budget, deep_size, error_text, shown
from policyd.rules.schema import (
    GO_INT_MAX,
    GO_INT_MIN,
    SCHEMAS,
    USER,
    Field,
    Kind,
    Record,
    ZeroMap,
    type_matches,
    view,
)
from policyd.rules.statefns import UNAVAILABLE, StateReader
from policyd.rules.statements import Statement
from policyd.state.backend import Backend, Failure, Held, StateUnavailable
from policyd.state.tracking import UserState, effects, request_identity, request_user
from policyd.state.view import DecisionState, UsersWanted


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """Per-service settings that change how decisions are made."""

    fail_open_ops: Collection[Op] = frozenset()
    max_steps: int = MAX_STEPS
    eval_seconds: float = DEFAULT_EVAL_SECONDS


DEFAULT_OPTIONS = EvalOptions()
# The enum members decide() tests on every request, as globals: Python 3.11 looks a member up
# through EnumType.__getattr__ (~100 ns; a global is ~10 ns).
_LOGIN, _NEW_PROXY = Op.LOGIN, Op.NEW_PROXY
_ALLOW, _REJECT, _REWRITE = Outcome.ALLOW, Outcome.REJECT, Outcome.REWRITE
_REJECT_ACTION = Action.REJECT
_STR, _BOOL, _RECORD = Kind.STR, Kind.BOOL, Kind.RECORD
# Ops whose record a rule's reads must not race: a Login starts a session, a NewProxy a proxy.
_LOCKED_OPS = frozenset({Op.LOGIN, Op.NEW_PROXY})


@dataclass(frozen=True, slots=True)
class StateBinding:
    """The state decisions read and record: the backend, whether they record (False: the view
    for `policyd eval`, a shadow policy, a replay: nothing changes, rate() does not count), and
    what a rule gets when the backend cannot answer."""

    backend: Backend
    recording: bool = True
    failure: Failure = Failure.CLOSED
    # Decide as if the backend were down, without asking it (the service's answer when too
    # many decisions already wait on it): state functions fail as `failure` says, nothing records.
    offline: bool = False


def _raw_user(op: Op, content: dict[str, Any]) -> dict[str, Any] | None:
    """What the `user` view is made of: the login's own fields for Login, else content.user."""
    if op is _LOGIN:
        return {"user": content.get("user"), "metas": content.get("metas"), "run_id": content.get("run_id")}
    user = content.get("user")
    return user if isinstance(user, dict) else None


def new_context(
    op: Op,
    content: dict[str, Any],
    *,
    data: dict[str, Any],
    budget: Budget,
    reqid: str = "",
    now: float | None = None,
    state: StateReader = UNAVAILABLE,
) -> Ctx:
    """The evaluation context decide() gives one request's rules (tools and tests use it too).

    Rules see the names `reference.request_names()` defines; the `content` and `user` views are
    built only if a rule uses them whole (field reads come from the raw request).
    """
    if op is _LOGIN:
        user_raw = _raw_user(op, content)
    else:  # _raw_user, inline: every decision makes a context
        user_raw = content.get("user")
        if type(user_raw) is not dict:
            user_raw = user_raw if isinstance(user_raw, dict) else None
    names = RequestNames(
        {"op": op._value_, "data": data, "reqid": reqid, "now": int(time.time() if now is None else now)},
        SCHEMAS[op],
        content,
        USER,
        user_raw,
    )
    return Ctx(names, budget, None, state)


def _apply_set(work: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set content[path] in `work`, copying nested dicts on the way so the request stays intact."""
    node = work
    for key in path[:-1]:
        child = node.get(key)
        child = dict(child) if isinstance(child, dict) else {}
        node[key] = child
        node = child
    node[path[-1]] = value


def _view_at(f: Field, value: Any, path: tuple[str, ...]) -> Any:
    """What `view(f, value)` holds at a `set` path (record fields, then maybe one map key).

    A step into something that is not an object reads None, as the old value of a change.
    """
    for key in path:
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            return None
        if f.kind is _RECORD:
            f = f.fields[key]
            value = value.get(key)
        else:  # a key of a metas-like map, the last step of a set path
            return value.get(key, "")
    return view(f, value)


def _same(before: Any, after: Any) -> bool:
    if isinstance(before, dict):
        return isinstance(after, dict) and before == after
    return type(before) is type(after) and before == after


_VIEWS = (ZeroMap, Record)  # a tuple: a `|` union is built anew on every isinstance() call


def _check_type(statement: Statement, value: Any) -> Any:
    f: Field | None = statement.field
    if isinstance(value, tuple):
        value = list(value)
    elif isinstance(value, _VIEWS):
        value = dict(value)
    if f is not None and not type_matches(f, value):
        where = f"content.{'.'.join(statement.path)}"
        if f.kind is Kind.INT and isinstance(value, int) and not isinstance(value, bool):
            raise EvaluationError(
                f"{where} must fit frps's Go {f.go_type.value} ({GO_INT_MIN} to {GO_INT_MAX}), "
                f"not {shown(value)}"
            )
        raise EvaluationError(f"{where} must be {f.kind.phrase}, not {type(value).__name__} ({shown(value)})")
    return value


def _warn(decision: Decision, ctx: Ctx, statement: Statement) -> None:
    """A warn rule that fired: its message, rendered now (later sets must not change it)."""
    message = statement.message
    assert message is not None
    text, parts = message.render_parts(ctx)
    decision.warnings.append(RuleWarning(text, statement.location, parts, message.kinds))


def _set(decision: Decision, ctx: Ctx, statement: Statement, value: Any) -> Any:
    """A set rule that fired: the value checked against the field, the change made on a copy of
    the request (kept in `decision.content` until decide() ends) and recorded. Returns the value.

    Charged before the work: the value's walk (checking, comparing and copying it), and each map
    on the path, which is copied and later read again as a view."""
    names = ctx.names
    assert isinstance(names, RequestNames)
    f = statement.field
    kind = type(value)
    # A string or a boolean set to a field of its kind (most sets): nothing to walk or convert.
    plain = f is not None and ((kind is str and f.kind is _STR) or (kind is bool and f.kind is _BOOL))
    if not plain:
        deep_size(value, ctx.budget)
    current = names.content_raw
    path = statement.path
    if len(path) > 1:
        node: Any = current
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                ctx.budget.charge(2 * len(node), "copying a map")
    if not plain:
        value = _check_type(statement, value)
    before = _view_at(SCHEMAS[decision.op], current, path)
    if (type(before) is kind and before == value) if plain else _same(before, value):
        return value
    work = decision.content
    if work is None:
        work = decision.content = dict(current)
    _apply_set(work, statement.path, value)
    decision.changes.append(Change(".".join(statement.path), before, value))
    # `user` is made of the login's own fields, or of content.user: only a set there changes it
    # (the copy in `work` shares every other nested dict with the request).
    changes_user = decision.op is _LOGIN or statement.path[0] == "user"
    names.replace_request(work, _raw_user(decision.op, work) if changes_user else names.user_raw)
    return value


def _interpret(
    statements: tuple[Statement, ...],
    ctx: Ctx,
    names: RequestNames,
    decision: Decision,
    trace: list[TraceStep] | None,
) -> int:
    """The rules run one by one, each step recorded in `trace`: what `policyd eval` explains, and
    what the rule file's program (policyd.rules.program) does in one function per chunk.

    Returns the index of the reject/allow rule that decided, or -1; a rule's failure is raised
    as RuleFailed with its index.
    """
    budget = ctx.budget
    for index, statement in enumerate(statements):
        try:
            if index:
                budget.tick()
            condition = statement.condition
            if condition is not None:
                holds = condition(ctx)
                if trace is not None:
                    trace.append(
                        TraceStep(
                            statement.location,
                            statement.source,
                            statement.action.value,
                            holds,
                            None,
                            bool(holds),
                        )
                    )
                if not holds:
                    continue
            action = statement.action
            if action is Action.LET:
                assert statement.value is not None
                value = names[statement.path[0]] = statement.value(ctx)
                if trace is not None:
                    trace.append(
                        TraceStep(statement.location, statement.source, action.value, True, value, True)
                    )
                continue
            if condition is None and trace is not None:
                trace.append(TraceStep(statement.location, statement.source, action.value, True, None, True))
            if action is Action.REJECT or action is Action.ALLOW:
                return index
            if action is Action.WARN:
                _warn(decision, ctx, statement)
                continue
            assert statement.value is not None
            value = _set(decision, ctx, statement, statement.value(ctx))
            if trace is not None:
                trace[-1] = dataclasses.replace(trace[-1], value=value)
        except Exception as e:
            raise RuleFailed(index, e) from None
    return -1


def decide(
    policy: Policy,
    op: Op,
    content: dict[str, Any],
    *,
    reqid: str = "",
    now: float | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    trace: list[TraceStep] | None = None,
    state: StateBinding | None = None,
) -> Decision:
    """Decide one request with `policy`. `content` is not modified.

    The rules run as their rule file's program; with `trace` (a list) they run one by one
    instead, and every rule reached is appended to it with the values it computed. With
    `state`, the state functions read it and the decision's effect is recorded in it (see
    _decide_with_state); a rule file that calls no state function, under a policy that tracks
    nothing, pays nothing for it.
    """
    rule_file = policy.rules.get(op)
    if state is not None:
        reads = rule_file.state_functions if rule_file is not None else frozenset()
        if reads or (state.recording and policy.tracks_sessions):
            return _decide_with_state(
                policy, op, content, rule_file, reads, state, reqid, now, options, trace
            )
    return _decide(policy, op, content, rule_file, reqid, now, options, trace, UNAVAILABLE)


def _decide_with_state(
    policy: Policy,
    op: Op,
    content: dict[str, Any],
    rule_file: RuleFile | None,
    reads: frozenset[str],
    state: StateBinding,
    reqid: str,
    now: float | None,
    options: EvalOptions,
    trace: list[TraceStep] | None,
) -> Decision:
    """Decide and record, exactly under concurrency.

    A Login or NewProxy whose rules read proxies() or sessions() is decided under a lock: the
    user's own (its state is read with the lock, in one round trip), or every user's when some
    rule reads another user's state. With a remote backend, rules that ask about other users
    are first evaluated against an empty state to learn whom they ask about, and those users
    are read with the lock too: one round trip for every read, then one for the record. The
    effect is recorded before the lock is released, so no racing request reads the state
    before it. A backend that cannot answer (lock, read or record) is the configured failure:
    closed makes the op fail closed, and an allow whose record failed is refused (never allow
    what was not counted); open answers "empty" and goes on.
    """
    started = time.perf_counter()
    at = time.time() if now is None else now
    backend = state.backend
    user, run_id = request_identity(op, content)
    held: Held | None = None
    recording = state.recording and not state.offline
    prefetched: dict[str, UserState] | None = None
    try:
        wanted: tuple[str, ...] = (user,)
        if backend.remote and not state.offline and rule_file is not None and rule_file.reads_other_users:
            # Rules that ask about other users (a team's sum): a throwaway evaluation against an
            # empty state names them, so that one round trip reads them all (with the lock).
            names = UsersWanted()
            _decide(policy, op, content, rule_file, reqid, at, options, None, names)
            wanted += tuple(sorted(names.users - {user}))
        if recording and op in _LOCKED_OPS and reads and not reads.isdisjoint(TRACKING_FUNCTIONS):
            scope = "*" if policy.reads_other_users else "u:" + user
            try:
                held = backend.acquire(scope, wanted, at)
                prefetched = held.prefetched
            except StateUnavailable as e:
                backend.stats.failure(state.failure)
                if state.failure is Failure.CLOSED:
                    return _state_failed(policy, op, options, f"state lock unavailable: {e}", started)
        elif len(wanted) > 1:
            with contextlib.suppress(StateUnavailable):  # each read then fails as configured
                prefetched = backend.read_users(wanted, at)
        reader = DecisionState(
            backend,
            op,
            user,
            run_id,
            content.get("proxy_name", "") if op is _NEW_PROXY else "",
            at,
            recording,
            state.failure,
            prefetched,
            state.offline,
        )
        decision = _decide(policy, op, content, rule_file, reqid, at, options, trace, reader)
        if recording and policy.tracks_sessions:
            _record(
                backend,
                state,
                op,
                content if decision.content is None else decision.content,
                decision,
                at,
                held,
                bool(reads),
            )
    finally:
        if held is not None:
            backend.release(held)
    decision.eval_us = (time.perf_counter() - started) * 1e6
    return decision


def _record(
    backend: Backend,
    state: StateBinding,
    op: Op,
    final: dict[str, Any],
    decision: Decision,
    at: float,
    held: Held | None,
    read_state: bool,
) -> None:
    """Record what frps will do; a failed record of an allow that read state fails it closed."""
    allowed = decision.outcome is not _REJECT
    changes = effects(op, final, allowed, at)
    if not changes:
        return
    user = request_user(op, final)
    if changes[0].kind == "touch" and not backend.should_touch(user, changes[0].run_id, at):
        return
    try:
        backend.record(user, changes, at, held)
    except StateUnavailable as e:
        backend.stats.failure(state.failure)
        if read_state and state.failure is Failure.CLOSED and allowed:
            error = StateError(f"state record failed: {e}")
            if decision.rule is not None:
                error.at(decision.rule)
            decision.error = error
            decision.content = None
            decision.changes = []
            decision.failed_open = False
            decision.outcome = Outcome.REJECT
            decision.reason = GENERIC_ERROR_REASON


def _state_failed(policy: Policy, op: Op, options: EvalOptions, message: str, started: float) -> Decision:
    """The decision when the state backend failed before any rule ran (state failure closed)."""
    decision = Decision(Outcome.REJECT, op, policy.version, GENERIC_ERROR_REASON)
    decision.error = StateError(message)
    if op in options.fail_open_ops:
        decision.outcome = Outcome.ALLOW
        decision.failed_open = True
        decision.reason = ""
    decision.eval_us = (time.perf_counter() - started) * 1e6
    return decision


def _decide(
    policy: Policy,
    op: Op,
    content: dict[str, Any],
    rule_file: RuleFile | None,
    reqid: str,
    now: float | None,
    options: EvalOptions,
    trace: list[TraceStep] | None,
    state: StateReader,
) -> Decision:
    """decide() itself: the rules of `rule_file` against one request, state read through `state`."""
    started = time.perf_counter()
    decision = Decision(_ALLOW, op, policy.version)
    if rule_file is None:
        decision.eval_us = (time.perf_counter() - started) * 1e6
        return decision
    budget = Budget(options.max_steps, options.eval_seconds)
    ctx = new_context(op, content, data=policy.data, budget=budget, reqid=reqid, now=now, state=state)
    names = ctx.names
    assert isinstance(names, RequestNames)
    statements = rule_file.statements
    try:
        index = -1
        program = rule_file.program
        if trace is None and program is not None:
            if program:  # the first chunk runs the others (policyd.rules.program)
                index = program[0](ctx, names, decision, _warn, _set)
        else:
            index = _interpret(statements, ctx, names, decision, trace)
        if index >= 0:
            statement = statements[index]
            decision.rule = statement.location
            decision.statement = statement
            if statement.action is _REJECT_ACTION:
                message = statement.message
                assert message is not None
                decision.outcome = _REJECT
                try:
                    decision.reason, decision.reason_parts = message.render_parts(ctx)
                except Exception as e:
                    raise RuleFailed(index, e) from None
                decision.reason_kinds = message.kinds
    except RuleFailed as failed:  # a rule's failure must never escape as a 500
        cause = failed.error
        error = (
            cause
            if isinstance(cause, PolicyError)
            else EvaluationError(f"{type(cause).__name__}: {error_text(cause)}")
        )
        error.__traceback__ = None  # its frames would make the decision a reference cycle
        statement = statements[failed.index]
        error.at(statement.location)
        decision.error = error
        decision.rule = statement.location
        decision.statement = statement
        if op in options.fail_open_ops:
            decision.outcome = Outcome.ALLOW
            decision.failed_open = True
            decision.reason = ""
        else:
            decision.outcome = Outcome.REJECT
            decision.reason = GENERIC_ERROR_REASON
        decision.reason_parts = decision.reason_kinds = ()  # the generic reason: nothing to mask
    if decision.outcome is _REJECT or decision.error is not None:
        decision.changes = []  # nothing changes on a reject or an error
    if decision.changes:
        decision.outcome = _REWRITE
    else:
        decision.content = None
    decision.eval_us = (time.perf_counter() - started) * 1e6
    return decision


def fail_unencodable(decision: Decision, message: str, *, fail_open: bool) -> None:
    """Turn a decision whose answer cannot be sent into the rule error frps will see instead."""
    error = EvaluationError(message)
    if decision.rule is not None:
        error.at(decision.rule)
    decision.error = error
    decision.failed_open = fail_open
    decision.outcome = Outcome.ALLOW if fail_open else Outcome.REJECT
    decision.reason = "" if fail_open else GENERIC_ERROR_REASON
    decision.reason_parts = decision.reason_kinds = ()
    decision.content = None
    decision.changes = []
