"""What each op records, and when a recorded session or proxy stops being live.

Both backends keep, per user, one table of entries: `s:<sid>` for a session (sid is its run_id,
or `pending:<id>` until frps reveals the run_id) and `p:<proxy_name>` for a proxy, each a plain
JSON-able dict. `effects()` turns one decided request into the changes to make; `live()` reads a
user's table into what the rules see. The same functions serve both backends, so the expiry
rules are written once.

What policyd can know, and what not (docs/state.md says it for operators):
- frps sends no logout. A session starts with an allowed Login and is refreshed by every op of
  it (Ping, NewWorkConn, NewProxy, NewUserConn carry its run_id). A fresh client's Login has no
  run_id yet (frps assigns it after the plugin answered): the session is *pending* (shown with
  run_id `pending:<id>`) until the first op that carries the run_id binds it, and it ends after
  `pending_s` if none comes (frps refused the Login after policyd allowed it, e.g. a bad token).
- A session ends when it has no live proxy and no op of it arrived within `idle_s`; a Login
  reusing its run_id (a reconnect) replaces it, and its proxies with it (frpc registers them
  again).
- A proxy lives from its allowed NewProxy (as rewritten) until its CloseProxy (frps >= 0.40),
  until its session is replaced, or, with `proxy_idle_s` set (frps < 0.40, which sends no
  CloseProxy: rely on heartbeats), until its session sent no op for that long.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The ops by the names frps sends (policyd.rules.decision.Op is a StrEnum of them; the state
# layer sits beside the rules and imports nothing of them).
LOGIN, NEW_PROXY, CLOSE_PROXY = "Login", "NewProxy", "CloseProxy"
SESSION, PROXY = "s:", "p:"
PENDING = "pending:"
MAX_PENDING_PER_USER = 64  # pending sessions one user may have; the oldest goes first
PROXY_FIELDS = ("name", "type", "remote_port", "subdomain", "custom_domains", "run_id", "since")
SESSION_FIELDS = ("run_id", "client_address", "since", "last_seen")


@dataclass(frozen=True, slots=True)
class Expiry:
    """The expiry rules' settings, in seconds (see the module docstring)."""

    idle_s: float = 120.0
    pending_s: float = 10.0
    proxy_idle_s: float = 0.0  # 0: proxies live until CloseProxy (frps >= 0.40)


DEFAULT_EXPIRY = Expiry()


@dataclass(frozen=True, slots=True)
class Effect:
    """One change to one user's table, made atomically with the others of its request.

    kind: "login" (a session starts: `run_id` replaces that session and drops its proxies, or a
    pending one is added), "proxy" (set `record` under `p:<name>`, then touch `run_id`),
    "close" (delete `p:<name>`), "touch" (refresh the session `run_id`, binding a pending one
    or starting one when policyd did not see its Login).
    """

    kind: str
    user: str
    run_id: str = ""
    name: str = ""
    record: Mapping[str, Any] | None = None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def request_identity(op: str, content: Mapping[str, Any]) -> tuple[str, str]:
    """(user name, run_id) of the client a request is about."""
    if op == LOGIN:
        return _text(content.get("user")), _text(content.get("run_id"))
    user = content.get("user")
    if not isinstance(user, dict):
        return "", ""
    name, run_id = user.get("user"), user.get("run_id")
    if type(name) is str and type(run_id) is str:  # every decision with state asks: _text, inline
        return name, run_id
    return _text(name), _text(run_id)


def request_user(op: str, content: Mapping[str, Any]) -> str:
    return request_identity(op, content)[0]


def request_run_id(op: str, content: Mapping[str, Any]) -> str:
    return request_identity(op, content)[1]


def effects(op: str, content: Mapping[str, Any], allowed: bool, now: float) -> list[Effect]:
    """What one decided request of `op` (its name) records: `content` is what frps acts on (the
    rewritten content for a rewrite). Requests not `allowed` record nothing, except CloseProxy
    (frps ignores the answer: the proxy is gone either way)."""
    user, run_id = request_identity(op, content)
    if op == CLOSE_PROXY:
        return [Effect("close", user, name=_text(content.get("proxy_name")))]
    if not allowed:
        return []
    if op == LOGIN:
        address = _text(content.get("client_address"))
        record = {"run_id": run_id, "client_address": address, "since": now, "last_seen": now}
        return [Effect("login", user, run_id=run_id, record=record)]
    if op == NEW_PROXY:
        name = _text(content.get("proxy_name"))
        port = content.get("remote_port")
        domains = content.get("custom_domains")
        record = {
            "name": name,
            "type": _text(content.get("proxy_type")),
            "remote_port": port if isinstance(port, int) and not isinstance(port, bool) else 0,
            "subdomain": _text(content.get("subdomain")),
            "custom_domains": [d for d in domains if isinstance(d, str)] if isinstance(domains, list) else [],
            "run_id": run_id,
            "since": now,
        }
        return [Effect("proxy", user, run_id=run_id, name=name, record=record)]
    if not run_id:
        return []
    return [Effect("touch", user, run_id=run_id)]


