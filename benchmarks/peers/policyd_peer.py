"""policyd itself, as the peers benchmark calls it: `decide()` on the loaded 50-rule policy.

Only the front door is imported (policyd.policy.load_policy, policyd.engine.decide, and the
Decision it returns, from policyd.rules.decision); the op is taken from the loaded policy, so
nothing here depends on where policyd keeps its schema.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from benchmarks.peers.common import POLICY_DIR, Verdict
from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Decision


class Policyd:
    name = "policyd decide()"

    def __init__(self) -> None:
        self.policy = load_policy(POLICY_DIR)
        self.op = next(op for op in self.policy.rules if op == "NewProxy")

    def decision(self, content: dict[str, Any], now: int) -> Decision:
        return decide(self.policy, self.op, content, now=now)

    def timed(self, content: dict[str, Any], now: int) -> Callable[[], Decision]:
        """What is timed: one decide() call as the service makes it, with no wrapper around it."""
        return functools.partial(decide, self.policy, self.op, content, now=now)

    def decide(self, content: dict[str, Any], now: int) -> Verdict:
        d = self.decision(content, now)
        if d.error is not None:
            raise AssertionError(f"policyd failed on a benchmark request: {d.error}")
        return Verdict(
            d.outcome.value,
            d.reason,
            d.content,
            tuple(w.message for w in d.warnings) if d.outcome.value != "reject" else (),
        )
