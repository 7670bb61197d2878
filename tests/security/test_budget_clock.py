"""The budget measures the decision's own work: a reload holding the GIL never flips a decision.

A reload parsing a big data file holds the GIL for tens of milliseconds (orjson parses in C
without releasing it). A budget read from the wall clock ran out while its decision waited,
and for fail-open ops the decision was then *allowed*: a banned user's heartbeats got through.
The budget counts the deciding thread's CPU time instead (sandbox.Budget).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.engine import EvalOptions, decide
from policyd.errors import LimitError
from policyd.policy import load_policy
from policyd.rules.decision import Op, Outcome
from policyd.rules.program import CHUNK_STATEMENTS
from policyd.rules.sandbox import Budget
from policyd.rules.sandbox import budget as budget_module
from tests.helpers import policy_of
from tests.support import write_policy

# Each Ping does ~0.5 ms of work (a comprehension of 400 items) under a 20 ms budget: whenever
# the reload thread takes the GIL mid-decision, the wall clock passes the budget.
PING_RULES = (
    'reject "user {user.user} is banned" when user.user in data.access.banned_users'
    " and len([u for u in data.access.banned_users * 4 if u != user.user]) >= 0\n"
)
BANNED = {"banned_users": [f"user-{i}" for i in range(99)] + ["mallory"]}
PING = {"user": {"user": "mallory", "metas": {"team": "red"}, "run_id": "r1"}}
# A ~7.5 MB compact JSON data file, near the 8 MiB total of data: orjson holds the GIL for tens
# of milliseconds to parse it.
BIG_ROWS = 250_000


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Switch threads every 0.5 ms, so the reload interrupts decisions mid-way."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(before)


def test_a_reload_parsing_a_big_data_file_never_times_out_a_decision(
    tmp_path: Path, switch_often: None
) -> None:
    policies = write_policy(
        tmp_path,
        {
            "Ping.rules": PING_RULES,
            "data/access.json": json.dumps(BANNED),
            "data/big.json": json.dumps(
                {"rows": [{"id": i, "name": f"n{i}"} for i in range(BIG_ROWS)]}, separators=(",", ":")
            ),
        },
    )
    policy = load_policy(policies)
    stop = threading.Event()
    reloads = 0

    def reload_forever() -> None:
        nonlocal reloads
        while not stop.is_set():
            load_policy(policies)
            reloads += 1

    loader = threading.Thread(target=reload_forever, daemon=True)
    options = EvalOptions(fail_open_ops=frozenset({Op.PING}), eval_seconds=0.02)
    outcomes: list[tuple[Outcome, str]] = []
    loader.start()
    try:
        # Decisions go on until two reloads are done and a hundred decisions were made meanwhile,
        # however long a busy machine takes for that.
        deadline = time.monotonic() + 120
        while reloads < 2 or len(outcomes) < 100:
            assert time.monotonic() < deadline, f"{reloads} reloads, {len(outcomes)} decisions in 120 s"
            d = decide(policy, Op.PING, PING, options=options)
            outcomes.append((d.outcome, "" if d.error is None else d.error.message))
    finally:
        stop.set()
        loader.join(timeout=30)
    failures = [o for o in outcomes if o != (Outcome.REJECT, "")]
    assert not failures, f"{len(failures)} of {len(outcomes)} decisions flipped or failed: {failures[:3]}"


def test_cpu_time_still_ends_a_decision_that_works_too_long() -> None:
    """CPU-bound work is charged: a decision that keeps working runs out of time."""
    budget = Budget(max_steps=10**12, seconds=0.01)
    with pytest.raises(LimitError, match="out of time"):
        while True:
            budget.charge()


def test_a_decision_that_never_gets_to_run_meets_the_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that waits forever for a CPU spends no CPU time: the backstop still ends it."""
    monkeypatch.setattr(budget_module, "MIN_BACKSTOP_SECONDS", 0.05)
    monkeypatch.setattr(budget_module, "_cpu", lambda: 0.0)  # a thread that is never scheduled
    budget = Budget(max_steps=10**12, seconds=0.001)
    with pytest.raises(LimitError, match="backstop"):
        while True:
            budget.charge()