def new_pending_sid() -> str:
    return PENDING + secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class UserState:
    """One user's live sessions and proxies, as the rules see them. Never changed once made
    (decisions share it); `until` is when the first of them may stop being live."""

    sessions: list[dict[str, Any]]
    proxies: list[dict[str, Any]]
    until: float = math.inf
    # The proxies' names: whether the NewProxy being decided is among them, in one lookup.
    proxy_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "proxy_names", frozenset(p.get("name") for p in self.proxies))


EMPTY = UserState([], [])


def live(
    entries: Mapping[str, Mapping[str, Any]],
    now: float,
    expiry: Expiry,
    replica_alive: Callable[[str], bool] | None = None,
) -> UserState:
    """The live sessions and proxies of one user's table (see the module docstring's rules).

    An entry written by a replica that is gone (its lease in Redis ran out) is dead: its frps
    went with it. Without `replica_alive` (the memory backend: one replica), every entry is alive.
    """
    sessions: dict[str, Mapping[str, Any]] = {}
    proxies: list[Mapping[str, Any]] = []
    for key, entry in entries.items():
        if replica_alive is not None and not replica_alive(_text(entry.get("r"))):
            continue
        if key.startswith(SESSION):
            sessions[key[len(SESSION) :]] = entry
        elif key.startswith(PROXY):
            proxies.append(entry)
    live_proxies = []
    until = math.inf
    for proxy in proxies:
        if expiry.proxy_idle_s > 0:
            session = sessions.get(_text(proxy.get("run_id")))
            seen = max(_number(proxy.get("since")), _number(session.get("last_seen")) if session else 0.0)
            if now - seen >= expiry.proxy_idle_s:
                continue
            until = min(until, seen + expiry.proxy_idle_s)
        live_proxies.append(proxy)
    with_proxies = {_text(p.get("run_id")) for p in live_proxies}
    live_sessions: list[Mapping[str, Any]] = []
    for sid, session in sessions.items():
        if sid.startswith(PENDING):
            if now - _number(session.get("since")) < expiry.pending_s:
                # Shown under its sid: no real run_id (nor a fresh Login's "") equals it.
                live_sessions.append({**session, "run_id": sid})
                until = min(until, _number(session.get("since")) + expiry.pending_s)
        elif sid in with_proxies or now - _number(session.get("last_seen")) < expiry.idle_s:
            live_sessions.append(session)
            until = min(until, _number(session.get("last_seen")) + expiry.idle_s)
    return UserState(
        sorted(map(_shown_session, live_sessions), key=lambda s: (s["since"], s["run_id"])),
        sorted(map(_shown_proxy, live_proxies), key=lambda p: (p["since"], p["name"])),
        until,
    )


def dead_keys(
    entries: Mapping[str, Mapping[str, Any]],
    now: float,
    expiry: Expiry,
    replica_alive: Callable[[str], bool] | None = None,
) -> list[str]:
    """The keys of a table that `live()` no longer shows: what a sweep deletes."""
    state = live(entries, now, expiry, replica_alive)
    keep = {SESSION + s["run_id"] for s in state.sessions} | {PROXY + p["name"] for p in state.proxies}
    return [k for k in entries if k not in keep]


_NUMBERS = (int, float)  # a tuple: `int | float` in isinstance() is built anew on every call


def _number(value: Any) -> float:
    return float(value) if isinstance(value, _NUMBERS) and not isinstance(value, bool) else 0.0


