"""Telling the version history which policy serves: at start-up, after each reload that changed
the version, and at shutdown (policyd.tools.history keeps it; GET /versions reads it)."""

from __future__ import annotations

from policyd.service.settings import Settings
from policyd.service.store import PolicyStore, ReloadAttempt
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
    """Records the store's serving version in the history; every call is made off the request
    path (start-up, the reload thread, shutdown) and never raises."""

    def __init__(self, history: History, store: PolicyStore) -> None:
        self.history = history
        self.store = store

    def start(self) -> None:
        policy = self.store.policy
        self.history.served(policy.version, policy.sources, previous=None, at=policy.loaded_at)

    def reload(self, changed_paths: tuple[str, ...]) -> ReloadAttempt:
        """The store's reload (the watcher calls this instead), then the history if it changed."""
        before = self.store.policy.version
        attempt = self.store.reload(changed_paths)
        if attempt.changed:
            policy = self.store.policy
            self.history.served(policy.version, policy.sources, previous=before, at=attempt.at)
        return attempt

    def stop(self) -> None:
        self.history.retired(self.store.policy.version)
