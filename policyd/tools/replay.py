"""`policyd replay`: decide recorded requests again against a policy directory, and say which
answers would change. A deploy gate: exit 1 when any would.

Every request of the recordings (policyd.tools.recording) is decided with the directory's
policy as the service would have decided it then: its recorded time as `now`, its reqid, serve's
options. The live state of then (proxies(), sessions(), rate()) is not recorded: state functions
answer from an empty state, and record nothing (policyd.tools.rollout.decide_again); a request
whose answer differs and whose rules reached a state function is listed apart, as depending on
live state. The new answer is
compared with the recorded one as frps sees answers: outcome, reason, rewritten content.

Recordings hold secrets as keyed hashes. A rule comparing two secrets still decides the same (the
same secret has the same hash), but one comparing a secret with a value written in clear (a
token in a data file) cannot: such a request is reported as depending on a masked secret, with
the fields it read, and not counted as changed. It is found from the rules the new decision
reached: one that reads a credential field, or a map or object that can hold one, of a request
that carried a hashed value.
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from policyd.engine import DEFAULT_OPTIONS, EvalOptions, StateBinding
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Decision, Op, TraceStep
from policyd.rules.diagnostics import OutputFormat, counted, to_json
from policyd.rules.language import Action, ParsedRule, logical_lines, parse_rule
from policyd.rules.schema import SCHEMAS, USER, Field, Kind
from policyd.rules.secrets import is_secret_key, mask
from policyd.state.memory import MemoryBackend
from policyd.tools.recording import (
    RecordedRequest,
    RecordingError,
    RecordKey,
    Unreadable,
    hash_content,
    is_hashed,
    read_recordings,
)
from policyd.tools.rollout import decide_again, decided_by, verdict


class Replay(enum.StrEnum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    SECRET = "depends_on_secret"  # it differs, but a rule reached read a hashed secret
    STATE = "depends_on_state"  # it differs, but a rule reached asked the live state


@dataclass(frozen=True, slots=True)
class Replayed:
    """One request whose answer would not be the recorded one."""

    request: RecordedRequest
    result: Replay
    decision: Decision
    secret_reads: tuple[str, ...] = ()  # the credential fields the rules reached read
    state_calls: tuple[str, ...] = ()  # the state functions the rules reached call

    def to_dict(self) -> dict[str, Any]:
        r, d, old = self.request, self.decision, self.request.answer
        outcome, reason, _ = verdict(d)
        return {
            "where": r.where,
            "time": r.at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "reqid": r.reqid,
            "op": r.op.value,
            "user": request_user(r.op, r.content),
            "result": self.result.value,
            "old": {
                "outcome": old.get("outcome"),
                "reason": old.get("reason", ""),
                "rule": old.get("rule", ""),
                "policy_version": old.get("policy_version", ""),
            },
            "new": {"outcome": outcome, "reason": reason, "rule": d.rule.rule if d.rule else ""},
            "secret_reads": list(self.secret_reads),
            "state_calls": list(self.state_calls),
        }


@dataclass
class ReplayReport:
    policy_version: str
    requests: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Replay})
    replayed: list[Replayed] = field(default_factory=list)  # every request not unchanged
    unreadable: list[Unreadable] = field(default_factory=list)
    keyless: bool = False  # compared without the key: secret values set by rules not compared
    same_files: int = 0  # unchanged without deciding: the op's files are the recorded ones

    @property
    def bad_input(self) -> bool:
        """Lines that cannot be read, other than a file's last (a write cut short), or no request."""
        return any(not u.last for u in self.unreadable) or self.requests == 0

    @property
    def exit_code(self) -> int:
        if self.bad_input:
            return 2
        return 1 if self.counts[Replay.CHANGED.value] else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "requests": self.requests,
            **self.counts,
            "unchanged_same_files": self.same_files,
            "compared_without_key": self.keyless,
            "unreadable": [{"where": u.where, "message": u.message} for u in self.unreadable],
            "changes": [r.to_dict() for r in self.replayed],
        }


def request_user(op: Op, content: Mapping[str, Any]) -> str:
    """Who asked: the login's user, or content.user.user (as the decision log names them)."""
    user = content.get("user")
    if op is not Op.LOGIN:
        user = user.get("user") if isinstance(user, dict) else ""
    return user if isinstance(user, str) else ""


# -- which rules read a secret ---------------------------------------------------------------
def _holds_secret(f: Field) -> bool:
    """Whether a value of this field can hold a credential: a map (its keys are the client's),
    or an object with a credential field somewhere inside."""
    if f.kind is Kind.STR_MAP:
        return True
    if f.kind is Kind.RECORD:
        return any(is_secret_key(name) or _holds_secret(child) for name, child in f.fields.items())
    return False