def _shown_session(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh dict of the SESSION_FIELDS rules see: rules never hold a stored entry."""
    return {
        "run_id": _text(entry.get("run_id")),
        "client_address": _text(entry.get("client_address")),
        "since": int(_number(entry.get("since"))),
        "last_seen": int(_number(entry.get("last_seen"))),
    }


def _shown_proxy(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh dict of the PROXY_FIELDS rules see (its list copied): rules never hold a stored
    entry. Written out, not looped over the names: every read after a write makes these."""
    port = entry.get("remote_port")
    domains = entry.get("custom_domains")
    return {
        "name": _text(entry.get("name")),
        "type": _text(entry.get("type")),
        "remote_port": port if isinstance(port, int) else 0,
        "subdomain": _text(entry.get("subdomain")),
        "custom_domains": list(domains) if isinstance(domains, list) else [],
        "run_id": _text(entry.get("run_id")),
        "since": int(_number(entry.get("since"))),
    }


def apply(
    entries: dict[str, dict[str, Any]], effect: Effect, now: float, replica: str, new_sid: Callable[[], str]
) -> None:
    """Make one effect on a user's table in place: the memory backend's update, and the
    definition the Redis backend's Lua script follows (tests hold both to the same cases)."""
    if effect.kind == "close":
        entries.pop(PROXY + effect.name, None)
        return
    if effect.kind == "login":
        assert effect.record is not None
        record = {**effect.record, "r": replica}
        if effect.run_id:
            for key in [
                k for k, e in entries.items() if k.startswith(PROXY) and e.get("run_id") == effect.run_id
            ]:
                del entries[key]
            entries[SESSION + effect.run_id] = record
            return
        pending = sorted(
            (k for k in entries if k.startswith(SESSION + PENDING)),
            key=lambda k: _number(entries[k].get("since")),
        )
        for key in pending[: max(0, len(pending) - MAX_PENDING_PER_USER + 1)]:
            del entries[key]
        entries[SESSION + new_sid()] = {**record, "pending": True}
        return
    if effect.kind == "proxy":
        assert effect.record is not None
        entries[PROXY + effect.name] = {**effect.record, "r": replica}
    if effect.run_id:
        _touch(entries, effect.run_id, now, replica)


def _touch(entries: dict[str, dict[str, Any]], run_id: str, now: float, replica: str) -> None:
    key = SESSION + run_id
    session = entries.get(key)
    if session is not None:
        session["last_seen"] = now
        session["r"] = replica
        return
    pending = sorted(
        (k for k in entries if k.startswith(SESSION + PENDING)),
        key=lambda k: _number(entries[k].get("since")),
    )
    if pending:
        bound = entries.pop(pending[0])
        bound.pop("pending", None)
        entries[key] = {**bound, "run_id": run_id, "last_seen": now, "r": replica}
    else:  # a session whose Login policyd did not see (it started before policyd did)
        entries[key] = {"run_id": run_id, "client_address": "", "since": now, "last_seen": now, "r": replica}


class PresetError(ValueError):
    """Raised for a preset state (a test case's `state = {...}`) that is not well-formed."""


@dataclass(frozen=True, slots=True)
class Preset:
    """State given by hand: `{proxies = {user = [...]}, sessions = {user = [...]}, rates = {key = n}}`.

    Each proxy needs `name`; each session `run_id`; missing fields take their zero value and
    `since`/`last_seen` default to now. A rate key's number is how many hits it already has.
    """

    entries: Mapping[str, Mapping[str, Mapping[str, Any]]]  # user → table
    rates: Mapping[str, int]

    @staticmethod
    def parse(doc: Any, now: float) -> Preset:
        if not isinstance(doc, Mapping):
            raise PresetError("state must be a table: { proxies = {...}, sessions = {...}, rates = {...} }")
        unknown = sorted(set(doc) - {"proxies", "sessions", "rates"})
        if unknown:
            raise PresetError(f"state: unknown key '{unknown[0]}' (proxies, sessions, rates)")
        tables: dict[str, dict[str, dict[str, Any]]] = {}
        for kind, prefix, required in (("sessions", SESSION, "run_id"), ("proxies", PROXY, "name")):
            by_user = doc.get(kind, {})
            if not isinstance(by_user, Mapping):
                raise PresetError(f"state.{kind} must be a table of user = [ ... ]")
            for user, items in by_user.items():
                if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
                    raise PresetError(f"state.{kind}.{user} must be a list of tables")
                for item in items:
                    fields = SESSION_FIELDS if kind == "sessions" else PROXY_FIELDS
                    extra = sorted(set(item) - set(fields))
                    if extra:
                        raise PresetError(
                            f"state.{kind}.{user}: unknown field '{extra[0]}' ({', '.join(fields)})"
                        )
                    if not isinstance(item.get(required), str) or not item[required]:
                        raise PresetError(f"state.{kind}.{user}: every entry needs a '{required}' string")
                    entry = {"since": now, **({"last_seen": now} if kind == "sessions" else {}), **item}
                    tables.setdefault(str(user), {})[prefix + item[required]] = entry
        rates = doc.get("rates", {})
        if not isinstance(rates, Mapping) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in rates.values()
        ):
            raise PresetError("state.rates must be a table of key = number of hits")
        return Preset(tables, {str(k): int(v) for k, v in rates.items()})
