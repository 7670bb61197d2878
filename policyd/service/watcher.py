"""Watch the policy directory and report "these paths changed", debounced.

The watcher knows nothing of policies beyond the names editors give their temporary files: it
calls `on_change(paths)` once per burst of filesystem events (one editor save is several
events: write temp, rename, chmod), and at least every `max_wait` seconds while a burst goes
on. A slow poll of file fingerprints backs up inotify, which misses changes on some mounts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from policyd.policy import is_editor_temp
from policyd.service.settings import DEFAULTS

log = logging.getLogger("policyd.watch")

MAX_FINGERPRINT_ENTRIES = 10_000  # files and directories one poll looks at below the directory
_truncated: set[str] = set()  # directories whose poll was cut short, to warn about each once


def _ignored(name: str) -> bool:
    """Editor temp files and hidden files, but not Kubernetes' `..data` swaps, are not changes."""
    return is_editor_temp(name) or (name.startswith(".") and not name.startswith(".."))


def fingerprint(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """Cheap identity of every file below directory, following symlinks (ConfigMap `..data`).

    A directory is walked once however many links lead to it (`data/a -> ..` is no loop), a
    link that leads outside `directory` is not followed, and at most MAX_FINGERPRINT_ENTRIES
    entries are looked at: one poll costs a bounded number of stat calls.
    """
    base = os.path.realpath(directory)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[str, int, int, int]] = []
    entries = 0
    for root, dirs, files in os.walk(directory, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        real = os.path.realpath(root)
        if (st.st_dev, st.st_ino) in seen or (real != base and not real.startswith(base + os.sep)):
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith("..")]
        entries += len(dirs)
        for name in files:
            entries += 1
            if entries > MAX_FINGERPRINT_ENTRIES:
                break
            if _ignored(name):
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        if entries > MAX_FINGERPRINT_ENTRIES:
            if str(directory) in _truncated:
                break
            _truncated.add(str(directory))
            log.warning(
                "more than %d entries below %s: the change poll looks at the first %d only",
                MAX_FINGERPRINT_ENTRIES,
                directory,
                MAX_FINGERPRINT_ENTRIES,
            )
            break
    return tuple(sorted(out))


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: PolicyWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        self.watcher.notify(*(os.fsdecode(p) for p in paths if p))


class PolicyWatcher:
    """Calls `on_change(paths)` after `debounce` seconds without new events, and at least every
    `max_wait` seconds while events keep coming (a sync tool renaming file after file).

    `debounce`, `max_wait` and `poll` default to the settings' `reload_debounce_s`,
    `reload_max_wait_s` and `reload_poll_s`.
    """

    def __init__(
        self,
        directory: str | Path,
        on_change: Callable[[tuple[str, ...]], object],
        *,
        debounce: float = DEFAULTS.reload_debounce_s,
        max_wait: float = DEFAULTS.reload_max_wait_s,
        poll: float = DEFAULTS.reload_poll_s,
    ) -> None:
        self.directory = Path(directory)
        self.on_change = on_change
        self.debounce = debounce
        self.max_wait = max_wait
        self.poll = poll
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name="policyd-reload", daemon=True)

    def start(self) -> None:
        self._observer.schedule(_Handler(self), str(self.directory), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._thread.start()
        log.info("watching %s for changes", self.directory)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def notify(self, *paths: str) -> None:
        with self._lock:
            self._pending.update(paths)
        self._wake.set()

    def _run(self) -> None:
        last_print = fingerprint(self.directory)
        while not self._stop.is_set():
            woke = self._wake.wait(timeout=self.poll)
            if self._stop.is_set():
                return
            if woke:
                # Debounce: wait until events stop arriving for `debounce` seconds, or until
                # `max_wait` has passed since the first one: a storm must not hold reloads off.
                deadline = time.monotonic() + self.max_wait
                while True:
                    self._wake.clear()
                    quiet = min(self.debounce, max(deadline - time.monotonic(), 0.0))
                    if not self._wake.wait(timeout=quiet) or self._stop.is_set():
                        break
                    if time.monotonic() >= deadline:
                        break
            with self._lock:
                paths, self._pending = self._pending, set()
            # The directory's own "modified" event says nothing the file events do not, and
            # editor temp files are not what changed.
            named = {self._relative(p) for p in paths} - {"."}
            changed = tuple(sorted(p for p in named if not _ignored(os.path.basename(p))))
            current = fingerprint(self.directory)
            if not changed and current == last_print:
                continue
            last_print = current
            shown = changed or ("(poll)",)
            try:
                self.on_change(shown)
            except Exception:  # the reload thread must survive anything a reload raises
                log.exception("reload after change of %s failed unexpectedly", ", ".join(shown))

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.directory))
        except ValueError:
            return path
