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
    policies, calls, _ = watched
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 3.0:  # a rename every 50 ms: never 0.3 s of quiet
        n += 1
        rename_save(policies, n)
        time.sleep(0.05)
    during = [t - started for t in calls.at if t - started < 3.0]
    # Without a maximum wait nothing reloads until the storm ends (after 3 s).
    assert len(during) >= 2, f"reloads during the storm at {during} s"
    assert during[0] < 1.5
    assert all(b - a < 1.5 for a, b in itertools.pairwise(during))
    assert all(paths == ("Ping.rules",) for paths in calls.paths)


def test_a_burst_of_writes_is_one_reload(watched: tuple[Path, Calls, PolicyWatcher]) -> None:
    policies, calls, _ = watched
    for n in range(5):
        rename_save(policies, n)
        time.sleep(0.02)
    calls.wait(1)
    time.sleep(0.6)
    assert calls.paths == [("Ping.rules",)]


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
