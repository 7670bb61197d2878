"""What `/status` and `/readyz` report: the serving policy, the last reload, the settings in force.

Plain functions of the store and settings, so the HTTP layer only serialises what they return.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from policyd import __version__
from policyd.errors import PolicyError
from policyd.policy import Policy
from policyd.rules.diagnostics import Diagnostic
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore, ReloadAttempt, ReloadStats


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(error: PolicyError) -> dict[str, Any]:
    return {**error.to_dict(), "location": str(error.location) if error.location else ""}


def _attempt(attempt: ReloadAttempt | None) -> dict[str, Any] | None:
    if attempt is None:
        return None
    return {
        "at": _time(attempt.at),
        "ok": attempt.ok,
        "changed": attempt.changed,
        "version": attempt.version,
        "errors": [_error(e) for e in attempt.errors],
        "errors_omitted": attempt.errors_omitted,
        "notices": [_notice(n) for n in attempt.notices],
    }


def _notice(notice: Diagnostic) -> dict[str, Any]:
    return {**notice.to_dict(), "location": str(notice.location) if notice.location else ""}


def policy_summary(policy: Policy) -> dict[str, Any]:
    """The serving policy: version, when it was loaded, and each file with its rules and hash."""
    return {
        "version": policy.version,
        "loaded_at": _time(policy.loaded_at),
        "directory": policy.directory,
        "rule_count": policy.rule_count,
        "files": [
            {"path": f.path, "op": f.op.value, "rules": f.rule_count, "sha256": f.sha256}
            for f in sorted(policy.rules.values(), key=lambda f: f.path)
        ],
        "data_files": [{"path": d.path, "name": d.name, "sha256": d.sha256} for d in policy.data_files],
        "warnings": [_notice(w) for w in policy.warnings],
    }


def readiness(store: PolicyStore, started: bool) -> tuple[bool, str]:
    """(ready, reason). policyd does not start without a valid policy, and a failed reload keeps
    the last good one serving: so it is unready only before start-up completed."""
    if not started:
        return False, "starting: the policy watcher is not running yet"
    return True, f"serving policy {store.policy.version}"


def reload_summary(stats: ReloadStats) -> dict[str, Any]:
    """A store's reloads: counts, the last success, and the last attempt with its errors."""
    return {
        "successes": stats.successes,
        "failures": stats.failures,
        "last_success_at": _time(stats.last_success_at) if stats.last_success_at else None,
        "last_attempt": _attempt(stats.last),
    }


def status_document(
    store: PolicyStore, settings: Settings, *, started_at: float, now: float
) -> dict[str, Any]:
    return {
        "policyd_version": __version__,
        "pid": os.getpid(),
        "started_at": _time(started_at),
        "uptime_s": round(now - started_at, 3),
        "policy": policy_summary(store.policy),
        "reloads": reload_summary(store.stats),
        "settings": settings.to_dict(),
    }
