"""The live policy: one reference, swapped atomically after the whole new policy validated.

A request reads `store.policy` once and uses that object throughout, so it sees exactly one policy
version. A failed reload keeps the last good policy serving and records the errors for /status.
Whatever a load raises is a failed reload, counted and shown: none can leave later edits
silently unapplied. What an operator must hear about (a rule file gone, a new op frps may not
send, a reload that recovered, the loader's own warnings) is logged as a WARNING or an INFO
naming the recovery, and kept for /status.
"""

from __future__ import annotations

import enum
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from policyd.errors import InternalError, Location, PolicyError, PolicyLoadError
from policyd.policy import RULES_SUFFIX, Policy, load_policy
from policyd.rules.diagnostics import Diagnostic, Severity

log = logging.getLogger("policyd.reload")

PAUSE_EVERY_S = 0.001  # a reload compiles for at most this long before letting requests run
PAUSE_S = 0.0002  # how long it steps aside: long enough for the serving thread to take the GIL
RELEASE_CHUNK = 200  # statements of a replaced policy freed at a time


class ReloadNotice(enum.StrEnum):
    """The codes of what a reload tells about the change it made (beside the load's warnings)."""

    RULE_FILE_REMOVED = "rule_file_removed"  # an op lost its rules: frps's calls are now allowed
    NEW_OP = "new_op"  # a rule file for an op the policy had none for: frps must send that op
    RELOAD_RECOVERED = "reload_recovered"  # a reload loaded after failed ones (INFO)


@dataclass(frozen=True, slots=True)
class ReloadAttempt:
    at: float
    ok: bool
    version: str = ""  # the version now serving after this attempt
    errors: tuple[PolicyError, ...] = ()
    errors_omitted: int = 0  # found beyond the load's limit (errors.MAX_LOAD_ERRORS)
    changed: bool = False
    notices: tuple[Diagnostic, ...] = ()  # what the change did that the operator must hear


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
        self.label = label
        self._lock = threading.Lock()
        self.stats = ReloadStats()
        self._check = check
        # Called in the reload thread with (previous, next, when) just before a new version is
        # swapped in, so that whatever it records (the version history) is there before the
        # version's first answer names it. It must not raise; an exception is logged and ignored.
        self.before_swap: Callable[[Policy, Policy, float], None] | None = None
        # Raises PolicyLoadError: a broken policy at start-up is a start-up error.
        self.policy: Policy = self._checked(_load_out_of_gc(self.directory))
        self._replaced: Policy | None = None
        self._failed_since: float | None = None  # when the reloads that keep failing began
        self._failures_in_a_row = 0
        self.stats.last_success_at = self.policy.loaded_at
        log.info(
            "%s %s active: %d rules in %d files from %s",
            self.label,
            self.policy.version,
            self.policy.rule_count,
            len(self.policy.rules),
            self.directory,
        )
        _log_all(self.policy.warnings)

    def reload(self, changed_paths: tuple[str, ...] = ()) -> ReloadAttempt:
        """Load the directory again; swap it in if valid and new, else keep the current one.

        Never raises for anything a load raises: that is a failed attempt, counted and kept.
        """
        with self._lock:
            now = time.time()
            what = ", ".join(changed_paths) or "(poll)"
            self._release_replaced()
            try:
                candidate = self._checked(
                    _load_out_of_gc(self.directory, pause=_Pacer(), previous=self.policy)
                )
            except PolicyLoadError as e:
                attempt = self._failed(now, what, e)
            except Exception as e:  # a bug in policyd; still a failed reload like any other
                log.exception("loading %s raised", self.directory)
                failure = PolicyLoadError(
                    [
                        InternalError(
                            f"policyd failed to load the policy: {type(e).__name__}: {e}",
                            Location("."),
                            hint="a bug in policyd; please report it",
                        )
                    ]
                )
                attempt = self._failed(now, what, failure)
            else:
                attempt = self._loaded(now, what, candidate)
            self.stats.last = attempt
            return attempt

    def _checked(self, policy: Policy) -> Policy:
        if self._check is not None:
            errors = self._check(policy)
            if errors:
                raise PolicyLoadError(errors)
        return policy

    def _failed(self, now: float, what: str, e: PolicyLoadError) -> ReloadAttempt:
        self.stats.failures += 1
        self._failures_in_a_row += 1
        if self._failed_since is None:
            self._failed_since = now
        log.error(
            "%s reload FAILED after change of %s; still serving %s. %d error(s):\n%s",
            self.label,
            what,
            self.policy.version,
            e.count,
            "\n".join(f"  {line}" for line in str(e).splitlines()),
        )
        return ReloadAttempt(now, False, self.policy.version, tuple(e.errors), e.omitted)

    def _loaded(self, now: float, what: str, candidate: Policy) -> ReloadAttempt:
        current = self.policy
        changed = candidate.version != current.version
        notices = list(_changes(current, candidate)) if changed else []
        if changed:
            if self.before_swap is not None:
                try:
                    self.before_swap(current, candidate, now)
                except Exception:
                    log.exception("%s: recording %s before it serves raised", self.label, candidate.version)
            # The replaced policy is freed by the next reload, in this thread: a request
            # still deciding with it would otherwise free it on the serving thread.
            self._replaced, self.policy = current, candidate
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
        elif candidate.warnings != current.warnings:
            # Same rules and data, other warnings (a near-miss file name came or went): the
            # candidate carries them; it holds the same compiled rules.
            self._replaced, self.policy = current, candidate
        _log_all(w for w in candidate.warnings if w not in current.warnings)
        if self._failed_since is not None:
            notices.append(self._recovered(candidate))
        for notice in notices:
            _log(notice)
        return ReloadAttempt(now, True, self.policy.version, changed=changed, notices=tuple(notices))

    def _recovered(self, candidate: Policy) -> Diagnostic:
        assert self._failed_since is not None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._failed_since))
        count, self._failures_in_a_row, self._failed_since = self._failures_in_a_row, 0, None
        return Diagnostic(
            Severity.INFO,
            ReloadNotice.RELOAD_RECOVERED.value,
            f"policy reload recovered: {candidate.version} loads after {count} failed "
            f"attempt(s) since {since}; the errors logged since then are fixed",
        )

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


def _changes(old: Policy, new: Policy) -> Iterator[Diagnostic]:
    """What a new version does that the operator must hear: ops that lost or gained rules."""
    for op, rule_file in old.rules.items():
        if op not in new.rules:
            yield Diagnostic(
                Severity.WARNING,
                ReloadNotice.RULE_FILE_REMOVED.value,
                f"{rule_file.path} was removed: frps's {op} calls are now allowed unchanged "
                f"(its {rule_file.rule_count} rule(s) no longer apply)",
                Location(rule_file.path),
                hint=f"restore {op}{RULES_SUFFIX} if that was not meant",
            )
    for op, rule_file in new.rules.items():
        if op not in old.rules:
            yield Diagnostic(
                Severity.WARNING,
                ReloadNotice.NEW_OP.value,
                f"{rule_file.path} is new: frps asks policyd about {op} only if its plugin's "
                f'ops include "{op}"',
                Location(rule_file.path),
                hint="`policyd frps-config` prints frps's plugin section for this policy",
            )


def _log(notice: Diagnostic) -> None:
    text = f"{notice.message} ({notice.hint})" if notice.hint else notice.message
    log.log(logging.INFO if notice.severity is Severity.INFO else logging.WARNING, "%s", text)


def _log_all(notices: Iterator[Diagnostic] | tuple[Diagnostic, ...]) -> None:
    for notice in notices:
        _log(notice)


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
