"""The live policy store: reloads swap atomically and stay out of the garbage collector."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from policyd.errors import MAX_LOAD_ERRORS
from policyd.rules.decision import Op
from policyd.service.store import PolicyStore


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
