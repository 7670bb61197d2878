"""The decision log: one JSON line per decision, for operators asking "why was this refused?".

A line names who asked (user, run id, proxy, addresses, frps's reqid), what policyd decided, the
rule that decided (`file:line`, an id that survives line moves, its text) and the request fields
it read with their values, the warn messages, every changed field (before → after), the policy
version and the evaluation time. Credentials are masked as everywhere policyd shows content
(policyd.rules.secrets): fields frps marks secret, map keys named like credentials, and their
values wherever a reason or message renders them. Which fields a rule reads is known from load
time (policyd.rules.reads): a line only copies those values, each cut to a few hundred characters.

Lines are written in batches, as nginx's `access_log buffer= flush=` does: one `write(2)` of whole
lines once the batch would pass PIPE_BUF bytes, FLUSH_AFTER_S after its first line at the latest,
and when the log closes (graceful shutdown), instead of one system call per decision. A write of
at most PIPE_BUF bytes to a pipe is atomic, so lines from several workers sharing stdout (a pipe)
or an O_APPEND file never interleave; a line longer than that is written alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from policyd.rules.decision import Change, Decision, Op, Outcome, RuleWarning, outcome_label
from policyd.rules.reads import FieldRead
from policyd.rules.schema import SCALAR_ZERO, Kind
from policyd.rules.secrets import (
    MASK,
    Secrets,
    is_secret_key,
    mask_change,
    scrub,
    secrets_in,
)

log = logging.getLogger("policyd.decisions")

# The most a batch holds: a write(2) of up to PIPE_BUF bytes to a pipe is atomic (POSIX: >= 512).
BATCH_BYTES: int = getattr(select, "PIPE_BUF", 512)
# The longest a line waits for others before it is written.
FLUSH_AFTER_S = 0.1

Sink = Callable[[bytes], None]


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# Content fields a line names when the op has them: the proxy and the peers' addresses.
_CONTEXT_FIELDS = ("proxy_name", "proxy_type", "client_address", "remote_addr")
# How much of a value read, and of the deciding rule's text, a line shows.
MAX_SHOWN_CHARS = 256
MAX_SHOWN_ITEMS = 16
CUT = "…"


def _bounded(value: Any, depth: int = 0) -> Any:
    """`value` cut to what a log line shows: long strings and collections shortened, masked."""
    if isinstance(value, str):
        return value if len(value) <= MAX_SHOWN_CHARS else value[:MAX_SHOWN_CHARS] + CUT
    if depth > 2 and isinstance(value, dict | list):
        return CUT
    if isinstance(value, list):
        shown = [_bounded(v, depth + 1) for v in value[:MAX_SHOWN_ITEMS]]
        return [*shown, CUT] if len(value) > MAX_SHOWN_ITEMS else shown
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for count, (k, v) in enumerate(value.items()):
            if count == MAX_SHOWN_ITEMS:
                out[CUT] = CUT
                break
            out[str(k)] = MASK if is_secret_key(str(k)) else _bounded(v, depth + 1)
        return out
    return value


def _read_value(read: FieldRead, content: Mapping[str, Any]) -> Any:
    """The value of a field a rule read, as the request carried it (its zero value if absent)."""
    if read.secret:
        return MASK
    value: Any = content
    for key in read.path:
        value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            break
    if value is None:
        kind = read.kind
        return SCALAR_ZERO.get(kind, [] if kind is Kind.STR_LIST else {})
    return _bounded(value)


def _warning(w: RuleWarning, secrets: Secrets) -> str:
    return scrub(w.message, secrets, w.parts, w.kinds)


def _change(change: Change) -> dict[str, Any]:
    before, after = mask_change(change.path, change.before, change.after)
    return {"field": change.path, "before": before, "after": after}


_LOGIN = Op.LOGIN  # a global: Python 3.11 looks an enum member up through EnumType.__getattr__


def decision_record(
    decision: Decision,
    content: Mapping[str, Any],
    reqid: str,
    at: datetime,
    secrets: Secrets | None = None,
    shadow: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The decision-log entry for one decision (a dict; `DecisionLog` serialises it).

    `shadow` is what the shadow policy decided, when it disagreed (policyd.service.shadow).
    """
    if secrets is None:
        secrets = secrets_in(decision, content)
    op = decision.op
    user_obj = content.get("user")
    if op is _LOGIN:
        user, run_id = _str(user_obj), _str(content.get("run_id"))
    else:
        user_obj = user_obj if isinstance(user_obj, dict) else {}
        user = _str(user_obj.get("user"))
        run_id = _str(content.get("run_id")) or _str(user_obj.get("run_id"))
    # `_value_` is the plain attribute behind an enum's `.value`, a Python-level descriptor.
    record: dict[str, Any] = {
        "time": at,
        "reqid": reqid,
        "op": op._value_,
        "user": user,
        "run_id": run_id,
    }
    for key in _CONTEXT_FIELDS:
        value = content.get(key)
        if value:
            record[key] = value
    error = decision.error
    record["outcome"] = outcome_label(decision)
    record["rule"] = decision.rule.rule if decision.rule is not None else ""
    statement = decision.statement
    if statement is not None:
        record["rule_id"] = statement.rule_id
        reads = statement.reads
        # A rule that reads a credential may compare it with one written in its text.
        if not any(r.secret for r in reads):
            source = statement.source
            record["rule_text"] = source if len(source) <= MAX_SHOWN_CHARS else source[:MAX_SHOWN_CHARS] + CUT
        if reads:
            record["read"] = {r.name: _read_value(r, content) for r in reads}
    reason = decision.reason
    record["reason"] = scrub(reason, secrets, decision.reason_parts, decision.reason_kinds) if reason else ""
    if decision.warnings:
        record["warnings"] = [
            {"message": _warning(w, secrets), "rule": w.rule.rule} for w in decision.warnings
        ]
    if decision.changes:
        record["changes"] = [_change(c) for c in decision.changes]
    if error is not None:
        record["error"] = {"code": error.code, "message": scrub(error.message, secrets)}
        record["failed_open"] = decision.failed_open
    record["policy_version"] = decision.policy_version
    record["eval_us"] = round(decision.eval_us * 10) / 10  # 0.1 us; round(x, 1) takes 4x as long
    if shadow is not None:
        record["shadow"] = shadow
    return record


