"""`policyd eval`: decide one request with the service's own code, and explain the decision.

The decision comes from `engine.decide` and the answer from `protocol.encode_answer`, the two
calls the service makes; `decide(..., trace=[])` records each rule reached, which is what the
explanation shows. Nothing here evaluates a rule on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from policyd.engine import DEFAULT_OPTIONS, EvalOptions, StateBinding, decide
from policyd.policy import Policy, load_policy
from policyd.protocol import PluginRequest, encode_answer
from policyd.rules.decision import Decision, Op, Outcome, TraceStep
from policyd.rules.diagnostics import OutputFormat, counted, jsonable, to_json
from policyd.rules.language import Action
from policyd.rules.secrets import (
    MASK,
    NO_SECRETS,
    Secrets,
    is_secret_path,
    mask,
    mask_change,
    scrub,
    secrets_in,
)
from policyd.rules.statements import Statement
from policyd.state.memory import MemoryBackend

MAX_SHOWN_CHARS = 200  # a value in the pretty explanation; JSON output is never shortened


@dataclass(frozen=True, slots=True)
class Explanation:
    """One decided request: the exact answer frps gets and how the rules reached it.

    The answer is exactly frps's; everything else shows content as the decision log does
    (policyd.rules.secrets): secret fields and credential-named keys as "***", and their values
    masked in warn messages and errors.
    """

    decision: Decision
    answer: bytes
    trace: tuple[TraceStep, ...]  # values masked
    rule_file: str | None  # the op's rule file, None when the op has none
    rules_not_reached: int
    deciding_source: str = ""  # the rule that decided (reject, allow, or the one that failed)
    secrets: Secrets = NO_SECRETS  # credential values the warn messages and errors may repeat

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(path, before, after) of every change, masked."""
        return [(c.path, *mask_change(c.path, c.before, c.after)) for c in self.decision.changes]

    def warnings(self) -> list[tuple[str, str]]:
        """(rule, message) of every warn that fired, masked."""
        return [
            (str(w.rule), scrub(w.message, self.secrets, w.parts, w.kinds)) for w in self.decision.warnings
        ]

    def error_message(self) -> str:
        error = self.decision.error
        return "" if error is None else scrub(error.message, self.secrets)

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "answer": orjson.loads(self.answer),
            "op": d.op.value,
            "policy_version": d.policy_version,
            "outcome": d.outcome.value,
            "reason": d.reason,
            "rule": str(d.rule) if d.rule else None,
            "rule_id": d.statement.rule_id if d.statement else None,  # as the decision log names it
            "error": {**d.error.to_dict(), "message": self.error_message()} if d.error else None,
            "failed_open": d.failed_open,
            "changes": [
                {"path": path, "before": before, "after": after} for path, before, after in self.changes()
            ],
            "warnings": [{"message": message, "rule": rule} for rule, message in self.warnings()],
            "trace": [
                {
                    "rule": str(s.rule),
                    "source": s.source,
                    "action": s.action,
                    "condition": s.condition,
                    "value": s.value,
                    "fired": s.fired,
                }
                for s in self.trace
            ],
        }


def explain(
    policy: Policy,
    op: Op,
    content: dict[str, Any],
    *,
    reqid: str = "",
    now: float | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    state: StateBinding | None = None,
) -> Explanation:
    """Decide `content` for `op` as the service would, keeping the trace. State functions
    read `state` (default: an empty memory state) without changing it."""
    trace: list[TraceStep] = []
    if state is None:
        state = StateBinding(MemoryBackend(), recording=False)
    decision = decide(policy, op, content, reqid=reqid, now=now, options=options, trace=trace, state=state)
    rule_file = policy.rules.get(op)
    not_reached, source = 0, ""
    if rule_file is not None and decision.rule is not None:
        # The deciding rule (reject, allow, or the one that failed) is the last one reached.
        locations = [s.location for s in rule_file.statements]
        index = locations.index(decision.rule)
        not_reached, source = len(locations) - index - 1, rule_file.statements[index].source
    statements = {s.location: s for s in rule_file.statements} if rule_file is not None else {}
    return Explanation(
        decision=decision,
        answer=encode_answer(decision),
        trace=tuple(_masked_step(step, statements.get(step.rule)) for step in trace),
        rule_file=rule_file.path if rule_file else None,
        rules_not_reached=not_reached,
        deciding_source=source,
        secrets=secrets_in(decision, content),
    )


