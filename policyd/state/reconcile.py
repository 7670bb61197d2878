"""Reconciliation: make the tracked state agree with what frps's API reports.

frps is the source of truth: it may have failed a proxy policyd allowed (port in use, a later
plugin in the chain refused it), and policyd may have restarted and missed ops. A reconcile
drops every proxy (and, where frps lists clients, every session) frps does not have, and adds
what it has. Entries younger than RECONCILE_GRACE_S are kept: frps may not list a proxy or a
client it is still registering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policyd.state.backend import FrpsProxy, FrpsView, ReconcileResult
from policyd.state.tracking import PENDING, PROXY, SESSION

RECONCILE_GRACE_S = 10.0  # an entry this young may be one frps is still registering


@dataclass
class TableChanges:
    """What reconciling one user's table changes."""

    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    added_sessions: int = 0
    dropped_sessions: int = 0
    added_proxies: int = 0
    dropped_proxies: int = 0


def _young(entry: Mapping[str, Any], now: float) -> bool:
    since = entry.get("since")
    return isinstance(since, int | float) and now - since < RECONCILE_GRACE_S


def reconcile_user(
    table: Mapping[str, Mapping[str, Any]],
    proxies: list[FrpsProxy],
    clients: list[tuple[str, str]] | None,
    now: float,
    replica: str,
) -> TableChanges:
    """The changes that make one user's table hold exactly frps's proxies (and clients)."""
    out = TableChanges()
    reported = {PROXY + p.name: p for p in proxies}
    for key, entry in table.items():
        if key.startswith(PROXY) and key not in reported and not _young(entry, now):
            out.deletes.append(key)
            out.dropped_proxies += 1
    for key, proxy in reported.items():
        if key in table:
            continue
        out.sets[key] = {
            "name": proxy.name,
            "type": proxy.type,
            "remote_port": proxy.remote_port,
            "subdomain": proxy.subdomain,
            "custom_domains": list(proxy.custom_domains),
            "run_id": proxy.run_id,
            "since": now,
            "r": replica,
        }
        out.added_proxies += 1
    if clients is None:
        return out
    known = {run_id for run_id, _ in clients}
    for key, entry in table.items():
        if not key.startswith(SESSION) or key.startswith(SESSION + PENDING):
            continue
        if key[len(SESSION) :] not in known and not _young(entry, now):
            out.deletes.append(key)
            out.dropped_sessions += 1
    for run_id, address in clients:
        key = SESSION + run_id
        if key in table:  # frps has it: it is alive now, whatever its heartbeats said
            out.sets[key] = {**table[key], "last_seen": now}
        else:
            out.sets[key] = {
                "run_id": run_id,
                "client_address": address,
                "since": now,
                "last_seen": now,
                "r": replica,
            }
            out.added_sessions += 1
    return out


def by_user(view: FrpsView) -> tuple[dict[str, list[FrpsProxy]], dict[str, list[tuple[str, str]]] | None]:
    proxies: dict[str, list[FrpsProxy]] = {}
    for p in view.proxies:
        proxies.setdefault(p.user, []).append(p)
    if view.clients is None:
        return proxies, None
    clients: dict[str, list[tuple[str, str]]] = {}
    for c in view.clients:
        clients.setdefault(c.user, []).append((c.run_id, c.client_address))
    return proxies, clients


def reconcile_tables(
    tables: dict[str, dict[str, dict[str, Any]]], view: FrpsView, now: float, replica: str
) -> ReconcileResult:
    """Reconcile every user's table in place (the memory backend, under its lock)."""
    proxies, clients = by_user(view)
    users = set(tables) | set(proxies) | set(clients or {})
    totals = TableChanges()
    for user in sorted(users):
        table = tables.get(user, {})
        changes = reconcile_user(
            table, proxies.get(user, []), None if clients is None else clients.get(user, []), now, replica
        )
        for key in changes.deletes:
            table.pop(key, None)
        table.update(changes.sets)
        if table:
            tables[user] = table
        else:
            tables.pop(user, None)
        add_totals(totals, changes)
    return result_of(totals, now)


def add_totals(totals: TableChanges, changes: TableChanges) -> None:
    totals.added_sessions += changes.added_sessions
    totals.dropped_sessions += changes.dropped_sessions
    totals.added_proxies += changes.added_proxies
    totals.dropped_proxies += changes.dropped_proxies


def result_of(totals: TableChanges, now: float) -> ReconcileResult:
    return ReconcileResult(
        now, totals.added_sessions, totals.dropped_sessions, totals.added_proxies, totals.dropped_proxies
    )
