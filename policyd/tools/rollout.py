"""What the shadow policy and replays share: deciding a request again, and whether two answers
are the same.

Both decide a request a second time, after frps has its answer: the decision must be the one
serving would make (same options, same `now` and `reqid`) and must change nothing that later
requests see. Both then compare the answers as frps sees them: the outcome (with a rule error
as its own outcome), the reject reason and the rewritten content.
"""

from __future__ import annotations

import enum
from typing import Any

from policyd.engine import EvalOptions, decide
from policyd.policy import Policy
from policyd.rules.decision import Decision, Op, Outcome, TraceStep, outcome_label


class Agreement(enum.StrEnum):
    """How a second decision compares with the first (`policyd_shadow_decisions_total`)."""

    SAME = "same"  # the same outcome, reason and rewritten content
    DIFFERENT = "different"
    ERROR = "error"  # the second decision failed: a rule error or a budget overrun


Verdict = tuple[str, str, "dict[str, Any] | None"]


def verdict(decision: Decision) -> Verdict:
    """What of a decision frps acts on: outcome label, reason, and the content of a rewrite."""
    content = decision.content if decision.outcome is Outcome.REWRITE else None
    return outcome_label(decision), decision.reason, content


def agreement(first: Decision, second: Decision) -> Agreement:
    if second.error is not None:
        return Agreement.ERROR
    return Agreement.SAME if verdict(first) == verdict(second) else Agreement.DIFFERENT


def ops_decided_alike(first: Policy, second: Policy) -> frozenset[Op]:
    """The ops both policies decide from byte-identical files: the op's rule file (or none in
    either) and every data file. For these a second decision can only repeat the first, given
    the same request, `now`, `reqid`, options and time to finish."""
    data = {(d.path, d.sha256) for d in first.data_files}
    if data != {(d.path, d.sha256) for d in second.data_files}:
        return frozenset()

    def digest(policy: Policy, op: Op) -> str | None:
        rule_file = policy.rules.get(op)
        return None if rule_file is None else rule_file.sha256

    return frozenset(op for op in Op if digest(first, op) == digest(second, op))


def decide_again(
    policy: Policy,
    op: Op,
    content: dict[str, Any],
    *,
    reqid: str,
    now: float,
    options: EvalOptions,
    trace: list[TraceStep] | None = None,
) -> Decision:
    """Decide a request that was already answered, with another policy: for the shadow policy
    and for replays.

    The seam for state (issue 15): a rule's state functions (`proxies()`, `sessions()`,
    `rate()`) must answer from the state layer's non-recording view here, so that a shadow or
    a replay decision never counts, registers or forgets anything. Until that layer exists
    no rule can change state, and this is decide() with the serving options.
    """
    return decide(policy, op, content, reqid=reqid, now=now, options=options, trace=trace)
