"""What a decision is: the ops frps asks about, the outcomes, and the Decision record itself.

A leaf: the wire format (policyd.protocol), the decision log and the metrics read decisions
through these types without importing the engine that makes them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from policyd.errors import Location, PolicyError

if TYPE_CHECKING:
    from policyd.rules.statements import Statement


class Op(enum.StrEnum):
    """The six operations frps can send to a server plugin."""

    LOGIN = "Login"
    NEW_PROXY = "NewProxy"
    CLOSE_PROXY = "CloseProxy"
    PING = "Ping"
    NEW_WORK_CONN = "NewWorkConn"
    NEW_USER_CONN = "NewUserConn"


# The op of each name frps sends (and rule files are named after), in frps's order.
OPS: Mapping[str, Op] = MappingProxyType({op.value: op for op in Op})


class Outcome(enum.Enum):
    ALLOW = "allow"  # allowed, content unchanged
    REJECT = "reject"
    REWRITE = "rewrite"  # allowed with changed content


# The reason frps (and the frp client) gets when a rule failed and the op fails closed.
GENERIC_ERROR_REASON = "policy error"
# What the decision log and the metrics call a decision: its outcome, or "error" if a rule failed.
ERROR_LABEL = "error"
OUTCOME_LABELS = (*(o.value for o in Outcome), ERROR_LABEL)


class Part(enum.Enum):
    """Where a piece of a rendered reason or warn message came from: what masking may touch."""

    TEXT = "text"  # the rule author's words: never masked
    VALUE = "value"  # what a {...} part rendered: searched for credential values
    SECRET = "secret"  # what a {...} part reading a credential field rendered: masked whole


# Not frozen: a frozen dataclass's __init__ costs 3x (object.__setattr__ per field), and a
# decision makes these on the request path. Nothing changes them once made.
@dataclass(slots=True)
class Change:
    path: str  # e.g. "subdomain", "metas.owner"
    before: Any
    after: Any


@dataclass(slots=True)
class RuleWarning:
    message: str
    rule: Location
    # The message as its template rendered it, piece by piece (policyd.rules.secrets masks it).
    parts: Sequence[str] = ()
    kinds: Sequence[Part] = ()


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One rule as `decide(..., trace=[])` saw it: for `policyd eval`'s explanation."""

    rule: Location
    source: str
    action: str
    condition: Any  # the condition's value; True when the rule has none; None if not reached
    value: Any = None  # what a let/set computed
    fired: bool = False


@dataclass(slots=True)
class Decision:
    """What policyd decided for one request, and why."""

    outcome: Outcome
    op: Op
    policy_version: str
    reason: str = ""
    content: dict[str, Any] | None = None  # the whole content, when outcome is REWRITE
    rule: Location | None = None  # the rule that decided (reject/allow/error), if any
    statement: Statement | None = None  # that rule, compiled: what it reads, its id and text
    warnings: list[RuleWarning] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    error: PolicyError | None = None
    failed_open: bool = False
    eval_us: float = 0.0
    # The reason as its template rendered it, piece by piece (policyd.rules.secrets masks it).
    reason_parts: Sequence[str] = ()
    reason_kinds: Sequence[Part] = ()


def outcome_label(decision: Decision) -> str:
    """One of OUTCOME_LABELS: the decision's outcome, or "error" when a rule failed."""
    # `_value_` is the plain attribute behind `.value`, which is a Python-level descriptor.
    return ERROR_LABEL if decision.error is not None else decision.outcome._value_
