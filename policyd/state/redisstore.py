"""The Redis backend: state shared by several policyd replicas (e.g. one per frps of a fleet).

Layout (every key under `policyd:`, every key with a TTL):
- `u:<user>`: a hash of that user's entries (`s:<sid>`, `p:<proxy>`; JSON, see tracking), with
  the replica that wrote each; expires USER_TTL_S after its last write.
- `users`: a sorted set of users by last write (what `policyd state` lists).
- `replicas`: a sorted set of replica ids by lease end. A replica renews its lease every
  LEASE_S / 3; an entry whose replica's lease ran out is dead (its frps went with it), and reads
  and sweeps drop it. A restart under the same replica id (`--state-replica`) keeps its entries.
- `rate:<key>`: a sorted set of hit times, the newest max(limit, RATE_MIN_KEEP) kept; expires
  after its period.
- `lock:<scope>`: a decide-and-record lock (a token, SET NX PX), released by the record.

Every call has the socket timeout `timeout_s` and no retry; a failure opens a breaker for
BREAKER_S (calls fail at once instead of each waiting out the timeout), and the upkeep thread's
PING closes it when Redis answers again. Updates are Lua scripts (atomic); reads of several keys
are one pipelined round trip.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from policyd.state.backend import (
    RATE_MIN_KEEP,
    Backend,
    FrpsView,
    Held,
    RateCount,
    ReconcileResult,
    StateUnavailable,
)
from policyd.state.factory import masked_url
from policyd.state.reconcile import TableChanges, add_totals, by_user, reconcile_user, result_of
from policyd.state.tracking import (
    MAX_PENDING_PER_USER,
    Effect,
    Expiry,
    Preset,
    UserState,
    dead_keys,
    live,
    new_pending_sid,
)

log = logging.getLogger("policyd.state")

PREFIX = "policyd:"
LEASE_S = 30.0  # a replica's entries outlive it by this much (a restart within it keeps them)
USER_TTL_S = 7 * 86_400  # a user's hash expires this long after its last write
BREAKER_S = 1.0  # after a failure, calls fail at once for this long (the upkeep thread retries)
LOCK_POLL_S = (0.0005, 0.001, 0.002, 0.005)  # waits between tries of a taken lock, then the last
SNAPSHOT_BATCH = 500  # users read per pipeline by snapshot()

_RATE = """
local before = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
local n = redis.call('ZCARD', KEYS[1])
local keep = tonumber(ARGV[4])
if n > keep then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1) end
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return before
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# One request's effects on one user's hash (tracking.apply is the definition), then the lock
# released. KEYS: user hash, users zset, lock. ARGV: now, replica, lock token, user ttl (ms),
# user name, effects (JSON), a new pending sid, max pending sessions.
_APPLY = """
local now, replica = tonumber(ARGV[1]), ARGV[2]
local function pending_sorted()
  local all = redis.call('HGETALL', KEYS[1])
  local out = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 10) == 's:pending:' then
      table.insert(out, {all[i], cjson.decode(all[i + 1])})
    end
  end
  table.sort(out, function(a, b) return (a[2].since or 0) < (b[2].since or 0) end)
  return out
end
local function touch(run_id)
  local key = 's:' .. run_id
  local raw = redis.call('HGET', KEYS[1], key)
  if raw then
    local s = cjson.decode(raw)
    s.last_seen = now
    s.r = replica
    redis.call('HSET', KEYS[1], key, cjson.encode(s))
    return
  end
  local pending = pending_sorted()
  local s
  if #pending > 0 then
    s = pending[1][2]
    redis.call('HDEL', KEYS[1], pending[1][1])
    s.pending = nil
    s.run_id = run_id
  else
    s = {run_id = run_id, client_address = '', since = now}
  end
  s.last_seen = now
  s.r = replica
  redis.call('HSET', KEYS[1], key, cjson.encode(s))
end
for _, e in ipairs(cjson.decode(ARGV[6])) do
  if e.kind == 'close' then
    redis.call('HDEL', KEYS[1], 'p:' .. e.name)
  elseif e.kind == 'login' then
    local record = e.record
    record.r = replica
    if e.run_id ~= '' then
      local all = redis.call('HGETALL', KEYS[1])
      for i = 1, #all, 2 do
        if string.sub(all[i], 1, 2) == 'p:' and cjson.decode(all[i + 1]).run_id == e.run_id then
          redis.call('HDEL', KEYS[1], all[i])
        end
      end
      redis.call('HSET', KEYS[1], 's:' .. e.run_id, cjson.encode(record))
    else
      local pending = pending_sorted()
      for i = 1, #pending - tonumber(ARGV[8]) + 1 do redis.call('HDEL', KEYS[1], pending[i][1]) end
      record.pending = true
      redis.call('HSET', KEYS[1], 's:' .. ARGV[7], cjson.encode(record))
    end
  else
    if e.kind == 'proxy' then
      local record = e.record
      record.r = replica
      redis.call('HSET', KEYS[1], 'p:' .. e.name, cjson.encode(record))
    end
    if e.run_id ~= '' then touch(e.run_id) end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], now, ARGV[5])
else
  redis.call('ZREM', KEYS[2], ARGV[5])
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return 1
"""


