"""State calls are counted per thread without a lock and added up when metrics are scraped:
every call made, in any thread, is in `policyd_state_calls_total` once."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from policyd.engine import StateBinding, decide
from policyd.policy import load_policy
from policyd.rules.decision import Op
from policyd.service.metrics import Metrics
from policyd.service.store import PolicyStore
from policyd.state.memory import MemoryBackend
from tests.support import write_policy

RULES = (
    'reject "at most 5" when len(proxies(user.user)) >= 5\nreject "slow" when not rate("k", 10000, "1m")\n'
)
THREADS, EACH = 4, 300


def _content(i: int) -> dict[str, object]:
    return {"user": {"user": f"u{i % 7}"}, "proxy_name": f"p{i}", "proxy_type": "tcp", "remote_port": 6000}


def test_calls_in_every_thread_are_counted_once(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": RULES})
    policy = load_policy(policies)
    backend = MemoryBackend()
    view = StateBinding(backend, recording=False)  # nothing recorded: every decision calls both
    start = threading.Barrier(THREADS)

    def decide_many() -> None:
        start.wait()
        for i in range(EACH):
            decide(policy, Op.NEW_PROXY, _content(i), state=view)

    threads = [threading.Thread(target=decide_many) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decide(policy, Op.NEW_PROXY, _content(0), state=view)  # and one in this thread
    total = THREADS * EACH + 1
    assert backend.stats.calls == {("proxies", "ok"): total, ("rate", "under"): total}

    metrics = Metrics(PolicyStore(policies), handler_path="/handler")
    metrics.register_state(backend, lambda: ((0, 0), ""))
    exported = metrics.render().decode()
    assert re.search(
        rf'^policyd_state_calls_total\{{function="proxies",result="ok"\}} {total}\.0$', exported, re.M
    )
    assert re.search(
        rf'^policyd_state_calls_total\{{function="rate",result="under"\}} {total}\.0$', exported, re.M
    )
