"""What the console's rings cost a decision, against baselines measured in the same run.

    python -m benchmarks.console_ring [--decisions 20000] [--rounds 7]

Three figures (µs per decision; each the median, over `--rounds` interleaved rounds, of the
difference between the measured batch and its baseline batch in the same round):

- `feed.add`: the call the plugin route makes per decision when the console is on (read the
  clock, count in the current second, queue a reference for masking), minus an empty call with
  the same arguments. The decisions are real ones of the shipped policy, over the fixtures.
- the route: the plugin route in-process (benchmarks.route's way: the ASGI app, no HTTP) with the
  console on, its feed real minus the same app with the feed's add() emptied: what feeding costs
  a request, including what keeping decisions for a moment does to the allocator and the garbage
  collector. Its noise floor (both sides empty) is printed beside it: on a shared machine it is
  as large as the figure.
- masking, off the request path: the housekeeping tick masks what waits, at most DECISIONS_KEPT a
  tick, so its cost per second is bounded whatever the traffic; printed per masked decision and
  as the most it takes per tick.

Prints a table and writes it, with the environment, to benchmarks/results/console-ring-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.route import REQUEST, SCOPE
from policyd.console.rings import DECISIONS_KEPT, TICK_S, ConsoleFeed
from policyd.engine import decide
from policyd.policy import load_policy
from policyd.protocol import parse_request
from policyd.rules.decision import Decision
from policyd.service.app import create_app
from policyd.service.decisionlog import decision_record
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHIPPED = ROOT / "policies"
BUDGET_US = 1.0  # what issue 17 allows the rings per decision


def _decisions() -> list[tuple[Decision, bytes, str]]:
    policy = load_policy(SHIPPED)
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        body = path.read_bytes()
        request = parse_request(body)
        out.append((decide(policy, request.op, request.content), body, "0123456789abcdef"))
    return out


def _noop(decision: Decision, body: bytes, reqid: str) -> None:
    pass


def _per_call_us(call: Any, samples: list[tuple[Decision, bytes, str]], count: int) -> float:
    batch = (samples * (count // len(samples) + 1))[:count]
    start = time.perf_counter()
    for decision, content, reqid in batch:
        call(decision, content, reqid)
    return (time.perf_counter() - start) / count * 1e6


def measure_add(count: int, rounds: int) -> dict[str, Any]:
    samples = _decisions()
    feed = ConsoleFeed(decision_record)
    adds, empties = [], []
    _per_call_us(feed.add, samples, count)  # warm-up
    for _ in range(rounds):
        empties.append(_per_call_us(_noop, samples, count))
        adds.append(_per_call_us(feed.add, samples, count))
    return {
        "subject": "feed.add per decision",
        "us": _paired(adds, empties),
        "raw_us": round(statistics.median(adds), 3),
        "empty_call_us": round(statistics.median(empties), 3),
    }


def _paired(measured: list[float], baseline: list[float]) -> float:
    """The median of the per-round differences: a slow stretch of the machine hits both sides."""
    return round(statistics.median(m - b for m, b in zip(measured, baseline, strict=True)), 3)


def measure_masking(rounds: int) -> dict[str, Any]:
    samples = _decisions()
    per_decision = []
    for _ in range(rounds):
        feed = ConsoleFeed(decision_record)
        for index in range(DECISIONS_KEPT):
            feed.add(*samples[index % len(samples)])
        start = time.perf_counter()
        feed.housekeeping()
        per_decision.append((time.perf_counter() - start) / DECISIONS_KEPT * 1e6)
    us = statistics.median(per_decision)
    return {
        "subject": "masking a waiting decision (housekeeping, off the request path)",
        "us": round(us, 3),
        "most_per_tick_ms": round(us * DECISIONS_KEPT / 1000, 2),
        "tick_s": TICK_S,
    }


async def _route_us(app: Any, requests: int) -> float:
    async def receive() -> Any:
        return REQUEST

    async def send(message: Any) -> None:
        pass

    start = time.perf_counter()
    for _ in range(requests):
        await app(dict(SCOPE), receive, send)
    return (time.perf_counter() - start) / requests * 1e6


def _empty_add(self: ConsoleFeed, decision: Decision, body: bytes, reqid: str) -> None:
    pass


async def measure_route(requests: int, rounds: int) -> list[dict[str, Any]]:
    """The route with the console on, its feed's add() real or empty (all else equal), and the
    same measurement with both sides empty: the noise floor of this machine, right now."""
    policies = HERE / "policy50"
    app = create_app(
        Settings(policies=policies, decision_log="off", console="read"), PolicyStore(policies), watch=False
    )
    real = ConsoleFeed.add
    sides = {"real": real, "empty": _empty_add}
    await _route_us(app, 2000)  # warm-up
    times: dict[str, list[float]] = {"real": [], "empty": [], "empty again": []}
    try:
        for round_ in range(rounds):
            order = ["real", "empty", "empty again"]
            for name in order if round_ % 2 else reversed(order):
                ConsoleFeed.add = sides.get(name, _empty_add)  # type: ignore[method-assign]
                times[name].append(await _route_us(app, requests))
    finally:
        ConsoleFeed.add = real  # type: ignore[method-assign]
    return [
        {
            "subject": "plugin route, console feed real vs empty (50-rule policy, in-process)",
            "us": _paired(times["real"], times["empty"]),
            "route_us": round(statistics.median(times["real"]), 3),
        },
        {
            "subject": "  noise floor: the same, both sides empty",
            "us": _paired(times["empty again"], times["empty"]),
        },
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=10_000, help="decisions per timed batch")
    parser.add_argument("--rounds", type=int, default=15, help="batches per figure (the median is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    rows = [measure_add(args.decisions, args.rounds), measure_masking(args.rounds)]
    rows += asyncio.run(measure_route(args.decisions // 2, args.rounds * 2))
    for row in rows:
        extra = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("subject", "us"))
        print(f"  {row['subject']:<66} {row['us']:7.3f} µs  ({extra})")
    verdict = "within" if rows[0]["us"] <= BUDGET_US else "OVER"
    print(f"  feed.add: {verdict} the {BUDGET_US} µs budget per decision")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("console-ring-%Y%m%d-%H%M%S.json")
    environment = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    path.write_text(json.dumps({"environment": environment, "budget_us": BUDGET_US, "rows": rows}, indent=2))
    print(f"  written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
