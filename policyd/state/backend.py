"""The one interface the engine uses to keep state, and what both backends share.

A backend answers reads (a user's live sessions and proxies; the hits behind rate()), counts
rate() atomically, takes the lock that makes decide-and-record exact, and records what a
decision did. Every call either answers in time or raises StateUnavailable: the engine turns
that into the configured failure (`--state-failure closed|open`), never a hang.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from policyd.state.tracking import EMPTY, Effect, Expiry, Preset, UserState

MAX_TOUCH_EVERY_S = 15.0  # a session's last_seen is written at most this often (Ping, NewWorkConn)
MAX_TOUCHED = 100_000  # sessions whose last write is remembered; past it the memory starts over
RATE_MIN_KEEP = 100  # hits kept per rate() key at least: a key shared by limits up to this is exact
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class StateUnavailable(Exception):
    """Raised when the backend cannot answer within its timeout (down, slow, lock not free)."""


class Failure(enum.Enum):
    """What a rule calling a state function gets when the backend cannot answer."""

    CLOSED = "closed"  # the rule errors: the op fails closed (unless it is a fail-open op)
    OPEN = "open"  # the function answers "empty / under the limit"


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str
    since: float  # when it became what it is


@dataclass
class StateStats:
    """Counts the service exports as metrics; safe to update from any thread.

    State calls are counted per thread, without a lock: a decision adds to its own thread's
    table (`calls_of_this_thread`), which only that thread writes, and `calls` adds the tables
    up when metrics are scraped. A table outlives its thread (counters never go down); the
    threads that decide are a fixed few (the event loop, the state pool, the console's). The
    rest is counted under `lock`: it happens once per failure or round trip, not per call.
    """

    failures: dict[str, int] = field(default_factory=dict)  # failure mode → count
    errors: dict[str, int] = field(default_factory=dict)  # backend operation → errors
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum: float = 0.0
    lock_waits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _per_thread: list[dict[tuple[str, str], int]] = field(default_factory=list, repr=False)
    # Where each thread finds its table (`local.calls`; DecisionState reads it without a call).
    local: threading.local = field(default_factory=threading.local, repr=False)

    def calls_of_this_thread(self) -> dict[tuple[str, str], int]:
        """This thread's (function, result) → count table, to add one decision's calls to."""
        table: dict[tuple[str, str], int] | None = getattr(self.local, "calls", None)
        if table is None:
            table = self.local.calls = {}
            with self.lock:
                self._per_thread.append(table)
        return table

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """(function, result) → count, over every thread (each table copied whole, under the GIL)."""
        total: dict[tuple[str, str], int] = {}
        for table in list(self._per_thread):
            for call, count in dict(table).items():
                total[call] = total.get(call, 0) + count
        return total

    def failure(self, mode: Failure) -> None:
        with self.lock:
            self.failures[mode.value] = self.failures.get(mode.value, 0) + 1

    def error(self, operation: str) -> None:
        with self.lock:
            self.errors[operation] = self.errors.get(operation, 0) + 1

    def round_trip(self, seconds: float) -> None:
        index = next((i for i, b in enumerate(LATENCY_BUCKETS_S) if seconds <= b), len(LATENCY_BUCKETS_S))
        with self.lock:
            self.latency_counts[index] += 1
            self.latency_sum += seconds


@dataclass
class Held:
    """A decide-and-record lock; `prefetched` is the state of the users read with the lock."""

    scope: str
    token: str
    prefetched: dict[str, UserState] = field(default_factory=dict)
    released: bool = False


@dataclass(frozen=True, slots=True)
class RateCount:
    """The hits behind a rate() key: how many are kept within `per_s`, its longest period."""

    count: int
    per_s: float


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What one reconciliation with frps's API changed."""

    at: float
    added_sessions: int = 0
    dropped_sessions: int = 0
    added_proxies: int = 0
    dropped_proxies: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class FrpsClient:
    """A client frps reports (`/api/v2/clients`; absent from older frps)."""

    user: str
    run_id: str
    client_address: str = ""


@dataclass(frozen=True, slots=True)
class FrpsProxy:
    """A proxy frps reports as online (`/api/proxy/{type}`, `/api/v2/proxies`)."""

    user: str
    name: str
    type: str
    remote_port: int = 0
    subdomain: str = ""
    custom_domains: tuple[str, ...] = ()
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class FrpsView:
    """Everything frps's API said at one moment; `clients` is None when frps cannot list them."""

    proxies: tuple[FrpsProxy, ...]
    clients: tuple[FrpsClient, ...] | None = None


class Backend(ABC):
    """Where state lives. One per process, shared by every decision; thread-safe."""

    kind: str = ""
    remote = False  # whether a read is a round trip (then a decision's reads are read together)

    def __init__(self, expiry: Expiry, timeout_s: float) -> None:
        self.expiry = expiry
        self.timeout_s = timeout_s
        self.stats = StateStats()
        self._health = Health(True, "ok", time.time())
        self.last_reconcile: ReconcileResult | None = None
        self._touched: dict[tuple[str, str], float] = {}
        # A quarter of the idle time keeps an active session well away from expiring.
        self._touch_every_s = min(MAX_TOUCH_EVERY_S, expiry.idle_s / 4)

    def touch_due(self, user: str, run_id: str, now: float) -> bool:
        """Whether should_touch() would write now (without marking it written)."""
        last = self._touched.get((user, run_id))
        return last is None or now - last >= self._touch_every_s

    def should_touch(self, user: str, run_id: str, now: float) -> bool:
        """Whether a heartbeat of this session must be written: Ping and NewWorkConn are hot
        paths, so a session is refreshed at most every `_touch_every_s` (the first always)."""
        key = (user, run_id)
        last = self._touched.get(key)
        if last is not None and now - last < self._touch_every_s:
            return False
        if len(self._touched) >= MAX_TOUCHED:
            self._touched.clear()
        self._touched[key] = now
        return True

    # -- reads and counts: each one round trip at most ------------------------------------
    @abstractmethod
    def read_users(self, users: Sequence[str], now: float) -> dict[str, UserState]:
        """The live state of each user (one pipelined round trip for all of them)."""

    def read_user(self, user: str, now: float) -> UserState:
        """One user's live state: read_users() of one (a backend may answer it faster)."""
        return self.read_users([user], now)[user]

    @abstractmethod
    def rate(self, key: str, limit: int, per_s: float, now: float) -> bool:
        """Count one hit under `key` and answer whether it is at most the `limit`-th in the
        last `per_s` seconds: atomically, so racing decisions cannot both take the last one."""

    @abstractmethod
    def hits(self, key: str, per_s: float, now: float) -> int:
        """The hits counted under `key` in the last `per_s` seconds (at most what is kept)."""

    # -- decide-and-record ----------------------------------------------------------------
    @abstractmethod
    def acquire(self, scope: str, prefetch: Sequence[str], now: float) -> Held:
        """Take the decide-and-record lock of `scope`, reading the `prefetch` users' state with it."""

    @abstractmethod
    def release(self, held: Held) -> None:
        """Give a lock back (safe to call twice)."""

    @abstractmethod
    def record(self, user: str, changes: Sequence[Effect], now: float, held: Held | None = None) -> None:
        """Make a request's effects on one user's entries atomically; release `held` with them."""

    @contextmanager
    def locked(self, scope: str, prefetch: Sequence[str], now: float) -> Iterator[Held]:
        held = self.acquire(scope, prefetch, now)
        try:
            yield held
        finally:
            self.release(held)

    # -- operations -----------------------------------------------------------------------
    @abstractmethod
    def snapshot(self, now: float, user: str | None = None) -> dict[str, UserState]:
        """Every user with live state (or just `user`), for `policyd state` and the console."""

    @abstractmethod
    def rate_counts(self, now: float, prefix: str = "", limit: int = 0) -> dict[str, RateCount]:
        """Each rate() key (starting with `prefix`; at most `limit` of them, 0: all) that is
        still counting: the hits it keeps in its longest period."""

    @abstractmethod
    def replace_from_frps(self, view: FrpsView, now: float) -> ReconcileResult:
        """Drop what frps does not have and add what it has (policyd.state.frpsapi reads it)."""

    @abstractmethod
    def preset(self, preset: Preset, now: float) -> None:
        """Add sessions, proxies and rate() hits given by hand (test cases, `policyd eval`)."""

    def counts(self, now: float) -> tuple[int, int]:
        """(live sessions, live proxies) over every user."""
        snap = self.snapshot(now)
        return sum(len(s.sessions) for s in snap.values()), sum(len(s.proxies) for s in snap.values())

    def health(self) -> Health:
        return self._health

    def _set_health(self, ok: bool, detail: str) -> None:
        if ok != self._health.ok or detail != self._health.detail:
            self._health = Health(ok, detail, time.time())

    def describe(self) -> str:
        """The backend as /status shows it (no password)."""
        return self.kind

    def start(self) -> None:  # noqa: B027 - optional: background upkeep
        """Start background upkeep (Redis: the replica's lease, health checks)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Stop background upkeep and let connections go."""


def user_or_empty(states: Mapping[str, UserState], user: str) -> UserState:
    return states.get(user, EMPTY)
