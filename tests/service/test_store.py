"""The live policy store: reloads swap atomically and stay out of the garbage collector."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

import policyd.service.store as store_module
from policyd.errors import MAX_LOAD_ERRORS
from policyd.policy import Policy
from policyd.rules.decision import Op
from policyd.service.store import PolicyStore
from policyd.service.versions import ServedVersions
from policyd.tools.history import History


def test_reload_loads_out_of_the_collector_and_frees_the_replaced_policy(tmp_path: Path) -> None:
    rules = tmp_path / "NewProxy.rules"
    rules.write_text('reject "a" when content.remote_port == 1\n')
    store = PolicyStore(tmp_path)
    first = weakref.ref(store.policy.rules[Op.NEW_PROXY].statements[0].condition)  # type: ignore[arg-type]
    frozen = gc.get_freeze_count()
    rules.write_text('reject "b" when content.remote_port == 2\n')
    assert store.reload(("NewProxy.rules",)).changed
    assert gc.isenabled() and gc.get_freeze_count() > frozen
    assert first() is not None, "kept until the next reload frees it in the reload thread"
    rules.write_text('reject "c" when content.remote_port == 3\n')
    store.reload(("NewProxy.rules",))
    assert first() is None


def test_a_failed_reload_past_the_error_limit_counts_the_rest(tmp_path: Path) -> None:
    rules = tmp_path / "Ping.rules"
    rules.write_text("allow\n")
    store = PolicyStore(tmp_path)
    rules.write_text("".join(f"reject 'x' when content.bad{i}\n" for i in range(MAX_LOAD_ERRORS + 7)))
    attempt = store.reload(("Ping.rules",))
    assert not attempt.ok
    assert (len(attempt.errors), attempt.errors_omitted) == (MAX_LOAD_ERRORS, 7)


def test_anything_a_load_raises_is_a_counted_failed_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Ping.rules").write_text('reject "a"\n')
    store = PolicyStore(tmp_path)
    version = store.policy.version

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("the unexpected")

    monkeypatch.setattr(store_module, "load_policy", broken)
    attempt = store.reload(("Ping.rules",))
    assert not attempt.ok and attempt.version == version and store.stats.failures == 1
    [error] = attempt.errors
    assert (error.code, str(error)) == (
        "internal_error",
        ".: policyd failed to load the policy: RuntimeError: the unexpected "
        "(a bug in policyd; please report it)",
    )
    monkeypatch.undo()
    (tmp_path / "Ping.rules").write_text('reject "b"\n')
    attempt = store.reload(("Ping.rules",))
    assert attempt.ok and attempt.changed
    assert [n.code for n in attempt.notices] == ["reload_recovered"]


def test_the_version_history_has_a_version_before_it_serves(tmp_path: Path) -> None:
    """A decision log line names its policy version: GET /versions must list it by then."""
    rules = tmp_path / "Ping.rules"
    rules.write_text('reject "a"\n')
    store = PolicyStore(tmp_path)
    history = History.in_memory(max_versions=5, max_bytes=1 << 20)
    versions = ServedVersions(history, store)
    versions.start()
    record = store.before_swap
    assert record is not None
    seen: list[tuple[str, list[str]]] = []

    def watching(previous: Policy, policy: Policy, at: float) -> None:
        assert record is not None
        record(previous, policy, at)
        seen.append((store.policy.version, [e.version for e in history.entries()]))

    store.before_swap = watching
    first = store.policy.version
    rules.write_text('reject "b"\n')
    second = store.reload(("Ping.rules",)).version
    assert seen == [(first, [second, first])], "recorded while the old version still served"
    versions.stop()
    assert store.before_swap is None


def test_a_failing_before_swap_hook_does_not_stop_the_swap(tmp_path: Path) -> None:
    (tmp_path / "Ping.rules").write_text('reject "a"\n')
    store = PolicyStore(tmp_path)

    def broken(*_: object) -> None:
        raise OSError("disk full")

    store.before_swap = broken
    (tmp_path / "Ping.rules").write_text('reject "b"\n')
    attempt = store.reload(("Ping.rules",))
    assert attempt.ok and attempt.changed and store.policy.version == attempt.version
