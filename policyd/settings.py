"""One flat, typed settings object: CLI flags and POLICYD_* environment variables map onto it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from policyd.engine import EvalOptions
from policyd.sandbox import DEFAULT_EVAL_SECONDS, MAX_STEPS
from policyd.schema import Op

ENV_PREFIX = "POLICYD_"


@dataclass(frozen=True)
class Settings:
    """Everything `policyd serve` can be told; defaults are the safe choice."""

    policies: Path = Path("policies")
    host: str = "127.0.0.1"  # loopback: frps runs beside policyd and sends no credentials
    port: int = 9000
    handler_path: str = "/handler"
    fail_open_ops: frozenset[Op] = field(default_factory=frozenset)
    max_body_bytes: int = 1024 * 1024
    eval_budget_ms: float = DEFAULT_EVAL_SECONDS * 1000
    max_steps: int = MAX_STEPS
    log_level: str = "info"
    reload_debounce_s: float = 0.2
    reload_poll_s: float = 5.0

    @property
    def eval_options(self) -> EvalOptions:
        return EvalOptions(
            fail_open_ops=self.fail_open_ops,
            max_steps=self.max_steps,
            eval_seconds=self.eval_budget_ms / 1000,
        )
