"""`python -m benchmarks.run --only peers`: µs per 50-rule NewProxy decision, policyd vs its peers.

Every engine decides the same three requests (allow, reject at rule 24, rewrite), timed in one
process, interleaved: each round times one batch of every engine in turn (the order rotating), and
an engine's figure is the median over the rounds of µs per call. Before any timing, each engine
must reach policyd's decision (outcome, reason, whole rewritten content, warnings) on every
request of requests.py; one that does not is an error, never a figure.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.peers import requests
from benchmarks.peers.common import NOW, Engine, Verdict

SCENARIO = "peers: the 50-rule NewProxy policy, µs per decision"
CASES = (
    ("allow", requests.ALLOW),
    ("reject24", requests.REJECT_AT_24),
    ("rewrite", requests.REWRITE),
)
CASE_TITLES = {"allow": "allow", "reject24": "reject at rule 24", "rewrite": "rewrite"}
BATCH_SECONDS = 0.05  # one timed batch of one engine
MIN_ROUNDS = 5


@dataclass
class Subject:
    """One engine of the table, and what it is to policyd."""

    engine: Engine
    role: str  # "policyd", "floor" or "peer"
    compares: tuple[str, ...] = ("outcome", "reason", "content", "warnings")
    timed: Callable[[dict[str, Any]], Callable[[], object]] | None = None  # what one call is


class Disagreement(AssertionError):
    """Raised when an engine decides a request differently from policyd: its figures would lie."""


def _subjects() -> tuple[list[Subject], list[tuple[str, str]]]:
    """The engines this machine can run, and (name, why) for those it cannot."""
    from benchmarks.peers.floor import Floor
    from benchmarks.peers.policyd_peer import Policyd

    policyd = Policyd()
    subjects = [
        Subject(policyd, "policyd", timed=lambda c: policyd.timed(c, NOW)),
        Subject(Floor(), "floor"),
    ]
    skipped = []
    for module, cls, package in (
        ("benchmarks.peers.rego_peer", "Rego", "opa-eval"),
        ("benchmarks.peers.cel_peer", "Cel", "common-expression-language"),
    ):
        try:
            engine = getattr(__import__(module, fromlist=[cls]), cls)()
        except ImportError as e:
            skipped.append((package, f"not installed ({e}); pip install -e '.[bench]'"))
            continue
        subjects.append(Subject(engine, "peer"))
    try:
        subjects.append(Subject(_SimpleEval(policyd), "peer", compares=("outcome", "reason")))
    except ImportError as e:  # benchmarks.inproc follows policyd's internals; say so if it broke
        skipped.append(("simpleeval", f"benchmarks.inproc does not import: {e}"))
    return subjects, skipped


class _SimpleEval:
    """benchmarks.inproc's plain-simpleeval engine (cached parse, one evaluator reused): it reports
    outcome and reason, so those are what it is held to."""

    name = "simpleeval, cached parse (benchmarks.inproc)"

    def __init__(self, policyd: Any) -> None:
        from benchmarks.inproc import TreeEngine, plain_simpleeval

        self._engine = TreeEngine(policyd.policy, policyd.op, plain_simpleeval())

    def decide(self, content: dict[str, Any], now: int) -> Verdict:
        outcome, reason = self._engine.decide(content)
        return Verdict(outcome, reason)


def check(subjects: list[Subject]) -> int:
    """Hold every engine to policyd's decision on every request; returns how many were checked."""
    reference = subjects[0].engine
    cases = requests.requests()
    for name, content in cases.items():
        expected = reference.decide(content, NOW)
        for subject in subjects[1:]:
            got = subject.engine.decide(requests.requests()[name], NOW)
            for part in subject.compares:
                if getattr(got, part) != getattr(expected, part):
                    raise Disagreement(
                        f"{subject.engine.name} on {name!r}: {part} is {getattr(got, part)!r}, "
                        f"policyd's is {getattr(expected, part)!r}"
                    )
    return len(cases)


def calibrated(fn: Callable[[], object]) -> int:
    """Calls per batch of about BATCH_SECONDS (after a warm-up)."""
    for _ in range(20):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < BATCH_SECONDS / 2:
        fn()
        n += 1
    return max(1, n * 2)


def batch_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(subjects: list[Subject], seconds: float) -> dict[str, dict[str, float]]:
    """{engine name: {case: median µs per decision}}, the engines interleaved round by round."""
    rounds = max(MIN_ROUNDS, int(seconds / (len(subjects) * BATCH_SECONDS)))
    medians: dict[str, dict[str, float]] = {s.engine.name: {} for s in subjects}
    for case, content in CASES:
        calls = []
        for s in subjects:
            fn = s.timed(content) if s.timed else functools.partial(s.engine.decide, content, NOW)
            calls.append((s.engine.name, fn, calibrated(fn)))
        samples: dict[str, list[float]] = {name: [] for name, _, _ in calls}
        for r in range(rounds):
            for name, fn, n in calls[r % len(calls) :] + calls[: r % len(calls)]:
                samples[name].append(batch_us(fn, n))
        for name, values in samples.items():
            medians[name][case] = statistics.median(values)
    return medians


def run(seconds: float = 5.0) -> list[dict[str, Any]]:
    """Rows for benchmarks/run.py: one per engine, with µs per case and the ratio to policyd."""
    subjects, skipped = _subjects()
    checked = check(subjects)
    medians = measure(subjects, seconds)
    base = medians[subjects[0].engine.name]
    rows: list[dict[str, Any]] = []
    for s in subjects:
        row: dict[str, Any] = {"scenario": SCENARIO, "subject": s.engine.name, "role": s.role}
        for case, _ in CASES:
            us = medians[s.engine.name][case]
            row[f"{case}_us"] = round(us, 2)
            row[f"{case}_vs_policyd"] = round(us / base[case], 2)
        row["checked"] = f"{checked} requests: {', '.join(s.compares)}"
        rows.append(row)
    for name, why in skipped:
        print(f"peers: skipping {name}: {why}", file=sys.stderr)
        rows.append({"scenario": SCENARIO, "subject": name, "role": "peer", "skipped": why})
    return rows


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, float]]:
    """(name, value, op, bound) of issue 18's first two targets, judged on this run's rows."""
    timed = [r for r in rows if r["scenario"] == SCENARIO and "skipped" not in r]
    policyd = next((r for r in timed if r["role"] == "policyd"), None)
    floor = next((r for r in timed if r["role"] == "floor"), None)
    peers = [r for r in timed if r["role"] == "peer"]
    missing = [r["subject"] for r in rows if r["scenario"] == SCENARIO and "skipped" in r]
    unjudged = f" (not run: {', '.join(missing)})" if missing else ""
    out = []
    if policyd and peers:
        for case, _ in CASES:
            fastest = min(peers, key=lambda r: r[f"{case}_us"])
            name = f"fastest peer ({fastest['subject']}){unjudged} µs / policyd µs"
            out.append(
                (
                    f"peers, {CASE_TITLES[case]}: {name}",
                    round(fastest[f"{case}_us"] / policyd[f"{case}_us"], 2),
                    ">=",
                    5.0,
                )
            )
    if policyd and floor:
        for case in ("allow", "rewrite"):
            out.append(
                (
                    f"peers, {CASE_TITLES[case]}: policyd µs / plain-Python floor µs",
                    round(policyd[f"{case}_us"] / floor[f"{case}_us"], 2),
                    "<=",
                    2.0,
                )
            )
    return out
