"""The console's memory of recent traffic: the last decisions, and per-second charts over 15 minutes.

Both are fed by one call per decision from the plugin route (`ConsoleFeed.add`), which must cost
next to nothing (benchmarks/console_ring.py measures it): it reads the clock, counts the decision
in the current second and appends a snapshot to a bounded hand-off queue. The snapshot is one
tuple of the decision's fields and the request's raw body (bytes): keeping the Decision and the
parsed request instead would keep a dozen objects per decision alive past the garbage
collector's youngest generation, and its collections would then cost the route more than
everything else here together. Everything that costs more happens off the request path,
in a housekeeping tick on the event loop (every TICK_S):

- decisions waiting in the hand-off queue are masked (the decision log's record, passed in
  by the service) into the decisions ring, a few at a time so requests interleave; the queue keeps
  only the newest DECISIONS_KEPT, so the masking work per tick is bounded whatever the traffic;
- closed seconds get their latency percentiles, and reloads are counted from the store's totals.

The rings hold masked data only: a request waits unmasked in the hand-off queue for at most one
tick (or until the console reads, which drains it first). Everything runs on the event-loop
thread, so nothing takes a lock.

With a shadow policy, a request's decision-log line waits for its shadow decision, and so does
its row: `add()` then only counts, and the shadow hands the row over (`add_shadowed()`) when it
writes the line, with the line's `shadow` object where the two policies disagree.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from policyd.rules.decision import Decision, Op, Outcome
from policyd.rules.secrets import is_secret_key, mask

DECISIONS_KEPT = 1000  # rows in the decisions table, newest first; also the hand-off queue's bound
WINDOW_S = 15 * 60  # the charts' span
TICK_S = 1.0  # housekeeping: masking waiting decisions, closing seconds, counting reloads
MASK_SLICE = 32  # decisions masked per event-loop callback (~0.4 ms), then requests get their turn
MAX_LATENCY_SAMPLES = 4096  # decision times kept per second for p50/p99 (the first ones)
MAX_MASKED_PATHS = 32  # masked fields named per row (for the playground's "give the secret" inputs)
# Requests kept for the table at most this big (frps's are under 2 KiB): 1,000 of them stay small
# whatever a client sends; a bigger one is listed without its request.
MAX_KEPT_BODY_BYTES = 16 * 1024

OPS = tuple(Op)
OUTCOMES = (*(o.value for o in Outcome), "error")
_OP_INDEX = {op: i * len(OUTCOMES) for i, op in enumerate(OPS)}
_OUTCOME_INDEX = {o: i for i, o in enumerate(Outcome)}
_ERROR_INDEX = OUTCOMES.index("error")
SERIES = tuple((op, outcome) for op in OPS for outcome in OUTCOMES)  # a second's counts, in order

# The decision log's line for a decision (reason and messages scrubbed, changes masked), passed
# in by the service; the request is masked by the same rules (policyd.rules.secrets).
RecordDecision = Callable[[Decision, Mapping[str, Any], str, datetime], dict[str, Any]]

# What `add()` keeps of a decision until it is masked: (time, body or None, reqid, op, outcome,
# policy version, reason, rule, eval_us, failed_open, warnings, changes, error, and the deciding
# statement and the reason's parts, which masking and the line's `read` need). Not the Decision:
# it holds two lists (mostly empty) and, for a rewrite, the whole new content. A row the shadow
# hands over holds the parsed content instead of the body, and the line's `shadow` object last.
Snapshot = tuple[Any, ...]


def _snapshot(decision: Decision, at: float, body: Any, reqid: str) -> Snapshot:
    return (
        at,
        body,
        reqid,
        decision.op,
        decision.outcome,
        decision.policy_version,
        decision.reason,
        decision.rule,
        decision.eval_us,
        decision.failed_open,
        decision.warnings or (),  # the empty lists of most decisions are not kept alive
        decision.changes or (),
        decision.error,
        decision.statement,
        decision.reason_parts,
        decision.reason_kinds,
    )


def _restore(snapshot: Snapshot) -> tuple[float, Any, str, Decision]:
    """The decision as `add()` saw it, from its snapshot (for the decision log's record)."""
    at, body, reqid, op, outcome, version, reason, rule, eval_us, failed_open, warnings, changes, error = (
        snapshot[:13]
    )
    decision = Decision(outcome, op, version, reason=reason, rule=rule, error=error, failed_open=failed_open)
    decision.statement, decision.reason_parts, decision.reason_kinds = snapshot[13:16]
    decision.eval_us = eval_us
    decision.warnings = list(warnings)
    decision.changes = list(changes)
    return at, body, reqid, decision


def _content(body: bytes | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if body is None or isinstance(body, Mapping):
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    content = doc.get("content") if isinstance(doc, dict) else None
    return content if isinstance(content, dict) else None


@dataclass(slots=True)
class _Second:
    """One second of decisions: counts per (op, outcome) in SERIES order, and decision times."""

    at: int
    counts: list[int]
    latencies: list[float]
    p50_us: float | None = None
    p99_us: float | None = None


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def masked_paths(value: Any, prefix: str = "", out: list[str] | None = None) -> list[str]:
    """Dotted paths of the values a masked request hides (credential-named keys), as the
    playground asks for them back."""
    out = [] if out is None else out
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}{key}"
            if is_secret_key(str(key)):
                if len(out) < MAX_MASKED_PATHS:
                    out.append(path)
            else:
                masked_paths(child, path + ".", out)
    return out


class ConsoleFeed:
    """The decisions ring and the chart ring, fed by `add()` once per decision."""

    def __init__(
        self,
        record: RecordDecision,
        *,
        reloads: Callable[[], tuple[int, int]] = lambda: (0, 0),
        clock: Callable[[], float] = time.time,
        kept: int = DECISIONS_KEPT,
        window_s: int = WINDOW_S,
        rows_from_shadow: bool = False,
    ) -> None:
        """`record` is the decision log's; `reloads()` is the store's running (successes,
        failures), read once per tick. With `rows_from_shadow`, rows come from add_shadowed()."""
        self._record = record
        self.rows_from_shadow = rows_from_shadow
        self._reloads = reloads
        self._clock = clock
        self.window_s = window_s
        self.kept = kept
        self._waiting: deque[Snapshot] = deque(maxlen=kept)
        self._rows: deque[dict[str, Any]] = deque(maxlen=kept)
        self._seq = 0  # the last row's number: the decisions feed's cursor
        self._second = _Second(0, [0] * len(SERIES), [])
        self._seconds: dict[int, _Second] = {}
        self._reload_seconds: dict[int, list[int]] = {}
        self._reload_totals = reloads()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the request path ------------------------------------------------------------------
    def add(self, decision: Decision, body: bytes, reqid: str) -> None:
        """Count one decision and queue its snapshot for the table (`body`: the request as frps
        sent it): a clock read, a few list operations and a tuple."""
        now = self._clock()
        current = self._second
        if int(now) != current.at:
            current = self._open_second(int(now))
        op = decision.op
        if decision.error is None:
            current.counts[_OP_INDEX[op] + _OUTCOME_INDEX[decision.outcome]] += 1
        else:
            current.counts[_OP_INDEX[op] + _ERROR_INDEX] += 1
        latencies = current.latencies
        if len(latencies) < MAX_LATENCY_SAMPLES:
            latencies.append(decision.eval_us)
        if self.rows_from_shadow:
            return  # its row comes with its shadow decision (add_shadowed)
        self._waiting.append(
            _snapshot(decision, now, body if len(body) <= MAX_KEPT_BODY_BYTES else None, reqid)
        )

    def add_shadowed(
        self,
        decision: Decision,
        content: dict[str, Any],
        reqid: str,
        at: datetime,
        size: int,
        shadow: dict[str, Any] | None,
    ) -> None:
        """A decision's row, once the shadow decided it (or let it go): at the moment its
        decision-log line is written, with the line's `shadow` object (None: they agree).
        `size` is the request body's, so the same requests are kept as add() keeps."""
        kept = content if size <= MAX_KEPT_BODY_BYTES else None
        self._waiting.append((*_snapshot(decision, at.timestamp(), kept, reqid), shadow))

    def _open_second(self, at: int) -> _Second:
        """Close the current second (its percentiles are worked out at the next tick)."""
        closed = self._second
        if closed.at:
            self._seconds[closed.at] = closed
        self._second = _Second(at, [0] * len(SERIES), [])
        return self._second

    # -- housekeeping, on the event loop -------------------------------------------------------
    def start(self) -> None:
        """Start the housekeeping tick on the running event loop (the service's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(TICK_S, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()

    def _tick(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(TICK_S, self._tick)
        self.housekeeping(sliced=True)

    def housekeeping(self, *, sliced: bool = False) -> None:
        """Close seconds, count reloads, and mask waiting decisions (in slices when `sliced`)."""
        now = int(self._clock())
        if self._second.at and self._second.at < now:
            self._open_second(0)
        self._summarise(now)
        successes, failures = self._reloads()
        ok, failed = successes - self._reload_totals[0], failures - self._reload_totals[1]
        if ok or failed:
            counts = self._reload_seconds.setdefault(now, [0, 0])
            counts[0] += ok
            counts[1] += failed
        self._reload_totals = (successes, failures)
        if sliced and self._loop is not None:
            self._mask_slice()
        else:
            self._mask_waiting(len(self._waiting))

    def _mask_slice(self) -> None:
        self._mask_waiting(MASK_SLICE)
        if self._waiting and self._loop is not None:
            self._loop.call_soon(self._mask_slice)

    def _mask_waiting(self, limit: int) -> None:
        waiting, rows, record = self._waiting, self._rows, self._record
        for _ in range(min(limit, len(waiting))):
            snapshot = waiting.popleft()
            at, body, reqid, decision = _restore(snapshot)
            content = _content(body)
            try:
                row = record(decision, content or {}, reqid, datetime.fromtimestamp(at, UTC))
                request = mask(content) if content is not None else None
            except Exception:  # a value the log cannot show; the decision log reports it
                continue
            self._seq += 1
            row["seq"] = self._seq
            row["request"] = request
            if len(snapshot) > 16 and snapshot[16] is not None:
                row["shadow"] = snapshot[16]
            rows.append(row)

    def _summarise(self, now: int) -> None:
        oldest = now - self.window_s
        for at in [at for at in self._seconds if at <= oldest]:
            del self._seconds[at]
        for at in [at for at in self._reload_seconds if at <= oldest]:
            del self._reload_seconds[at]
        for second in self._seconds.values():
            if second.latencies:
                ordered = sorted(second.latencies)
                second.p50_us = _percentile(ordered, 0.50)
                second.p99_us = _percentile(ordered, 0.99)
                second.latencies = []

    # -- what the console reads ----------------------------------------------------------------
    def decisions(
        self,
        *,
        after: int = 0,
        limit: int = 200,
        op: str = "",
        outcome: str = "",
        user: str = "",
        disagree: bool = False,
    ) -> tuple[list[dict[str, Any]], int]:
        """Rows newer than `after` matching the filters, newest first, and the newest row's seq.

        `user` matches part of the user name, case-insensitively; `op` and `outcome` exactly;
        `disagree` keeps the rows the shadow policy decided otherwise (a `shadow` object).
        """
        self._mask_waiting(len(self._waiting))
        wanted = user.casefold()
        out: list[dict[str, Any]] = []
        for row in reversed(self._rows):
            if row["seq"] <= after or len(out) >= limit:
                break
            if op and row["op"] != op:
                continue
            if outcome and row["outcome"] != outcome:
                continue
            if wanted and wanted not in row["user"].casefold():
                continue
            if disagree and "shadow" not in row:
                continue
            out.append(row)
        return out, self._seq

    def row(self, seq: int) -> dict[str, Any] | None:
        """One row, with `masked`: the paths of the values its request hides."""
        self._mask_waiting(len(self._waiting))
        for row in self._rows:
            if row["seq"] == seq:
                return {**row, "masked": masked_paths(row["request"]) if row["request"] else []}
        return None

    def charts(self) -> dict[str, Any]:
        """The last `window_s` seconds as columns: one value per second, oldest first."""
        self.housekeeping()
        now = int(self._clock())
        start = now - self.window_s + 1
        seconds = range(start, now + 1)
        current = self._second
        by_second = {**self._seconds, current.at: current} if current.at else self._seconds
        if current.at:
            ordered = sorted(current.latencies)
            if ordered:
                current.p50_us = _percentile(ordered, 0.50)
                current.p99_us = _percentile(ordered, 0.99)
        columns: dict[str, list[int]] = {}
        for index, (op, outcome) in enumerate(SERIES):
            values = [by_second[s].counts[index] if s in by_second else 0 for s in seconds]
            if any(values):
                columns[f"{op.value}/{outcome}"] = values
        return {
            "start": start,
            "step_s": 1,
            "points": self.window_s,
            "decisions": columns,
            "p50_us": [_maybe(by_second.get(s), "p50_us") for s in seconds],
            "p99_us": [_maybe(by_second.get(s), "p99_us") for s in seconds],
            "reloads_ok": [self._reload_seconds.get(s, (0, 0))[0] for s in seconds],
            "reloads_failed": [self._reload_seconds.get(s, (0, 0))[1] for s in seconds],
        }


def _maybe(second: _Second | None, name: str) -> float | None:
    if second is None:
        return None
    value: float | None = getattr(second, name)
    return None if value is None else round(value, 1)