def _decode(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        try:
            entry = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            out[key.decode("utf-8", "replace")] = entry
    return out


class RedisBackend(Backend):
    kind = "redis"
    remote = True

    def __init__(self, url: str, expiry: Expiry, timeout_s: float, replica: str) -> None:
        super().__init__(expiry, timeout_s)
        self.url = url
        self.replica = replica
        self.lease_s = LEASE_S
        self.lock_lease_s = max(2.0, 4 * timeout_s)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._rate = self.client.register_script(_RATE)
        self._release = self.client.register_script(_RELEASE)
        self._apply = self.client.register_script(_APPLY)
        self._broken_until = 0.0
        self._stop = threading.Event()
        self._upkeep: threading.Thread | None = None

    def describe(self) -> str:
        return masked_url(self.url)

    # -- every round trip goes through here -----------------------------------------------
    def _call(self, operation: str, fn: Callable[[], Any]) -> Any:
        if time.monotonic() < self._broken_until:
            self.stats.error(operation)
            raise StateUnavailable(f"redis unavailable ({self._health.detail})")
        started = time.perf_counter()
        try:
            result = fn()
        except redis.RedisError as e:
            self.stats.error(operation)
            self._broken_until = time.monotonic() + BREAKER_S
            self._set_health(False, f"{type(e).__name__}: {e}")
            raise StateUnavailable(f"redis {operation}: {type(e).__name__}: {e}") from None
        self.stats.round_trip(time.perf_counter() - started)
        if not self._health.ok:
            self._set_health(True, "ok")
        return result

    def _alive(self, leases: list[tuple[bytes, float]], now: float) -> Callable[[str], bool]:
        live_replicas = {r.decode() for r, until in leases if until >= now} | {self.replica}
        return lambda r: r in live_replicas

    def _pipeline_users(
        self, users: Sequence[str], now: float, lock: tuple[str, str] | None = None
    ) -> list[Any]:
        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            if lock is not None:
                pipe.set(PREFIX + "lock:" + lock[0], lock[1], nx=True, px=int(self.lock_lease_s * 1000))
            for user in users:
                pipe.hgetall(PREFIX + "u:" + user)
            pipe.zrangebyscore(PREFIX + "replicas", now, "+inf", withscores=True)
            return pipe.execute()

        return self._call("read", run)  # type: ignore[no-any-return]

    def _states(self, users: Sequence[str], raws: list[Any], leases: Any, now: float) -> dict[str, UserState]:
        alive = self._alive(leases, now)
        return {u: live(_decode(raw), now, self.expiry, alive) for u, raw in zip(users, raws, strict=True)}

    # -- reads ----------------------------------------------------------------------------
    def read_users(self, users: Sequence[str], now: float) -> dict[str, UserState]:
        results = self._pipeline_users(users, now)
        return self._states(users, results[:-1], results[-1], now)

    def rate(self, key: str, limit: int, per_s: float, now: float) -> bool:
        member = f"{now!r}:{per_s!r}:{secrets.token_hex(4)}"  # the period, for rate_counts()
        keep = max(limit, RATE_MIN_KEEP)
        args: list[str | int] = [repr(now), repr(now - per_s), int(per_s * 1000) + 1, keep, member]
        before = self._call("rate", lambda: self._rate(keys=[PREFIX + "rate:" + key], args=args))
        return int(before) + 1 <= limit

    def hits(self, key: str, per_s: float, now: float) -> int:
        return int(
            self._call(
                "hits", lambda: self.client.zcount(PREFIX + "rate:" + key, f"({now - per_s!r}", "+inf")
            )
        )

    # -- decide-and-record ----------------------------------------------------------------
    def acquire(self, scope: str, prefetch: Sequence[str], now: float) -> Held:
        token = secrets.token_hex(8)
        users = list(prefetch)
        deadline = time.monotonic() + self.timeout_s
        tries = 0
        while True:
            results = self._pipeline_users(users, now, (scope, token))
            if results[0]:
                held = Held(scope, token)
                if users:
                    held.prefetched = self._states(users, results[1:-1], results[-1], now)
                return held
            if tries == 0:
                self.stats.lock_waits += 1
            if time.monotonic() >= deadline:
                self.stats.error("lock")
                raise StateUnavailable(f"the state lock of {scope!r} was not free within {self.timeout_s:g}s")
            time.sleep(LOCK_POLL_S[min(tries, len(LOCK_POLL_S) - 1)])
            tries += 1

    def release(self, held: Held) -> None:
        if held.released:
            return
        held.released = True
        with contextlib.suppress(StateUnavailable):  # else the lock's lease ends it
            self._call(
                "unlock", lambda: self._release(keys=[PREFIX + "lock:" + held.scope], args=[held.token])
            )

    def record(self, user: str, changes: Sequence[Effect], now: float, held: Held | None = None) -> None:
        payload = orjson.dumps(
            [{"kind": c.kind, "run_id": c.run_id, "name": c.name, "record": c.record or {}} for c in changes]
        )
        keys = [PREFIX + "u:" + user, PREFIX + "users", PREFIX + "lock:" + (held.scope if held else "")]
        args: list[str | int | bytes] = [
            repr(now),
            self.replica,
            held.token if held is not None else "",
            USER_TTL_S * 1000,
            user,
            payload,
            new_pending_sid(),
            MAX_PENDING_PER_USER,
        ]
        self._call("record", lambda: self._apply(keys=keys, args=args))
        if held is not None:
            held.released = True

    # -- operations -----------------------------------------------------------------------
    def _users(self, now: float) -> list[str]:
        raw = self._call(
            "users", lambda: self.client.zrangebyscore(PREFIX + "users", now - USER_TTL_S, "+inf")
        )
        return sorted(u.decode("utf-8", "replace") for u in raw)

    def snapshot(self, now: float, user: str | None = None) -> dict[str, UserState]:
        users = [user] if user is not None else self._users(now)
        out: dict[str, UserState] = {}
        for start in range(0, len(users), SNAPSHOT_BATCH):
            out.update(self.read_users(users[start : start + SNAPSHOT_BATCH], now))
        return {u: s for u, s in out.items() if s.sessions or s.proxies}

    def rate_counts(self, now: float, prefix: str = "", limit: int = 0) -> dict[str, RateCount]:
        def run() -> dict[str, RateCount]:
            keys = sorted(
                self.client.scan_iter(match=PREFIX + "rate:" + _glob_escape(prefix) + "*", count=1000)
            )
            if limit:
                keys = keys[:limit]
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.zrange(k, -1, -1)  # the newest hit names its period (see rate())
                pipe.zcard(k)
            answers = pipe.execute()
            skip = len(PREFIX + "rate:")
            out = {}
            for k, newest, count in zip(keys, answers[::2], answers[1::2], strict=True):
                if count:
                    per = _member_period(newest[0]) if newest else 0.0
                    out[k.decode("utf-8", "replace")[skip:]] = RateCount(int(count), per)
            return out

        return self._call("rate_counts", run)  # type: ignore[no-any-return]

    def replace_from_frps(self, view: FrpsView, now: float) -> ReconcileResult:
        proxies, clients = by_user(view)
        users = set(self._users(now)) | set(proxies) | set(clients or {})
        totals = TableChanges()
        for user in sorted(users):
            changes = self._call(
                "reconcile",
                lambda user=user: self._reconcile_user(  # type: ignore[misc]
                    user, proxies.get(user, []), None if clients is None else clients.get(user, []), now
                ),
            )
            add_totals(totals, changes)
        result = result_of(totals, now)
        self.last_reconcile = result
        return result

    def _reconcile_user(self, user: str, proxies: Any, clients: Any, now: float) -> TableChanges:
        key = PREFIX + "u:" + user
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    table = _decode(pipe.hgetall(key))
                    changes = reconcile_user(table, proxies, clients, now, self.replica)
                    pipe.multi()
                    if changes.deletes:
                        pipe.hdel(key, *changes.deletes)
                    for field, entry in changes.sets.items():
                        pipe.hset(key, field, orjson.dumps(entry))
                    if changes.sets:
                        pipe.pexpire(key, USER_TTL_S * 1000)
                        pipe.zadd(PREFIX + "users", {user: now})
                    pipe.execute()
                    return changes
                except redis.WatchError:
                    continue

    def preset(self, preset: Preset, now: float) -> None:
        def run() -> None:
            pipe = self.client.pipeline()
            for user, entries in preset.entries.items():
                for field, entry in entries.items():
                    pipe.hset(PREFIX + "u:" + user, field, orjson.dumps({**entry, "r": self.replica}))
                pipe.pexpire(PREFIX + "u:" + user, USER_TTL_S * 1000)
                pipe.zadd(PREFIX + "users", {user: now})
            for key, count in preset.rates.items():
                if count:
                    pipe.zadd(PREFIX + "rate:" + key, {f"{now!r}:preset:{i}": now for i in range(count)})
                    pipe.pexpire(PREFIX + "rate:" + key, 7 * 86_400_000)
            pipe.execute()

        self._call("preset", run)

    # -- upkeep ---------------------------------------------------------------------------
    def renew(self) -> None:
        """Renew this replica's lease, forget long-gone replicas, and sweep dead entries of
        users this replica wrote last (one round trip when Redis is healthy)."""
        now = time.time()

        def run() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(PREFIX + "replicas", {self.replica: now + self.lease_s})
            pipe.zremrangebyscore(PREFIX + "replicas", "-inf", now - 3600)
            pipe.pexpire(PREFIX + "replicas", USER_TTL_S * 1000)
            pipe.zremrangebyscore(PREFIX + "users", "-inf", now - USER_TTL_S)
            pipe.execute()

        self._broken_until = 0.0  # the upkeep call itself tests whether Redis is back
        self._call("renew", run)

    def sweep(self, now: float) -> int:
        """Delete the entries no read would show (dead replicas, expired sessions)."""
        removed = 0
        for user in self._users(now):
            key = PREFIX + "u:" + user
            results = self._pipeline_users([user], now)
            table = _decode(results[0])
            dead = dead_keys(table, now, self.expiry, self._alive(results[-1], now))
            if dead:
                self._call("sweep", lambda key=key, dead=dead: self.client.hdel(key, *dead))  # type: ignore[misc]
                removed += len(dead)
        return removed

    def start(self) -> None:
        if self._upkeep is not None:
            return
        try:
            self.renew()
        except StateUnavailable as e:
            log.warning("state backend %s unavailable at start: %s", self.describe(), e)
        self._upkeep = threading.Thread(target=self._run_upkeep, name="policyd-state", daemon=True)
        self._upkeep.start()

    def _run_upkeep(self) -> None:
        every = min(self.lease_s / 3, BREAKER_S)
        last_sweep = time.monotonic()
        while not self._stop.wait(every):
            try:
                self.renew()
                if time.monotonic() - last_sweep > self.lease_s:
                    last_sweep = time.monotonic()
                    self.sweep(time.time())
            except StateUnavailable as e:
                log.debug("state upkeep: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._upkeep is not None:
            self._upkeep.join(timeout=2 * self.timeout_s + 1)
        self.client.close()


def _member_period(member: bytes) -> float:
    """The period a rate() hit was counted for, from its member `time:period:token`."""
    parts = member.decode("ascii", "replace").split(":")
    try:
        return float(parts[1]) if len(parts) == 3 else 0.0
    except ValueError:
        return 0.0


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
