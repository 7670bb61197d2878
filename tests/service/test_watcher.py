"""The watcher: a burst of changes is one reload, a storm of them still reloads every `max_wait`,
and editor temp files are neither changes nor reasons to reload (issue 12 §6, issue 13 §5)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.service.watcher import PolicyWatcher
from tests.support import write_policy


class Calls:
    """What the watcher reported, and when."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.paths: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def __call__(self, paths: tuple[str, ...]) -> None:
        with self.lock:
            self.at.append(time.monotonic())
            self.paths.append(paths)

    def wait(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.at) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.at) >= count, f"{len(self.at)} reloads, expected {count}: {self.paths}"


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Calls, PolicyWatcher]]:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "0"'})
    calls = Calls()
    watcher = PolicyWatcher(policies, calls, debounce=0.3, max_wait=1.0, poll=60)
    watcher.start()
    time.sleep(0.2)  # inotify is set up
    try:
        yield policies, calls, watcher
    finally:
        watcher.stop()


def rename_save(policies: Path, n: int) -> None:
    """What a sync tool does: write a temporary file, rename it over the rule file."""
    tmp = policies / ".Ping.rules.tmp"
    tmp.write_text(f'reject "{n}"\n')
    os.replace(tmp, policies / "Ping.rules")


def test_a_storm_of_renames_still_reloads_every_max_wait(watched: tuple[Path, Calls, PolicyWatcher]) -> None:
    """Renames every 50 ms never leave the debounce's 0.3 s of quiet: without a maximum wait,
    nothing would reload until they stop. They go on until two reloads came while renames kept
    coming (a rename less than the debounce before each), however long a busy machine takes."""
    policies, calls, _ = watched
    renames: list[float] = []
    deadline = time.monotonic() + 30

    def during_the_storm() -> list[float]:
        return [t for t in list(calls.at) if any(0 <= t - r < 0.3 for r in renames)]

    while len(during_the_storm()) < 2:
        assert time.monotonic() < deadline, f"no reload during {len(renames)} renames: {calls.at}"
        rename_save(policies, len(renames) + 1)
        renames.append(time.monotonic())
        time.sleep(0.05)
    assert all(paths == ("Ping.rules",) for paths in calls.paths)


def test_a_burst_of_writes_is_one_reload(watched: tuple[Path, Calls, PolicyWatcher]) -> None:
    """Five saves 20 ms apart are one reload, not one per save. A busy host may stretch a gap
    between saves past the debounce's 0.3 s of quiet (each such gap may be one more reload), or
    hand the watcher's event thread the events late (one more); never one reload per save."""
    policies, calls, _ = watched
    saved: list[float] = []
    for n in range(5):
        rename_save(policies, n)
        saved.append(time.monotonic())
        time.sleep(0.02)
    calls.wait(1)
    time.sleep(0.6)
    quiet_gaps = sum(1 for a, b in itertools.pairwise(saved) if b - a >= 0.3)
    assert 1 <= len(calls.paths) <= min(2 + quiet_gaps, len(saved) - 1), (calls.paths, saved)
    assert set(calls.paths) == {("Ping.rules",)}


def test_editor_temp_files_are_not_changed_files(watched: tuple[Path, Calls, PolicyWatcher]) -> None:
    policies, calls, _ = watched
    for name in ("4913", "Ping.rules~", "sedAb12Cd", ".Ping.rules.swp", "#Ping.rules#"):
        (policies / name).write_text("x")
    (policies / "4913").unlink()  # vim's write test comes and goes
    time.sleep(0.8)
    assert calls.paths == [], "temp files alone reloaded"
    (policies / "Ping.rules").write_text('reject "1"\n')
    calls.wait(1)
    assert calls.paths == [("Ping.rules",)]
