"""Watch the policy directory and report "these paths changed", debounced.

The watcher knows nothing of policies: it calls `on_change(paths)` once per burst of filesystem
events (one editor save is several events: write temp, rename, chmod). A slow poll of file
fingerprints backs up inotify, which misses changes on some mounts.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from policyd.service.settings import DEFAULTS

log = logging.getLogger("policyd.watch")


def fingerprint(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """Cheap identity of every file below directory, following symlinks (ConfigMap `..data`)."""
    out = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith("..")]
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
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
    """Calls `on_change(paths)` after `debounce` seconds without new events.

    `debounce` and `poll` default to the settings' `reload_debounce_s` and `reload_poll_s`.
    """

    def __init__(
        self,
        directory: str | Path,
        on_change: Callable[[tuple[str, ...]], object],
        *,
        debounce: float = DEFAULTS.reload_debounce_s,
        poll: float = DEFAULTS.reload_poll_s,
    ) -> None:
        self.directory = Path(directory)
        self.on_change = on_change
        self.debounce = debounce
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
                # Debounce: wait until events stop arriving for `debounce` seconds.
                while True:
                    self._wake.clear()
                    if not self._wake.wait(timeout=self.debounce) or self._stop.is_set():
                        break
            with self._lock:
                paths, self._pending = self._pending, set()
            current = fingerprint(self.directory)
            if not paths and current == last_print:
                continue
            last_print = current
            # The directory's own "modified" event says nothing the file events do not.
            shown = tuple(sorted({self._relative(p) for p in paths} - {"."})) or ("(poll)",)
            try:
                self.on_change(shown)
            except Exception:  # the reload thread must survive anything a reload raises
                log.exception("reload after change of %s failed unexpectedly", ", ".join(shown))

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.directory))
        except ValueError:
            return path
