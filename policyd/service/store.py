"""The live policy: one reference, swapped atomically after the whole new policy validated.

A request reads `store.policy` once and uses that object throughout, so it sees exactly one policy
version. A failed reload keeps the last good policy serving and records the errors for /status.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policyd.errors import PolicyError, PolicyLoadError
from policyd.policy import Policy, load_policy

log = logging.getLogger("policyd.reload")

PAUSE_EVERY_S = 0.001  # a reload compiles for at most this long before letting requests run
PAUSE_S = 0.0002  # how long it steps aside: long enough for the serving thread to take the GIL
RELEASE_CHUNK = 200  # statements of a replaced policy freed at a time


@dataclass(frozen=True, slots=True)
class ReloadAttempt:
    at: float
    ok: bool
    version: str = ""  # the version now serving after this attempt
    errors: tuple[PolicyError, ...] = ()
    errors_omitted: int = 0  # found beyond the load's limit (errors.MAX_LOAD_ERRORS)
    changed: bool = False


@dataclass
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_success_at: float = 0.0
    last: ReloadAttempt | None = None


class PolicyStore:
    """Holds the serving policy; `reload()` is safe to call from any thread."""

    def __init__(
        self,
        directory: str | Path,
        check: Callable[[Policy], list[PolicyError]] | None = None,
        *,
        label: str = "policy",
    ) -> None:
        """`check` refuses a policy the service cannot serve as configured (its errors make the
        load fail, at start-up and on every reload): e.g. state functions under memory state
        with several workers. `label` is how the log names it: "policy", or "shadow policy"."""
        self.directory = Path(directory)
        self.label = label  # how the log names it: "policy", or "shadow policy"
        self._lock = threading.Lock()
        self.stats = ReloadStats()
        self._check = check
        # Raises PolicyLoadError: a broken policy at start-up is a start-up error.
        self.policy: Policy = self._checked(_load_out_of_gc(self.directory))
        self._replaced: Policy | None = None
        self.stats.last_success_at = self.policy.loaded_at
        log.info(
            "%s %s active: %d rules in %d files from %s",
            self.label,
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
            self._release_replaced()
            try:
                candidate = self._checked(
                    _load_out_of_gc(self.directory, pause=_Pacer(), previous=self.policy)
                )
            except PolicyLoadError as e:
                attempt = ReloadAttempt(now, False, self.policy.version, tuple(e.errors), e.omitted)
                self.stats.failures += 1
                log.error(
                    "%s reload FAILED after change of %s; still serving %s. %d error(s):\n%s",
                    self.label,
                    what,
                    self.policy.version,
                    e.count,
                    "\n".join(f"  {line}" for line in str(e).splitlines()),
                )
            else:
                changed = candidate.version != self.policy.version
                if changed:
                    # The replaced policy is freed by the next reload, in this thread: a request
                    # still deciding with it would otherwise free it on the serving thread.
                    self._replaced, self.policy = self.policy, candidate
                    self.stats.successes += 1
                    self.stats.last_success_at = now
                    log.info(
                        "%s %s active after change of %s: %d rules in %d files",
                        self.label,
                        candidate.version,
                        what,
                        candidate.rule_count,
                        len(candidate.rules),
                    )
                attempt = ReloadAttempt(now, True, self.policy.version, changed=changed)
            self.stats.last = attempt
            return attempt

    def _checked(self, policy: Policy) -> Policy:
        if self._check is not None:
            errors = self._check(policy)
            if errors:
                raise PolicyLoadError(errors)
        return policy

    def _release_replaced(self) -> None:
        """Free the policy replaced by the last reload a few hundred rules at a time.

        Freeing 10,000 compiled rules at once holds the GIL for tens of milliseconds.
        """
        old, self._replaced = self._replaced, None
        if old is None:
            return
        parts = [list(f.statements) for f in old.rules.values()]
        del old  # the policy, its files and tuples go; the statements stay in `parts` for now
        pause = _Pacer()
        for statements in parts:
            while statements:
                del statements[-RELEASE_CHUNK:]
                pause()


class _Pacer:
    """Steps aside (sleeps, releasing the GIL) once per PAUSE_EVERY_S of work.

    The serving thread then takes the GIL at once instead of waiting out Python's switch
    interval (5 ms) behind a compiling reload: requests see at most ~1 ms of delay per pause.
    """

    def __init__(self) -> None:
        self.next = time.perf_counter() + PAUSE_EVERY_S

    def __call__(self) -> None:
        if time.perf_counter() >= self.next:
            time.sleep(PAUSE_S)
            self.next = time.perf_counter() + PAUSE_EVERY_S


def _load_out_of_gc(
    directory: Path, pause: Callable[[], None] | None = None, previous: Policy | None = None
) -> Policy:
    """load_policy() with the cyclic garbage collector kept off the new policy's objects.

    Compiling 10,000 rules makes a few hundred thousand objects, which would trigger full
    collections during the load and after it, each holding the GIL for tens to hundreds of
    milliseconds. The collector stays off while loading; a valid policy is then frozen (moved to
    the permanent generation, never scanned). Compiled policies hold no reference cycles, so
    freezing them leaks nothing: reference counting frees a replaced policy.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        policy = load_policy(directory, pause=pause, previous=previous)
        gc.freeze()
        return policy
    finally:
        if was_enabled:
            gc.enable()


def pacer() -> Callable[[], None]:
    """A fresh pacer, for other work that compiles policies beside the serving thread (the console)."""
    return _Pacer()
