"""The live policy: one reference, swapped atomically after the whole new policy validated.

A request reads `store.policy` once and uses that object throughout, so it sees exactly one policy
version. A failed reload keeps the last good policy serving and records the errors for /status.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from policyd.errors import PolicyError, PolicyLoadError
from policyd.policy import Policy, load_policy

log = logging.getLogger("policyd.reload")


@dataclass(frozen=True, slots=True)
class ReloadAttempt:
    at: float
    ok: bool
    version: str = ""  # the version now serving after this attempt
    errors: tuple[PolicyError, ...] = ()
    changed: bool = False


@dataclass
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_success_at: float = 0.0
    last: ReloadAttempt | None = None
    history: list[ReloadAttempt] = field(default_factory=list)


class PolicyStore:
    """Holds the serving policy; `reload()` is safe to call from any thread."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self.stats = ReloadStats()
        # Raises PolicyLoadError: a broken policy at start-up is a start-up error.
        self.policy: Policy = load_policy(self.directory)
        self.stats.last_success_at = self.policy.loaded_at
        log.info(
            "policy %s active: %d rules in %d files from %s",
            self.policy.version,
            self.policy.rule_count,
            len(self.policy.rules),
            self.directory,
        )

    def reload(self, changed_paths: tuple[str, ...] = ()) -> ReloadAttempt:
        """Load the directory again; swap it in if valid and new, else keep the current one."""
        with self._lock:
            now = time.time()
            what = ", ".join(changed_paths) or "(poll)"
            try:
                candidate = load_policy(self.directory)
            except PolicyLoadError as e:
                attempt = ReloadAttempt(now, False, self.policy.version, tuple(e.errors))
                self.stats.failures += 1
                log.error(
                    "policy reload FAILED after change of %s; still serving %s. %d error(s):\n%s",
                    what,
                    self.policy.version,
                    len(e.errors),
                    "\n".join(f"  {err}" for err in e.errors),
                )
            else:
                changed = candidate.version != self.policy.version
                if changed:
                    self.policy = candidate
                    self.stats.successes += 1
                    self.stats.last_success_at = now
                    log.info(
                        "policy %s active after change of %s: %d rules in %d files",
                        candidate.version,
                        what,
                        candidate.rule_count,
                        len(candidate.rules),
                    )
                attempt = ReloadAttempt(now, True, self.policy.version, changed=changed)
            self.stats.last = attempt
            return attempt
