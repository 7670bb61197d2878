"""What the shadow policy and replays share: deciding a request again, and whether two answers
are the same.

Both decide a request a second time, after frps has its answer: the decision must be the one
serving would make (same options, same `now` and `reqid`) and must change nothing that later
requests see. Both then compare the answers as frps sees them: the outcome (with a rule error
as its own outcome), the reject reason and the rewritten content.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from typing import Any

from policyd.engine import EvalOptions, StateBinding, decide
from policyd.policy import Policy
from policyd.rules.decision import Decision, Op, Outcome, TraceStep, outcome_label

DECIDED_BY_CHARS = 16  # hex digits of decided_by()


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


def decided_by(policy: Policy, op: Op) -> str:
    """What decides `op` under `policy`, as a digest of its files: the op's rule file (or none)
    and every data file. Two policies with the same digest for an op decide it alike, given the
    same request, `now`, `reqid`, options and time to finish: a second decision can only repeat
    the first."""
    rule_file = policy.rules.get(op)
    digest = hashlib.sha256(b"-" if rule_file is None else rule_file.sha256.encode())
    for data_file in sorted(policy.data_files, key=lambda d: d.path):
        digest.update(f"\0{data_file.path}\0{data_file.sha256}".encode())
    return digest.hexdigest()[:DECIDED_BY_CHARS]


def ops_decided_alike(first: Policy, second: Policy) -> frozenset[Op]:
    """The ops both policies decide from the same files (decided_by)."""
    return frozenset(op for op in Op if decided_by(first, op) == decided_by(second, op))


def decide_again(
    policy: Policy,
    op: Op,
    content: dict[str, Any],
    *,
    reqid: str,
    now: float,
    options: EvalOptions,
    state: StateBinding | None = None,
    trace: list[TraceStep] | None = None,
) -> Decision:
    """Decide a request that was already answered, with another policy: for the shadow policy
    and for replays.

    Its state functions (`proxies()`, `sessions()`, `rate()`) read `state` through the state
    layer's non-recording view, whatever `state` says: a shadow or replay decision never
    counts, registers or forgets anything (`rate()` answers as if it counted, without counting).
    """
    view = None if state is None else dataclasses.replace(state, recording=False)
    return decide(policy, op, content, reqid=reqid, now=now, options=options, trace=trace, state=view)
