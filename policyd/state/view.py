"""What one decision's rules read state through: the StateReader the engine puts in the context.

A `DecisionState` reads each user once per decision (the locked user's state comes with the
lock), leaves out the request being decided (its own proxy, the session a Login replaces), and
turns a backend that cannot answer into the configured failure. With `recording=False` it is the
view for evaluations that must not change state (`policyd eval`, the console's playground, the
shadow policy, `policyd replay`): rate() answers as if it counted, without counting.

Its calls are counted in the backend's stats as they are made, in the deciding thread's own
table (no lock: see `StateStats`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policyd.errors import StateError
from policyd.state.backend import Backend, Failure, StateUnavailable
from policyd.state.tracking import LOGIN, NEW_PROXY, UserState

_PROXIES_OK = ("proxies", "ok")
_SESSIONS_OK = ("sessions", "ok")


class DecisionState:
    """The state functions' answers for one decision (one thread; never shared)."""

    __slots__ = (
        "_calls",
        "_dry_hits",
        "_users",
        "backend",
        "failure",
        "name",
        "now",
        "offline",
        "op",
        "recording",
        "run_id",
        "user",
    )

    def __init__(
        self,
        backend: Backend,
        op: str,
        user: str,
        run_id: str,
        name: str,
        now: float,
        recording: bool,
        failure: Failure,
        prefetched: Mapping[str, UserState] | None = None,
        offline: bool = False,
    ) -> None:
        """`name` is the proxy being decided (NewProxy); `prefetched` holds the state of users
        read before the rules ran (with the decision's lock, in one round trip)."""
        self.backend = backend
        self.op = op
        self.user = user
        self.run_id = run_id
        self.name = name
        self.now = now
        self.recording = recording
        self.failure = failure
        self.offline = offline
        self._users: dict[str, UserState] = {} if not prefetched else dict(prefetched)
        self._dry_hits: dict[str, int] | None = None
        # The deciding thread's table of call counts: a DecisionState lives in one decide().
        stats = backend.stats
        self._calls = getattr(stats.local, "calls", None) or stats.calls_of_this_thread()

    def _count(self, call: tuple[str, str]) -> None:
        calls = self._calls
        calls[call] = calls.get(call, 0) + 1

    def _unavailable(self, function: str, error: StateUnavailable) -> None:
        """Closed: the rule errors (the op fails closed). Open: the caller answers "empty"."""
        self.backend.stats.failure(self.failure)
        self._count((function, "unavailable"))
        if self.failure is Failure.CLOSED:
            raise StateError(f"{function}(): state backend unavailable: {error}") from None

    def _check_online(self) -> None:
        if self.offline:
            raise StateUnavailable("too many decisions are waiting on the state backend")

    def _state(self, function: str, user: str) -> UserState | None:
        """The user's state, read once per decision (None: the backend failed, open)."""
        try:
            if self.offline:
                self._check_online()
            state = self._users[user] = self.backend.read_user(user, self.now)
        except StateUnavailable as e:
            self._unavailable(function, e)
            return None
        return state

    # proxies() and sessions() are on the request path of every quota rule: the read and the
    # count are written out in each (a call less each).
    def proxies(self, user: str) -> list[dict[str, Any]]:
        state = self._users.get(user) or self._state("proxies", user)
        if state is None:
            return []
        calls = self._calls
        calls[_PROXIES_OK] = calls.get(_PROXIES_OK, 0) + 1
        proxies = state.proxies
        if user == self.user and self.op == NEW_PROXY and self.name in state.proxy_names:
            name = self.name
            return [p for p in proxies if p["name"] != name]
        return proxies  # shared, never changed: rules have no way to change a list or a map

    def sessions(self, user: str) -> list[dict[str, Any]]:
        state = self._users.get(user) or self._state("sessions", user)
        if state is None:
            return []
        calls = self._calls
        calls[_SESSIONS_OK] = calls.get(_SESSIONS_OK, 0) + 1
        sessions = state.sessions
        if user == self.user and self.op == LOGIN and self.run_id:
            return [s for s in sessions if s["run_id"] != self.run_id]
        return sessions

    def rate(self, key: str, limit: int, per_s: float) -> bool:
        try:
            self._check_online()
            if self.recording:
                allowed = self.backend.rate(key, limit, per_s, self.now)
            else:
                dry = self._dry_hits = self._dry_hits or {}
                before = self.backend.hits(key, per_s, self.now) + dry.get(key, 0)
                dry[key] = dry.get(key, 0) + 1
                allowed = before + 1 <= limit
        except StateUnavailable as e:
            self._unavailable("rate", e)
            return True
        self._count(("rate", "under" if allowed else "over"))
        return allowed

    def hits(self, key: str, per_s: float) -> int:
        try:
            self._check_online()
            count = self.backend.hits(key, per_s, self.now)
        except StateUnavailable as e:
            self._unavailable("hits", e)
            return 0
        self._count(("hits", "ok"))
        return count + (self._dry_hits.get(key, 0) if self._dry_hits else 0)


class UsersWanted:
    """A StateReader that answers empty and notes whom it was asked about: a first, throwaway
    evaluation of rules that ask about other users, so that one round trip reads them all.
    It counts nothing and records nothing."""

    __slots__ = ("users",)

    def __init__(self) -> None:
        self.users: set[str] = set()

    def proxies(self, user: str) -> list[dict[str, Any]]:
        self.users.add(user)
        return []

    def sessions(self, user: str) -> list[dict[str, Any]]:
        self.users.add(user)
        return []

    def rate(self, key: str, limit: int, per_s: float) -> bool:
        return True

    def hits(self, key: str, per_s: float) -> int:
        return 0