class _SecretReads(ast.NodeVisitor):
    """The credential fields an expression may read: a field or key named like a credential,
    or a map or object that can hold one used whole (iterated, passed, `.get()`), or a let
    whose value read one. Errs towards "reads": a wrong "reads" costs a note, a wrong "does
    not" a silent difference."""

    def __init__(self, schemas: Mapping[str, Field], tainted: Mapping[str, tuple[str, ...]]) -> None:
        self.schemas = schemas
        self.tainted = tainted
        self.found: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.schemas:  # `content` or `user` used whole
            self.found.append(node.id)
        elif node.id in self.tainted:
            self.found.extend(self.tainted[node.id])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._chain(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._chain(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute):  # a method: its receiver is used whole
            self._chain(node.func.value)
        else:
            self.visit(node.func)
        for argument in (*node.args, *(k.value for k in node.keywords)):
            self.visit(argument)

    def _chain(self, node: ast.expr) -> None:
        keys: list[str | None] = []  # None: a computed key
        inner: ast.expr = node
        while isinstance(inner, ast.Attribute | ast.Subscript):
            if isinstance(inner, ast.Attribute):
                keys.append(inner.attr)
            else:
                index = inner.slice
                constant = index.value if isinstance(index, ast.Constant) else None
                keys.append(constant if isinstance(constant, str) else None)
                self.visit(index)
            inner = inner.value
        if not (isinstance(inner, ast.Name) and inner.id in self.schemas):
            self.visit(inner)
            return
        if not keys:  # `content.x.startswith(...)` reaches here with the bare name
            self.visit(inner)
            return
        f: Field | None = self.schemas[inner.id]
        path = [inner.id]
        for key in reversed(keys):
            if f is None or f.kind not in (Kind.RECORD, Kind.STR_MAP):
                return  # past a string or a list: a method of the value read
            if key is None:
                if _holds_secret(f):
                    self.found.append(".".join(path) + "[...]")
                return
            path.append(key)
            if is_secret_key(key):
                self.found.append(".".join(path))
                return
            if f.kind is Kind.STR_MAP:
                f = Field(Kind.STR)
            elif key in f.fields:
                f = f.fields[key]
            else:  # a field outside the schema
                return
        if f is not None and _holds_secret(f):  # an object or map used whole
            self.found.append(".".join(path))


def _expressions(rule: ParsedRule) -> Iterator[ast.expr]:
    for expression in (rule.condition, rule.value):
        if expression is not None:
            yield expression.tree
    for part in rule.message or ():
        if not isinstance(part, str):
            yield part.tree


def secret_reads(policy: Policy, op: Op) -> dict[int, tuple[str, ...]]:
    """For each rule of the op's file (by line), the credential fields it may read."""
    rule_file = policy.rules.get(op)
    if rule_file is None:
        return {}
    source = policy.sources[rule_file.path].decode("utf-8")
    schemas = {"content": SCHEMAS[op], "user": USER}
    tainted: dict[str, tuple[str, ...]] = {}
    out: dict[int, tuple[str, ...]] = {}
    for line in logical_lines(source):
        rule = parse_rule(rule_file.path, line)  # it loaded: it parses
        finder = _SecretReads(schemas, tainted)
        for tree in _expressions(rule):
            finder.visit(tree)
        reads = tuple(dict.fromkeys(finder.found))
        if rule.action is Action.LET:
            tainted = {k: v for k, v in tainted.items() if k != rule.target[0].name}
            if reads:
                tainted[rule.target[0].name] = reads
        if reads:
            out[rule.location.line] = reads
    return out


# -- replaying -------------------------------------------------------------------------------
def _compared(value: Any, key: RecordKey | None) -> Any:
    """A content as the comparison sees it: secrets hashed with the key, or masked without."""
    if value is None:
        return None
    return hash_content(value, key) if key is not None else mask(value)


def _holds_hashed(value: Any, depth: int = 0) -> bool:
    if is_hashed(value):
        return True
    if depth > 16:
        return False
    if isinstance(value, dict):
        return any(_holds_hashed(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_holds_hashed(v, depth + 1) for v in value)
    return False


class _Replayer:
    def __init__(self, policy: Policy, key: RecordKey | None, options: EvalOptions) -> None:
        self.policy = policy
        self.key = key
        self.options = options
        # No live state here: state functions answer from an empty state, and record nothing.
        self.state = StateBinding(MemoryBackend(), recording=False)
        self._reads: dict[Op, dict[int, tuple[str, ...]]] = {}
        self._decided_by: dict[Op, str] = {}

    def same_files(self, request: RecordedRequest) -> bool:
        """Whether the op is decided from the same files as when it was recorded."""
        digest = self._decided_by.get(request.op)
        if digest is None:
            digest = self._decided_by[request.op] = decided_by(self.policy, request.op)
        return request.answer.get("decided_by") == digest

    def replay(self, request: RecordedRequest) -> Replayed | None:
        """None when the answer would be the recorded one."""
        now = request.at.timestamp()
        decision = self._decide(request, now)
        outcome, reason, content = verdict(decision)
        old = request.answer
        same_answer = (outcome, reason) == (old.get("outcome"), old.get("reason", ""))
        if same_answer and _compared(content, self.key) == _compared(old.get("content"), self.key):
            return None
        reads, calls = self._unknowable(request, now)
        result = Replay.SECRET if reads else Replay.STATE if calls else Replay.CHANGED
        return Replayed(request, result, decision, reads, calls)

    def _decide(self, request: RecordedRequest, now: float, trace: list[TraceStep] | None = None) -> Decision:
        return decide_again(
            self.policy,
            request.op,
            request.content,
            reqid=request.reqid,
            now=now,
            options=self.options,
            state=self.state,
            trace=trace,
        )

    def _unknowable(self, request: RecordedRequest, now: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What the rules this request reached depend on that the recording does not hold: the
        credential fields they read (when the request carried a hashed value) and the state
        functions they call."""
        rule_file = self.policy.rules.get(request.op)
        if rule_file is None:
            return (), ()
        hashed = _holds_hashed(request.content)
        if not hashed and not rule_file.state_functions:
            return (), ()
        by_line = self._reads.get(request.op)
        if by_line is None:
            by_line = self._reads[request.op] = secret_reads(self.policy, request.op)
        statements = {s.location.line: s for s in rule_file.statements}
        trace: list[TraceStep] = []
        self._decide(request, now, trace)
        reads: dict[str, None] = {}
        calls: dict[str, None] = {}
        for step in trace:
            if hashed:
                reads.update(dict.fromkeys(by_line.get(step.rule.line, ())))
            statement = statements.get(step.rule.line)
            if statement is not None:
                calls.update(dict.fromkeys(sorted(statement.state_functions)))
        return tuple(reads), tuple(f"{name}()" for name in calls)


def replay(
    recordings: Sequence[Path],
    policies: Path,
    out: TextIO,
    *,
    key: RecordKey | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    output: OutputFormat = OutputFormat.PRETTY,
) -> ReplayReport:
    """`policyd replay`: decide every recorded request with `policies`, report what changes.

    Raises PolicyLoadError when the policy does not load, RecordingError when a recording cannot
    be read or was hashed with another key than `key`.
    """
    policy = load_policy(policies)
    replayer = _Replayer(policy, key, options)
    report = ReplayReport(policy.version, keyless=key is None)
    for item in read_recordings(recordings):
        if isinstance(item, Unreadable):
            report.unreadable.append(item)
            continue
        if key is not None and item.key_id and item.key_id != key.key_id:
            raise RecordingError(
                f"{item.where}: recorded with another key (key id {item.key_id}, the key given is "
                f"{key.key_id}): its hashes cannot be compared"
            )
        report.requests += 1
        if replayer.same_files(item):
            report.counts[Replay.UNCHANGED.value] += 1
            report.same_files += 1
            continue
        result = replayer.replay(item)
        if result is None:
            report.counts[Replay.UNCHANGED.value] += 1
        else:
            report.counts[result.result.value] += 1
            report.replayed.append(result)
    out.write((to_json(report.to_dict()) if output is OutputFormat.JSON else render(report, policies)) + "\n")
    return report


def _answer_text(outcome: Any, reason: Any, rule: Any) -> str:
    said = f"{outcome} {reason!r}" if reason else str(outcome)
    return f"{said} ({rule})" if rule else f"{said} (no rule decided)"


def render(report: ReplayReport, policies: Path) -> str:
    counts = report.counts
    lines = [
        f"replayed {counted(report.requests, 'request')} against {policies} (policy "
        f"{report.policy_version}): {counts[Replay.UNCHANGED.value]} unchanged"
        f"{f' ({report.same_files} decided by the same files)' if report.same_files else ''}, "
        f"{counts[Replay.CHANGED.value]} changed, {counts[Replay.SECRET.value]} depend on a masked secret"
        + (f", {counts[Replay.STATE.value]} on live state" if counts[Replay.STATE.value] else "")
    ]
    for kind, title in (
        (Replay.CHANGED, "changed:"),
        (Replay.SECRET, "depend on a masked secret (the replay cannot know it; not counted as changed):"),
        (Replay.STATE, "depend on live state (the replay has none; not counted as changed):"),
    ):
        shown = [r for r in report.replayed if r.result is kind]
        if not shown:
            continue
        lines.append(title)
        for r in shown:
            doc = r.to_dict()
            old, new = doc["old"], doc["new"]
            who = doc["user"] or "(no user)"
            lines.append(f"  {doc['time']} {doc['op']} {who} reqid {doc['reqid'] or '-'} ({doc['where']})")
            was = _answer_text(old["outcome"], old["reason"], old["rule"])
            lines.append(f"      was: {was}, policy {old['policy_version']}")
            lines.append(f"      now: {_answer_text(new['outcome'], new['reason'], new['rule'])}")
            if r.secret_reads:
                lines.append(f"      reads: {', '.join(r.secret_reads)} (hashed in the recording)")
            if r.state_calls and not r.secret_reads:
                lines.append(f"      calls: {', '.join(r.state_calls)} (the state then is not recorded)")
    if report.keyless:
        lines.append("note: no --key: secret values a rule sets were compared masked")
    for u in report.unreadable:
        cut = " (the file's last line: a write cut short?)" if u.last else ""
        lines.append(f"unreadable: {u.where}: {u.message}{cut}")
    if report.requests == 0:
        lines.append("no requests in the recording")
    return "\n".join(lines)