def test_a_short_decision_never_reads_the_cpu_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU clock is a system call: a decision that ends within CPU_CLOCK_AFTER_S of wall time
    (here: every one, the wall clock standing still) decides without it, however many rules."""
    reads: list[float] = []
    monkeypatch.setattr(budget_module, "_cpu", lambda: reads.append(0.0) or 0.0)
    monkeypatch.setattr(budget_module, "_wall", lambda: 1000.0)
    policy = load_policy(Path(__file__).resolve().parents[2] / "benchmarks" / "policy50")
    content = {"user": {"user": "alice", "metas": {"team": "red"}, "run_id": "r"}, "proxy_name": "alice.a"}
    decision = decide(policy, Op.NEW_PROXY, content)
    assert decision.error is None and len(policy.rules[Op.NEW_PROXY].statements) > 48
    assert reads == []


def test_the_cpu_clock_starts_once_the_decision_has_run_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """After CPU_CLOCK_AFTER_S of wall time the next clock read starts the CPU clock, once; what
    the decision spends from there is what the budget counts."""
    wall = [1000.0]
    cpu = [5.0]
    reads: list[float] = []

    def read_cpu() -> float:
        reads.append(cpu[0])
        return cpu[0]

    monkeypatch.setattr(budget_module, "_wall", lambda: wall[0])
    monkeypatch.setattr(budget_module, "_cpu", read_cpu)
    budget = Budget(max_steps=10**12, seconds=0.01)
    budget.tick()
    assert reads == []
    wall[0] += budget_module.CPU_CLOCK_AFTER_S
    budget.tick()
    budget.tick()
    assert reads == [5.0] and budget.cpu_start == 5.0
    wall[0] += 0.02  # past the deadline, with 2 ms of CPU spent since: 8 ms of the budget left
    cpu[0] += 0.002
    budget.tick()
    cpu[0] += 0.008  # and then the rest of it
    wall[0] += 0.02
    with pytest.raises(LimitError, match="out of time"):
        budget.tick()


def test_rules_that_charge_nothing_read_the_clock_between_every_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inlined rules charge no steps, so nothing in them reads the clock: each chunk of
    CHUNK_STATEMENTS rules after the first reads it before its first rule (SECURITY.md's bound
    of 16 rules' uncharged work). With every read finding the time spent, the decision stops at
    the second chunk's first rule."""
    wall = [1000.0]
    monkeypatch.setattr(budget_module, "_wall", lambda: wall[0])
    cheap = [f'reject "r{i}" when content.remote_port == -{i + 1}\n' for i in range(3 * CHUNK_STATEMENTS)]
    policy = policy_of({"NewProxy.rules": "".join(cheap)})
    decision = decide(policy, Op.NEW_PROXY, {"remote_port": 6000}, options=EvalOptions(eval_seconds=0.01))
    assert decision.error is None and decision.outcome is Outcome.ALLOW
    assert policy.rules[Op.NEW_PROXY].program is not None and len(policy.rules[Op.NEW_PROXY].program) == 3

    real_tick = Budget.tick
    ticks: list[int] = []

    def tick(budget: Budget) -> None:
        ticks.append(budget.steps)
        wall[0] += 10.0  # every read finds the backstop passed
        real_tick(budget)

    monkeypatch.setattr(Budget, "tick", tick)
    decision = decide(policy, Op.NEW_PROXY, {"remote_port": 6000}, options=EvalOptions(eval_seconds=0.01))
    assert len(ticks) == 1  # the first read already stops it
    assert decision.outcome is Outcome.REJECT and decision.error is not None
    assert "backstop" in str(decision.error)
    assert decision.rule is not None and decision.rule.line == CHUNK_STATEMENTS + 1