def fd_sink(fd: int) -> Sink:
    """Write each batch with as few `write(2)` calls as the kernel allows (one, up to PIPE_BUF)."""

    def write(line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]

    return write


class DecisionLog:
    """Serialises decisions to a sink in batches, skipping a sampled share of plain allows per op.

    A batch is flushed by a timer on the running event loop (the server's one loop: a loop that
    ends with a timer pending takes the timer with it, so `close()` at shutdown writes the rest);
    with no loop running, each line is written at once. Everything runs on the event-loop
    thread: no lock.
    """

    def __init__(
        self,
        sink: Sink | None,
        sample: Mapping[Op, float] = MappingProxyType({}),
        *,
        close: Callable[[], None] | None = None,
        batch_bytes: int = BATCH_BYTES,
        flush_after_s: float = FLUSH_AFTER_S,
    ) -> None:
        self.sink = sink
        self.sample = {op: sample.get(op, 1.0) for op in Op}
        self.batch_bytes = batch_bytes
        self.flush_after_s = flush_after_s
        self._close = close
        self._batch: list[bytes] = []
        self._batched = 0  # bytes in _batch
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, target: str, sample: Mapping[Op, float] = MappingProxyType({})) -> DecisionLog:
        """`target` is stdout, stderr, off, or a file path (appended to, created if missing)."""
        if target == "off":
            return cls(None)
        if target in ("stdout", "-"):
            return cls(fd_sink(1), sample)
        if target == "stderr":
            return cls(fd_sink(2), sample)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return cls(fd_sink(fd), sample, close=lambda: os.close(fd))

    def write(
        self,
        decision: Decision,
        content: Mapping[str, Any],
        reqid: str,
        *,
        at: datetime | None = None,
        shadow: Mapping[str, Any] | None = None,
    ) -> None:
        """Report one decision; never raises into the request.

        Rule errors and warns also go to the diagnostic log (masked too), whatever the sink and
        sampling; the JSON line goes to the sink unless it is off or the decision sampled out.
        `at` is when it was decided (default: now); a line with a `shadow` disagreement is never
        sampled out.
        """
        op = decision.op
        if self.sink is None and decision.error is None and not decision.warnings:
            return
        secrets = secrets_in(decision, content)
        if decision.error is not None:
            log.error(
                "%s %s: rule error (%s): %s",
                op.value,
                "failed OPEN" if decision.failed_open else "rejected",
                decision.error.code,
                scrub(str(decision.error), secrets),
            )
        for warning in decision.warnings:
            log.warning("%s warn (%s): %s", op.value, warning.rule, _warning(warning, secrets))
        if self.sink is None:
            return
        rate = self.sample[op]
        if (
            rate < 1.0
            and shadow is None
            and decision.outcome is Outcome.ALLOW
            and not decision.warnings
            and decision.error is None
            and random.random() >= rate
        ):
            return
        try:
            when = datetime.now(UTC) if at is None else at
            record = decision_record(decision, content, reqid, when, secrets, shadow)
            line = orjson.dumps(record, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE, default=str)
        except Exception:  # a value orjson cannot carry must not fail frps's request
            log.exception("could not build the decision log line for %s %s", op.value, reqid)
            return
        self.add_line(line)

    def add_line(self, line: bytes) -> None:
        """Batch one whole line (the recorder batches its own lines this way too)."""
        if self._batched + len(line) > self.batch_bytes:
            self.flush()  # what is batched already: no write grows past batch_bytes
        self._batch.append(line)
        self._batched += len(line)
        if self._batched >= self.batch_bytes:
            self.flush()  # full, or one line too long to share a write
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # nothing would flush it later
                self.flush()
                return
            self._timer = loop.call_later(self.flush_after_s, self._flush_due)

    def _flush_due(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the batched lines now, with one write; never raises (lines that fail are lost)."""
        if not self._batch:
            return
        batch, lines = b"".join(self._batch), len(self._batch)
        self._batch.clear()
        self._batched = 0
        if self.sink is None:
            return
        try:
            self.sink(batch)
        except Exception:  # a full disk or a closed pipe must not fail frps's request
            log.exception("could not write %d decision log line(s)", lines)

    def close(self) -> None:
        """Write what is batched and release the target (at shutdown, after the last request)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._close is not None:
            self._close()
            self._close = None
        self.sink = None
