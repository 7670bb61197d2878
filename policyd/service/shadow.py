"""The shadow policy: a second policy directory that decides every request beside the serving one,
after frps has its answer, and reports where the two disagree. It never changes an answer.

`ShadowPolicy` is the directory: loaded, validated and hot-reloaded like the main one (its own
store, watcher and last good version). Unlike the main one, a shadow that does not load at
start-up does not stop the service: it is logged and shown in /status, and shadow decisions
start once an edit loads.

`ShadowRunner` decides. The plugin route hands it each answered request (O(1), never waiting);
a task on the event loop decides what waits, once per turn of the loop, so a shadow decision
only ever runs once the answer it shadows has been handed to the transport. Its cost to the
serving path is bounded four ways:

- each shadow decision has its own wall-clock budget (`shadow_eval_budget_ms`, 5 ms): past
  it the shadow decision is an error, not a slower answer;
- the shadow decides for at most SHADOW_SLICE_S before requests run again (plus the one
  decision under way), so no answer waits behind more than that;
- it may hold the serving thread for at most SHADOW_MAX_SHARE of the time; under a load that
  needs more, requests go unshadowed instead of slower;
- at most SHADOW_QUEUE_MAX requests (SHADOW_QUEUE_MAX_BYTES of bodies) wait.

A request the shadow does not take is answered and logged as usual, and counted in
`policyd_shadow_skipped_total{reason}`. An op whose rule file and data files are the same in
both policies is counted as `same` without a second decision: it could only repeat the first
(most candidates change a file or two, so the hot paths then cost the shadow nothing).

A disagreement on outcome, reason or rewritten content puts a `shadow` object into the
request's decision-log line (which therefore waits for the shadow decision, moments at most);
every shadow decision is counted in `policyd_shadow_decisions_total{op, agreement}`. The console's
decisions table gets its row with that line (`rows`), so it shows the disagreement too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policyd.engine import EvalOptions
from policyd.errors import PolicyLoadError
from policyd.policy import Policy
from policyd.rules.decision import Decision, Op
from policyd.rules.secrets import scrub, secrets_in
from policyd.service.decisionlog import DecisionLog, decision_record
from policyd.service.metrics import SKIP_REASONS, Metrics
from policyd.service.settings import Settings
from policyd.service.statesvc import StateService
from policyd.service.status import policy_summary, reload_summary
from policyd.service.store import PolicyStore, ReloadAttempt, ReloadStats
from policyd.service.watcher import PolicyWatcher
from policyd.tools.rollout import Agreement, agreement, decide_again, ops_decided_alike

log = logging.getLogger("policyd.shadow")

SHADOW_QUEUE_MAX = 1024  # answered requests waiting for their shadow decision
SHADOW_QUEUE_MAX_BYTES = 16 * 1024 * 1024  # request bodies those hold
SHADOW_MAX_SHARE = 0.1  # of the serving thread's time the shadow may use, over time
SHADOW_BURST_S = 0.05  # shadow time that may be used at once before the share applies
SHADOW_STATE_THREADS = 4  # shadow decisions waiting on a shared state backend at once
SHADOW_SLICE_S = 0.00025  # the longest the shadow decides before letting requests run again
# A shadow decision that raised (a bug, not a rule error): the log has the traceback.
SHADOW_FAILED = {"code": "shadow_failed", "message": "the shadow decision failed; see the diagnostic log"}
SHADOW_KEYS = ("outcome", "reason", "rule", "changes", "error", "failed_open", "policy_version", "eval_us")
# Where a request's row goes once its line is written (the console's decisions table): the
# decision, its content, reqid, answer time, body size and the line's `shadow` object (or None).
Rows = Callable[[Decision, dict[str, Any], str, datetime, int, "dict[str, Any] | None"], None]


class ShadowPolicy:
    """The shadow directory's policy, or None until it has loaded once."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.store: PolicyStore | None = None
        self._first: ReloadStats = ReloadStats()  # load attempts before the first success
        self._watcher: PolicyWatcher | None = None
        self._load_first(())

    @property
    def policy(self) -> Policy | None:
        store = self.store
        return None if store is None else store.policy

    @property
    def last_attempt_ok(self) -> bool:
        stats = self.store.stats if self.store is not None else self._first
        return stats.last is None or stats.last.ok

    def _load_first(self, changed_paths: tuple[str, ...]) -> None:
        try:
            self.store = PolicyStore(self.directory, label="shadow policy")
        except PolicyLoadError as e:
            self._first.failures += 1
            self._first.last = ReloadAttempt(time.time(), False, "", tuple(e.errors), e.omitted)
            log.error(
                "shadow policy in %s does not load%s; no shadow decisions until an edit loads. "
                "%d error(s):\n%s",
                self.directory,
                f" after change of {', '.join(changed_paths)}" if changed_paths else "",
                e.count,
                "\n".join(f"  {line}" for line in str(e).splitlines()),
            )

    def reload(self, changed_paths: tuple[str, ...]) -> None:
        """What the shadow's watcher calls: the store's reload, or the first load still awaited."""
        if self.store is None:
            self._load_first(changed_paths)
        else:
            self.store.reload(changed_paths)

    def start(self) -> None:
        self._watcher = PolicyWatcher(
            self.directory,
            self.reload,
            debounce=self.settings.reload_debounce_s,
            poll=self.settings.reload_poll_s,
        )
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def status(self) -> dict[str, Any]:
        """/status's `shadow.policy` and `shadow.reloads`, shaped like the main policy's."""
        store = self.store
        if store is None:
            return {"directory": str(self.directory), "policy": None, "reloads": reload_summary(self._first)}
        reloads = reload_summary(store.stats)
        reloads["failures"] += self._first.failures
        return {"directory": str(self.directory), "policy": policy_summary(store.policy), "reloads": reloads}


