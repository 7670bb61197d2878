"""Telling the version history which policy serves: at start-up, just before each new version is
swapped in, and at shutdown (policyd.tools.history keeps it; GET /versions reads it)."""

from __future__ import annotations

from policyd.policy import Policy
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore
from policyd.tools.history import History


def open_history(settings: Settings) -> History:
    """The history `settings` ask for: in history_dir, else the last versions in memory.

    Raises HistoryError when history_dir cannot be created (a start-up error).
    """
    if settings.history_dir is None:
        return History.in_memory()
    return History.in_directory(
        settings.history_dir,
        max_versions=settings.history_max_versions,
        max_bytes=settings.history_max_bytes,
    )


class ServedVersions:
    """Records the store's serving version in the history: at start-up, then each new version in
    the reload thread just before it is swapped in (GET /versions lists every version a decision
    log line can name), and at shutdown. Never on the request path; never raises."""

    def __init__(self, history: History, store: PolicyStore) -> None:
        self.history = history
        self.store = store

    def start(self) -> None:
        policy = self.store.policy
        self.history.served(policy.version, policy.sources, previous=None, at=policy.loaded_at)
        self.store.before_swap = self._served

    def _served(self, previous: Policy, policy: Policy, at: float) -> None:
        self.history.served(policy.version, policy.sources, previous=previous.version, at=at)

    def stop(self) -> None:
        self.store.before_swap = None
        self.history.retired(self.store.policy.version)
