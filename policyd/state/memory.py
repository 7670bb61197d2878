"""The memory backend: one process's state in dicts, under one lock (the default, zero set-up).

Every call holds `_lock` for microseconds: reads copy what the rules see, writes change one
user's table. Decide-and-record locks are per scope (a user, or `*`), so one user's decisions
wait only for each other. Dead entries go when read, and a sweep on writes keeps tables of
users nobody reads from growing.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from policyd.state.backend import (
    RATE_MIN_KEEP,
    Backend,
    FrpsView,
    Held,
    RateCount,
    ReconcileResult,
    StateUnavailable,
)
from policyd.state.reconcile import reconcile_tables
from policyd.state.tracking import (
    DEFAULT_EXPIRY,
    EMPTY,
    Effect,
    Expiry,
    Preset,
    UserState,
    apply,
    dead_keys,
    live,
    new_pending_sid,
)

MAX_RATE_KEYS = 100_000  # rate() keys kept; past it, the key hit longest ago is forgotten
MAX_RATE_HITS = 2_000_000  # rate() hits kept over all keys (~64 MB); past it, the same
SWEEP_EVERY_WRITES = 1_000  # a sweep of dead entries after this many writes
MAX_CACHED_USERS = 100_000  # users whose live state is kept computed; past it the cache starts over


class _Rate:
    __slots__ = ("hits", "keep", "per_s")

    def __init__(self) -> None:
        self.hits: list[float] = []  # ascending; the newest `keep` hits
        self.keep = RATE_MIN_KEEP
        self.per_s = 0.0  # the longest period asked about: the key is dropped when it is over


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self, expiry: Expiry = DEFAULT_EXPIRY, timeout_s: float = 1.0) -> None:
        super().__init__(expiry, timeout_s)
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._rates: OrderedDict[str, _Rate] = OrderedDict()
        self._scopes: dict[str, threading.Lock] = {}
        self._writes = 0
        self._stored = 0  # rate() hits kept over every key
        # Each user's live state as last computed, with when it was: valid until a write to the
        # user or its `until` (the first expiry), so a read is a dict lookup.
        self._live: dict[str, tuple[float, UserState]] = {}

    # -- reads ----------------------------------------------------------------------------
    def read_users(self, users: Sequence[str], now: float) -> dict[str, UserState]:
        if len(users) == 1:  # the common read: a cached state needs no lock (the entry is immutable)
            (user,) = users
            cached = self._live.get(user)
            if cached is not None and cached[0] <= now < cached[1].until:
                return {user: cached[1]}
        with self._lock:
            return {u: self._read(u, now) for u in users}

    def read_user(self, user: str, now: float) -> UserState:
        cached = self._live.get(user)  # as read_users(): a cached state needs no lock
        if cached is not None and cached[0] <= now < cached[1].until:
            return cached[1]
        with self._lock:
            return self._read(user, now)

    def _read(self, user: str, now: float) -> UserState:
        cached = self._live.get(user)
        if cached is not None and cached[0] <= now < cached[1].until:
            return cached[1]
        table = self._tables.get(user)
        if table is None:
            return EMPTY
        state = live(table, now, self.expiry)
        if len(self._live) >= MAX_CACHED_USERS:
            self._live.clear()
        self._live[user] = (now, state)
        return state

    def rate(self, key: str, limit: int, per_s: float, now: float) -> bool:
        with self._lock:
            rate = self._rates.get(key)
            if rate is None:
                rate = self._rates[key] = _Rate()
            else:
                self._rates.move_to_end(key)
            rate.keep = max(rate.keep, limit)
            rate.per_s = max(rate.per_s, per_s)
            # At least `keep` newest hits are kept, so fewer than `limit` in the window is exact.
            before = _count(rate, now - per_s)
            hits = rate.hits
            if hits and now < hits[-1]:
                bisect.insort(hits, now)  # a clock that went back (or a caller's `now`)
            else:
                hits.append(now)
            self._stored += 1
            if len(hits) >= 2 * rate.keep:  # trimmed in halves: O(1) a hit on average
                drop = len(hits) - rate.keep
                del hits[:drop]
                self._stored -= drop
            while self._stored > MAX_RATE_HITS or len(self._rates) > MAX_RATE_KEYS:
                _, oldest = self._rates.popitem(last=False)
                self._stored -= len(oldest.hits)
            return before + 1 <= limit

    def hits(self, key: str, per_s: float, now: float) -> int:
        with self._lock:
            rate = self._rates.get(key)
            return 0 if rate is None else _count(rate, now - per_s)

    # -- decide-and-record ----------------------------------------------------------------
    def acquire(self, scope: str, prefetch: Sequence[str], now: float) -> Held:
        with self._lock:
            lock = self._scopes.get(scope)
            if lock is None:
                lock = self._scopes[scope] = threading.Lock()
        if not lock.acquire(timeout=self.timeout_s):
            self.stats.error("lock")
            raise StateUnavailable(f"the state lock of {scope!r} was not free within {self.timeout_s:g}s")
        held = Held(scope, "")
        if prefetch:
            held.prefetched = self.read_users(prefetch, now)
        return held

    def release(self, held: Held) -> None:
        if held.released:
            return
        held.released = True
        lock = self._scopes.get(held.scope)
        if lock is not None and lock.locked():
            lock.release()

    def record(self, user: str, changes: Sequence[Effect], now: float, held: Held | None = None) -> None:
        try:
            with self._lock:
                self._live.pop(user, None)
                table = self._tables.setdefault(user, {})
                for change in changes:
                    apply(table, change, now, "", new_pending_sid)
                if not table:
                    del self._tables[user]
                self._writes += 1
                if self._writes % SWEEP_EVERY_WRITES == 0:
                    self._sweep(now)
        finally:
            if held is not None:
                self.release(held)

    def _sweep(self, now: float) -> None:
        self._live.clear()
        for user in list(self._tables):
            table = self._tables[user]
            for key in dead_keys(table, now, self.expiry):
                del table[key]
            if not table:
                del self._tables[user]
        for key in [k for k, r in self._rates.items() if not r.hits or r.hits[-1] <= now - r.per_s]:
            self._stored -= len(self._rates.pop(key).hits)

    # -- operations -----------------------------------------------------------------------
    def snapshot(self, now: float, user: str | None = None) -> dict[str, UserState]:
        with self._lock:
            users = [user] if user is not None else sorted(self._tables)
            out = {u: self._read(u, now) for u in users}
        return {u: s for u, s in out.items() if s.sessions or s.proxies}

    def rate_counts(self, now: float, prefix: str = "", limit: int = 0) -> dict[str, RateCount]:
        with self._lock:
            out = {
                k: RateCount(_count(r, now - r.per_s), r.per_s)
                for k, r in self._rates.items()
                if k.startswith(prefix) and r.hits and r.hits[-1] > now - r.per_s
            }
        keys = sorted(out)[:limit] if limit else sorted(out)
        return {k: out[k] for k in keys}

    def replace_from_frps(self, view: FrpsView, now: float) -> ReconcileResult:
        with self._lock:
            self._live.clear()
            result = reconcile_tables(self._tables, view, now, "")
        self.last_reconcile = result
        return result

    def preset(self, preset: Preset, now: float) -> None:
        with self._lock:
            self._live.clear()
            for user, entries in preset.entries.items():
                table = self._tables.setdefault(user, {})
                for key, entry in entries.items():
                    table[key] = {**entry, "r": ""}
            for key, count in preset.rates.items():
                rate = self._rates.setdefault(key, _Rate())
                rate.per_s = max(rate.per_s, 7 * 86_400.0)
                rate.keep = max(rate.keep, count)
                rate.hits.extend([now] * count)
                rate.hits.sort()
                self._stored += count


def _count(rate: _Rate, after: float) -> int:
    """Hits later than `after` (the list is ascending), at most the `keep` it promises."""
    return min(len(rate.hits) - bisect.bisect_right(rate.hits, after), rate.keep)