def _masked_step(step: TraceStep, statement: Statement | None) -> TraceStep:
    """A trace step as people may see it: what a set or let of a secret computed is MASK."""
    secret = statement is not None and (
        (statement.action is Action.SET and is_secret_path(".".join(statement.path)))
        or (statement.action is Action.LET and is_secret_path(statement.path[0]))
    )
    value = MASK if secret and step.fired else mask(step.value)
    return dataclasses.replace(step, condition=mask(step.condition), value=value)


def _shown(value: Any) -> str:
    text = orjson.dumps(value, default=jsonable).decode()
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def _step_result(step: TraceStep) -> str:
    if step.action == "let":
        return f"= {_shown(step.value)}"
    when = "" if step.condition is True and step.fired else f"when -> {_shown(step.condition)}; "
    if not step.fired:
        return f"{when}not fired"
    if step.action == "set":
        return f"{when}fired: set to {_shown(step.value)}"
    return f"{when}fired"


def _change_line(path: str, before: Any, after: Any) -> str:
    return f"  content.{path}: {_shown(before)} -> {_shown(after)}"


def render_text(explanation: Explanation) -> str:
    """The answer on the first line, exactly as frps gets it, then the explanation."""
    d = explanation.decision
    lines = [explanation.answer.decode(), ""]
    if explanation.rule_file is None:
        lines.append(f"{d.op} has no rule file in this policy: allowed unchanged")
    else:
        lines.append(f"rules evaluated ({explanation.rule_file}, policy {d.policy_version}):")
        steps = list(explanation.trace)
        if d.error is not None and steps and steps[-1].rule == d.rule:
            steps.pop()  # the failing rule: its recorded value is incomplete
        for step in steps:
            lines.append(f"  {step.rule}  {step.source}")
            lines.append(f"      {_step_result(step)}")
        if d.error is not None:
            lines.append(f"  {d.rule}  {explanation.deciding_source}")
            lines.append(f"      error: {explanation.error_message()}")
        if explanation.rules_not_reached:
            lines.append(f"  ({counted(explanation.rules_not_reached, 'rule')} below not reached)")
    lines.append("")
    lines.append(_outcome_line(d))
    if d.op is Op.CLOSE_PROXY and d.outcome is not Outcome.ALLOW:
        lines.append("note: frps ignores CloseProxy answers; policyd always answers allow")
    lines.append("content diff:" if d.changes else "content diff: none")
    lines.extend(_change_line(*change) for change in explanation.changes())
    lines.append("warnings:" if d.warnings else "warnings: none")
    lines.extend(f"  {rule}: {message}" for rule, message in explanation.warnings())
    return "\n".join(lines)


def _outcome_line(d: Decision) -> str:
    if d.error is not None:
        how = "allowed (fail-open)" if d.failed_open else f"rejected with {d.reason!r} (fail-closed)"
        return f"outcome: {d.outcome.value}: the rule at {d.rule} failed, so the op is {how}"
    by = f" by {d.rule}" if d.rule else " (no reject/allow fired; fell off the end)"
    if d.outcome is Outcome.REJECT:
        return f"outcome: reject{by}: {d.reason}"
    return f"outcome: {d.outcome.value}{by}"


def evaluate(
    policies: Path,
    request: PluginRequest,
    out: TextIO,
    *,
    output: OutputFormat = OutputFormat.PRETTY,
    reqid: str = "",
    now: float | None = None,
    options: EvalOptions = DEFAULT_OPTIONS,
    state: StateBinding | None = None,
) -> Explanation:
    """`policyd eval`: load the policy, decide `request`, write the answer and its explanation.

    Raises PolicyLoadError when the policy does not load.
    """
    policy = load_policy(policies)
    explanation = explain(
        policy, request.op, request.content, reqid=reqid, now=now, options=options, state=state
    )
    if output is OutputFormat.JSON:
        out.write(to_json(explanation.to_dict()) + "\n")
    else:
        out.write(render_text(explanation) + "\n")
    return explanation
