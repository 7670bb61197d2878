"""The service's state: the backend chosen by the settings, where decisions that touch it run,
reconciliation with frps's API, and what /status, /readyz and /metrics show of it.

Decisions that touch Redis run in a small thread pool (STATE_THREADS), not on the event loop:
decide() is synchronous and a rule calls a state function in the middle of its evaluation, so
the blocking redis-py calls (each bounded by `state_timeout_ms`) happen in a worker thread while
the loop keeps answering every other request (Ping, NewUserConn: the hot paths). More than
MAX_QUEUED_STATE decisions waiting is itself a state failure, answered at once: a dead Redis
never piles up requests frps waits on. Memory state answers in microseconds and runs inline.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from policyd.engine import StateBinding
from policyd.errors import Location, PolicyError
from policyd.policy import Policy
from policyd.rules.decision import Op
from policyd.service.settings import Settings
from policyd.state.backend import Backend, Failure, ReconcileResult, StateUnavailable
from policyd.state.factory import is_shared, masked_url, open_backend
from policyd.state.frpsapi import FrpsApiError, http_fetch, read_frps
from policyd.state.tracking import Expiry, UserState, request_identity

log = logging.getLogger("policyd.state")
T = TypeVar("T")

STATE_THREADS = 16  # decisions waiting on Redis at once; the loop stays free for the rest
MAX_QUEUED_STATE = 256  # decisions queued for those threads; past it, a state failure at once
COUNTS_CACHE_S = 5.0  # live counts for /metrics and /status are recomputed at most this often
_HEARTBEATS = frozenset({Op.PING, Op.NEW_WORK_CONN, Op.NEW_USER_CONN})  # ops that only refresh a session


def expiry_of(settings: Settings) -> Expiry:
    return Expiry(settings.state_idle_s, settings.state_pending_s, settings.state_proxy_idle_s)


def replica_of(settings: Settings) -> str:
    return settings.state_replica or f"{socket.gethostname()}:{settings.port}"


def open_settings_backend(settings: Settings) -> Backend:
    return open_backend(
        settings.state,
        expiry=expiry_of(settings),
        timeout_s=settings.state_timeout_ms / 1000,
        replica=replica_of(settings),
    )


def workers_problem(settings: Settings, policy: Policy) -> list[PolicyError]:
    """Memory state is one process's: with several workers, a policy calling a state function
    would see a different state in each. Such a policy does not load (at start or on reload)."""
    if settings.workers <= 1 or is_shared(settings.state):
        return []
    out = []
    for rule_file in policy.rules.values():
        for statement in rule_file.statements:
            if statement.state_functions:
                name = sorted(statement.state_functions)[0]
                out.append(
                    PolicyError(
                        f"{name}() needs one state for all {settings.workers} workers, "
                        "and memory state is one per process",
                        Location(statement.location.file, statement.location.line, statement.location.column),
                        hint="serve with --state redis://HOST:PORT/DB, or with --workers 1",
                    )
                )
                break
    return out


class StateService:
    """One per process: the backend, its binding for decisions, the pool, the reconcile loop."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or open_settings_backend(settings)
        self.binding = StateBinding(self.backend, True, Failure(settings.state_failure))
        self.shared = is_shared(settings.state)
        self._pool = (
            ThreadPoolExecutor(STATE_THREADS, thread_name_prefix="policyd-decide") if self.shared else None
        )
        self._queued = 0
        self._counts: tuple[float, tuple[int, int] | None, str] = (0.0, None, "")
        self._stop = threading.Event()
        self._sync: threading.Thread | None = None

    # -- the request path -------------------------------------------------------------------
    def needs_thread(self, policy: Policy, op: Op, content: dict[str, Any]) -> bool:
        """Whether deciding `op` may wait on Redis: its rules call a state function, or the
        policy tracks sessions and the decision will record. A heartbeat whose session was
        written less than a few seconds ago records nothing and is decided on the loop."""
        if self._pool is None:
            return False
        rule_file = policy.rules.get(op)
        if rule_file is not None and rule_file.state_functions:
            return True
        if not policy.tracks_sessions:
            return False
        if op in _HEARTBEATS:
            user, run_id = request_identity(op, content)
            return bool(run_id) and self.backend.touch_due(user, run_id, time.time())
        return True

    async def run(self, fn: Callable[[], T], overflow: Callable[[], T]) -> T:
        """`fn()` in the pool, or `overflow()` at once when too many wait already."""
        assert self._pool is not None
        if self._queued >= MAX_QUEUED_STATE:
            self.backend.stats.failure(self.binding.failure)
            self.backend.stats.error("queue")
            return overflow()
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self._queued -= 1

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.backend.start()
        if self.settings.frps_api_url:
            self._sync = threading.Thread(target=self._sync_loop, name="policyd-frps-sync", daemon=True)
            self._sync.start()

    def close(self) -> None:
        self._stop.set()
        if self._sync is not None:
            self._sync.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.backend.close()

    def reconcile(self) -> ReconcileResult:
        """Read frps's API and make the state agree with it (at start, then every sync period)."""
        s = self.settings
        password = ""
        try:
            if s.frps_api_password_file is not None:
                password = s.frps_api_password_file.read_text().strip()
            view = read_frps(http_fetch(s.frps_api_url, s.frps_api_user, password, 5.0))
            result = self.backend.replace_from_frps(view, time.time())
        except (OSError, FrpsApiError, StateUnavailable) as e:
            result = ReconcileResult(time.time(), error=f"{type(e).__name__}: {e}")
            self.backend.last_reconcile = result
            log.warning("reconcile with frps's API at %s failed: %s", s.frps_api_url, result.error)
            return result
        log.info(
            "reconciled with frps: sessions +%d -%d, proxies +%d -%d",
            result.added_sessions,
            result.dropped_sessions,
            result.added_proxies,
            result.dropped_proxies,
        )
        return result

    def _sync_loop(self) -> None:
        while True:
            self.reconcile()
            if self._stop.wait(self.settings.frps_api_sync_s):
                return

    # -- what the admin endpoints show ------------------------------------------------------
    def counts(self) -> tuple[tuple[int, int] | None, str]:
        """(live sessions, live proxies) or None with why, cached for COUNTS_CACHE_S."""
        at, counts, error = self._counts
        if time.monotonic() - at < COUNTS_CACHE_S:
            return counts, error
        try:
            counts, error = self.backend.counts(time.time()), ""
        except StateUnavailable as e:
            counts, error = None, str(e)
        self._counts = (time.monotonic(), counts, error)
        return counts, error

    def readiness(self, policy: Policy) -> tuple[bool, str]:
        """Unready while the backend is down and a rule of the policy needs it."""
        health = self.backend.health()
        if health.ok or not policy.state_functions:
            return True, ""
        effect = (
            "ops whose rules read state fail closed"
            if self.binding.failure is Failure.CLOSED
            else ("state functions answer empty / under the limit")
        )
        return False, f"state backend {self.backend.describe()} unavailable: {health.detail} ({effect})"

    def status(self, policy: Policy) -> dict[str, Any]:
        health = self.backend.health()
        counts, error = self.counts()
        stats = self.backend.stats
        last = self.backend.last_reconcile
        return {
            "backend": self.backend.kind,
            "url": masked_url(self.settings.state),
            "healthy": health.ok,
            "health": health.detail,
            "health_since": health.since,
            "failure_mode": self.binding.failure.value,
            "failures": dict(stats.failures),
            "used_by_policy": sorted(policy.state_functions),
            "tracking": policy.tracks_sessions,
            "sessions": counts[0] if counts else None,
            "proxies": counts[1] if counts else None,
            "counts_error": error,
            "frps_api": masked_url(self.settings.frps_api_url) if self.settings.frps_api_url else None,
            "last_reconcile": None
            if last is None
            else {
                "at": last.at,
                "error": last.error,
                "sessions_added": last.added_sessions,
                "sessions_dropped": last.dropped_sessions,
                "proxies_added": last.added_proxies,
                "proxies_dropped": last.dropped_proxies,
            },
        }

    def listing(self, user: str | None, rates: str | None) -> dict[str, Any]:
        """/state: sessions and proxies per user (and the counts behind rate() with `rates`)."""
        now = time.time()
        snapshot = self.backend.snapshot(now, user)
        out: dict[str, Any] = {"backend": self.backend.kind, "at": now, "users": users_json(snapshot)}
        if rates is not None:
            counts = self.backend.rate_counts(now, rates)
            out["rates"] = {k: {"count": c.count, "per_s": c.per_s} for k, c in counts.items()}
        return out

    def snapshot(self, limit: int) -> dict[str, Any]:
        """What the console's Live state page reads (policyd.console.app.LiveState): at most
        `limit` users and rate keys, JSON-ready."""
        now = time.time()
        health = self.backend.health()
        snapshot = self.backend.snapshot(now)
        users = sorted(snapshot)
        rates = self.backend.rate_counts(now, "", limit + 1)
        return {
            "backend": self.backend.kind,
            "healthy": health.ok,
            "detail": "" if health.ok else health.detail,
            "users": [
                {"user": u, "sessions": snapshot[u].sessions, "proxies": snapshot[u].proxies}
                for u in users[:limit]
            ],
            "rates": [{"key": k, "count": c.count, "per_s": c.per_s} for k, c in list(rates.items())[:limit]],
            "truncated": len(users) > limit or len(rates) > limit,
        }


def users_json(snapshot: dict[str, UserState]) -> dict[str, Any]:
    return {u: {"sessions": s.sessions, "proxies": s.proxies} for u, s in sorted(snapshot.items())}