@dataclass(slots=True)
class _Waiting:
    decision: Decision
    content: dict[str, Any]
    reqid: str
    now: float  # the `now` the serving decision saw
    at: datetime  # when it was answered: the decision-log line's time
    size: int  # the request body's bytes


def shadow_record(decision: Decision, content: dict[str, Any], reqid: str, at: datetime) -> dict[str, Any]:
    """The decision log's `shadow` object: the shadow's own decision, masked like any line."""
    record = decision_record(decision, content, reqid, at)
    return {key: record[key] for key in SHADOW_KEYS if key in record}


class ShadowRunner:
    """Decides answered requests with the shadow policy on the event loop, after their answers.

    `submit()` and the worker both run on the event-loop thread, as the decision log and the
    metrics expect; nothing here needs a lock.
    """

    def __init__(
        self,
        main: PolicyStore,
        shadow: ShadowPolicy,
        options: EvalOptions,
        decisions: DecisionLog,
        metrics: Metrics,
        state: StateService | None = None,
        *,
        thread_options: EvalOptions | None = None,
        rows: Rows | None = None,
        queue_max: int = SHADOW_QUEUE_MAX,
        queue_max_bytes: int = SHADOW_QUEUE_MAX_BYTES,
        max_share: float = SHADOW_MAX_SHARE,
        burst_s: float = SHADOW_BURST_S,
    ) -> None:
        self.main = main
        self.shadow = shadow
        self.options = options
        self.decisions = decisions
        self.metrics = metrics
        self.state = state
        # Off the event loop, a shadow decision waiting on Redis holds no one up: it gets the
        # serving decisions' budget, as the round trips count against it.
        self.thread_options = thread_options or options
        self.rows = rows
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.max_share = max_share
        self.burst_s = burst_s
        self._queue: deque[_Waiting] = deque()
        self._queued_bytes = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._credit = burst_s  # shadow seconds that may be spent now
        self._refilled = time.perf_counter()
        self.counts = {a.value: 0 for a in Agreement}
        self.spent_s = 0.0  # time the shadow held the serving thread, in seconds
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        # Shadow decisions that wait on a shared state backend run in threads of their own, so
        # they never take the serving decisions' threads or their queue.
        self._pool: ThreadPoolExecutor | None = None
        self._in_threads = 0
        self._alike: tuple[Policy | None, Policy | None, frozenset[Op]] = (None, None, frozenset())

    # -- the serving path -------------------------------------------------------------------
    def submit(self, decision: Decision, content: dict[str, Any], reqid: str, now: float, size: int) -> None:
        """Take an answered request; its decision-log line is written once the shadow decided."""
        at = datetime.now(UTC)
        reason = ""  # not started (no event loop yet) or stopped: logged as if there were no shadow
        item = _Waiting(decision, content, reqid, now, at, size)
        if self._wake is None:
            pass
        elif self.shadow.store is None:
            reason = "not_loaded"
        elif len(self._queue) >= self.queue_max or self._queued_bytes + size > self.queue_max_bytes:
            reason = "queue_full"
        else:
            self._queue.append(item)
            self._queued_bytes += size
            self._wake.set()
            return
        if reason:
            self._skip(reason)
        self._write(item)

    def _write(self, item: _Waiting, shadow: dict[str, Any] | None = None) -> None:
        """The request's decision-log line (with the `shadow` object of a disagreement), and
        its row in the console's table."""
        self.decisions.write(item.decision, item.content, item.reqid, at=item.at, shadow=shadow)
        if self.rows is not None:
            self.rows(item.decision, item.content, item.reqid, item.at, item.size, shadow)

    def _skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        self.metrics.shadow_skipped(reason)

    # -- the worker ---------------------------------------------------------------------------
    def start(self, *, watch: bool = True) -> None:
        """Start deciding, and watching the shadow directory unless `watch` is False (from within
        the running event loop: the app's lifespan)."""
        if watch:
            self.shadow.start()
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(self._wake), name="policyd-shadow")

    async def stop(self) -> None:
        """Stop, and log every request still waiting as if there were no shadow."""
        self.shadow.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            await asyncio.sleep(0)  # the done callbacks write their lines
        task, self._task, self._wake = self._task, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            self._write(self._queue.popleft())
        self._queued_bytes = 0

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            while self._queue:
                self._decide_batch()
                # Requests that arrived meanwhile go first: the shadow holds the loop for at
                # most SHADOW_SLICE_S and one shadow decision at a time.
                await asyncio.sleep(0)

    def _decide_batch(self) -> None:
        """Decide what waits, for up to SHADOW_SLICE_S, within the shadow's share of time.

        One slice per turn of the event loop keeps up with what arrived during the last turn
        (one decision per turn falls behind under load). The share is charged in wall-clock
        time, for the shadow's own work (a line the log writes anyway is not the shadow's):
        what it bounds is how long requests wait for the loop, which is also held while the
        host runs something else in the middle of a shadow decision.
        """
        started = time.perf_counter()
        self._credit = min(self.burst_s, self._credit + (started - self._refilled) * self.max_share)
        self._refilled = started
        deadline = started + SHADOW_SLICE_S
        while self._queue:
            item = self._queue.popleft()
            self._queued_bytes -= item.size
            policy = self.shadow.policy
            if policy is None or self._credit <= 0:
                self._skip("not_loaded" if policy is None else "time_share")
                self._write(item)
                continue
            if self._waits_on_state(item, policy):
                self._decide_in_thread(item, policy)
                continue
            before = time.perf_counter()
            shadow_line = self._decide(item, policy)
            after = time.perf_counter()
            self._credit -= after - before
            self.spent_s += after - before
            self._write(item, shadow_line)
            if after >= deadline:
                break

    def _decide(self, item: _Waiting, policy: Policy) -> dict[str, Any] | None:
        """Decide one request with the shadow policy and count how it compares; its decision
        log `shadow` object when the two disagree, else None."""
        if self._decided_alike(item.decision, policy):
            return self._compared(item, item.decision)
        return self._compared(item, self._shadow_decision(item, policy))

    def _shadow_decision(
        self, item: _Waiting, policy: Policy, options: EvalOptions | None = None
    ) -> Decision | None:
        """The shadow's decision, state read through its non-recording view; None if it raised."""
        binding = None if self.state is None else self.state.binding
        try:
            return decide_again(
                policy,
                item.decision.op,
                item.content,
                reqid=item.reqid,
                now=item.now,
                options=options or self.options,
                state=binding,
            )
        except Exception:  # a shadow must never fail what the serving path does next
            log.exception("shadow decision of %s %s failed", item.decision.op.value, item.reqid)
            return None

    def _compared(self, item: _Waiting, decision: Decision | None) -> dict[str, Any] | None:
        """Count how the shadow's decision compares with the main one (None: it raised); the
        line's `shadow` object when they disagree."""
        main = item.decision
        shadow_line = None
        if decision is None:
            result = Agreement.ERROR
            shadow_line = {"outcome": "error", "error": SHADOW_FAILED}
        else:
            result = agreement(main, decision)
            if result is not Agreement.SAME:
                shadow_line = shadow_record(decision, item.content, item.reqid, item.at)
            if decision.error is not None and decision is not main:
                message = scrub(str(decision.error), secrets_in(decision, item.content))
                log.warning("shadow %s: rule error (%s): %s", main.op.value, decision.error.code, message)
        self.counts[result.value] += 1
        self.metrics.shadow_decided(main.op, result.value)
        return shadow_line

    def _waits_on_state(self, item: _Waiting, policy: Policy) -> bool:
        """Whether the shadow's decision would ask a shared state backend (Redis): its op's
        rules call a state function (a shadow records nothing, so nothing else would)."""
        if self.state is None or not self.state.shared:
            return False
        rule_file = policy.rules.get(item.decision.op)
        return (
            rule_file is not None
            and bool(rule_file.state_functions)
            and not self._decided_alike(item.decision, policy)
        )

    def _decide_in_thread(self, item: _Waiting, policy: Policy) -> None:
        """A shadow decision that waits on a shared state backend: in a thread of the shadow's
        own, at most SHADOW_STATE_THREADS at once (more are skipped: `state_busy`); its line is
        written once it is done, on the loop."""
        if self._in_threads >= SHADOW_STATE_THREADS:
            self._skip("state_busy")
            self._write(item)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SHADOW_STATE_THREADS, thread_name_prefix="policyd-shadow")
        self._in_threads += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._shadow_decision, item, policy, self.thread_options
        )

        def done(future: asyncio.Future[Decision | None]) -> None:
            self._in_threads -= 1
            decision = None if future.cancelled() or future.exception() else future.result()
            self._write(item, self._compared(item, decision))

        future.add_done_callback(done)

    def _decided_alike(self, main: Decision, shadow: Policy) -> bool:
        """Whether the shadow would repeat `main`: the op's files are the same in both policies
        (ops_decided_alike), the main decision did not fail, and it took well under the shadow's
        budget. Most candidates change one or two files; the other ops then cost nothing."""
        serving = self.main.policy
        if main.error is not None or serving.version != main.policy_version:
            return False
        if main.eval_us * 2e-6 > self.options.eval_seconds:
            return False
        known_main, known_shadow, ops = self._alike
        if known_main is not serving or known_shadow is not shadow:
            ops = ops_decided_alike(serving, shadow)
            self._alike = (serving, shadow, ops)
        return main.op in ops

    def status(self) -> dict[str, Any]:
        return {
            **self.shadow.status(),
            "eval_budget_ms": self.options.eval_seconds * 1000,
            "decisions": dict(self.counts),
            "skipped": dict(self.skipped),
            "waiting": len(self._queue),
            "spent_s": round(self.spent_s, 3),
        }


def shadow_options(settings: Settings) -> EvalOptions:
    """The serving options with the shadow's own wall-clock budget."""
    return replace(settings.eval_options, eval_seconds=settings.shadow_eval_budget_ms / 1000)


def open_shadow(
    settings: Settings,
    main: PolicyStore,
    decisions: DecisionLog,
    metrics: Metrics,
    state: StateService | None = None,
    rows: Rows | None = None,
) -> ShadowRunner | None:
    """The shadow of `settings.shadow_policies`, or None when there is none. Its decisions read
    `state` without recording anything; `rows` takes each request's row once its line is
    written (the console's decisions table)."""
    if settings.shadow_policies is None:
        return None
    shadow = ShadowPolicy(settings.shadow_policies, settings)
    metrics.watch_shadow(shadow)
    return ShadowRunner(
        main,
        shadow,
        shadow_options(settings),
        decisions,
        metrics,
        state,
        thread_options=settings.eval_options,
        rows=rows,
    )
