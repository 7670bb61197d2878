"""How far past its budget a decision built to overrun it runs: the bound SECURITY.md states.

    python -m benchmarks.overrun [--rounds 5]        (or: python -m benchmarks.run --only overrun)

Each case is a policy inside every documented limit (rules per file, characters per rule,
nodes per expression, data file size, request size) built to make one decision as long as it
can with one kind of operation. Each is decided with the default budget (100 ms of CPU) twice:
with the default --max-steps, where the steps end it first, and with --max-steps raised to 10^12,
where only the clock can (the worst case for the clock). A decision's overrun is its CPU time in
decide() minus the budget; the bound is the largest over every case and round. The two cases of
issue 12 §1 come first. tests/security/test_worst_cases.py holds each case to its error and its
step accounting; only this script measures time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyd.engine import EvalOptions, decide
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Decision, Op
from policyd.rules.sandbox import CIDR_NETWORK_STEPS, DEFAULT_EVAL_SECONDS, MAX_OPERATION_STEPS

UNBOUNDED_STEPS = 10**12  # --max-steps so high that only the clock ends a decision
STATED_BOUND_MS = 5.0  # the overrun SECURITY.md states for this machine (one operation + a chunk)
LOOP = "any(1 for i in range(10000) if {})"  # 10,000 operations, each as big as one may be


@dataclass(frozen=True)
class Case:
    """A policy (rule and data files) and the request that makes it run as long as it can."""

    name: str
    files: Callable[[], dict[str, str]]
    content: dict[str, Any] = field(default_factory=dict)
    op: Op = Op.NEW_PROXY


def _rules(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _looped(expression: str) -> str:
    return 'reject "x" when ' + LOOP.format(expression)


def _upper_lower() -> dict[str, str]:
    terms = " or ".join(["s.upper() == s.lower()"] * 40)
    return {"NewProxy.rules": _rules('let s = "a" * 99999', *[f'reject "x" when {terms}'] * 100)}


def _in_big_list() -> dict[str, str]:
    # 6.9 MB of compact JSON: the most items that fit the 8 MiB total of data (MAX_DATA_BYTES).
    big = json.dumps({"l": list(range(1_000_000))}, separators=(",", ":"))
    return {"NewProxy.rules": _rules(*['reject "x" when "zz" in data.big.l'] * 20), "data/big.json": big}


# Just under what one operation may take: each runs, then the clock is read before the next.
SCAN_ITEMS = MAX_OPERATION_STEPS - 2


def _max_scans() -> dict[str, str]:
    big = json.dumps({"l": [f"user-{i:07d}" for i in range(SCAN_ITEMS)]})
    return {"NewProxy.rules": _rules(_looped("'zz' in data.big.l")), "data/big.json": big}


def _nfa_regex() -> dict[str, str]:
    # (a|b)*a(a|b){50}c on random a/b text overflows RE2's DFA (every character is a new state):
    # ~15 ns per character and program instruction. The "c" keeps RE2's prefilter from
    # answering at once; each call is charged just under what one operation may take.
    rng = random.Random(12)
    value = "".join(rng.choice("ab") for _ in range(1500)) + "c"
    return {
        "NewProxy.rules": _rules(_looped("regex('(a|b)*a(a|b){50}c', data.v.v)")),
        "data/v.json": json.dumps({"v": value}),
    }


def _strip() -> dict[str, str]:
    # strip(chars) tests each character against each of `chars`: 2,000 x 7,901.
    return {"NewProxy.rules": _rules('let s = "a" * 2000', 'let c = "b" * 7900 + "a"', _looped("s.strip(c)"))}


def _case_mapping() -> dict[str, str]:
    # The slowest per-character work: upper-casing ß (to SS), ~27 ns a character.
    return {"NewProxy.rules": _rules('let s = "ß" * 50000', _looped("s.upper()"))}


def _deep_compare() -> dict[str, str]:
    nested = [[j for j in range(1000)] for _ in range(240)]
    data = json.dumps({"a": nested, "b": [list(x) for x in nested]})
    return {"NewProxy.rules": _rules(_looped("data.d.a == data.d.b")), "data/d.json": data}


def _sorting() -> dict[str, str]:
    return {
        "NewProxy.rules": _rules(
            "let xs = [('x' * 500) + str(900 - i) for i in range(900)]",
            _looped("sorted(xs)"),
        )
    }


def _printing() -> dict[str, str]:
    data = json.dumps({"l": list(range(15_000))})
    return {"NewProxy.rules": _rules(_looped("str(data.d.l)")), "data/d.json": data}


def _cidr() -> dict[str, str]:
    networks = [f"10.{i // 256}.{i % 256}.0/24" for i in range(MAX_OPERATION_STEPS // CIDR_NETWORK_STEPS - 2)]
    return {
        "NewProxy.rules": _rules(_looped("cidr('192.0.2.1', data.n.l)")),
        "data/n.json": json.dumps({"l": networks}),
    }


def _static_work() -> dict[str, str]:
    # Uncharged constant work (a time-of-day call is charged; len() is not), read by the clock
    # between chunks of 16 rules: 400 rules of 60 calls (482 parts each, near the most allowed).
    terms = " or ".join(["len(s) == 1"] * 60)
    return {"NewProxy.rules": _rules('let s = "ab"', *[f'reject "x" when {terms}'] * 400)}


def _sets() -> dict[str, str]:
    # Each set copies a 40,000-key metas map (a 1 MiB request) and the next rule reads it whole.
    rules = [f'set content.metas.k{i} = "v" when len(content.metas) > 0' for i in range(2000)]
    return {"NewProxy.rules": _rules(*rules)}


CASES = [
    Case("issue 12: s.upper() == s.lower(), 100 rules x 40", _upper_lower),
    Case("issue 12: 'zz' in a 1M-item data list, 20 rules", _in_big_list),
    Case(f"'in' over {SCAN_ITEMS:,} items, in a loop", _max_scans),
    Case("regex() overflowing RE2's DFA, in a loop", _nfa_regex),
    Case("s.strip(7,901 chars) of 2,000 chars, in a loop", _strip),
    Case("('ß' * 50000).upper(), in a loop", _case_mapping),
    Case("== of two 240k-item nested data lists, in a loop", _deep_compare),
    Case("sorted() of 900 long strings, in a loop", _sorting),
    Case("str() of a 15,000-item data list, in a loop", _printing),
    Case("cidr() against 3,900 networks, in a loop", _cidr),
    Case("400 rules of 60 uncharged len() calls", _static_work),
    Case(
        "2,000 sets into a 40,000-key metas map",
        _sets,
        {"user": {"user": "alice"}, "metas": {f"key{i:05d}": "v" * 8 for i in range(40_000)}},
    ),
]


def load(case: Case) -> Policy:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in case.files().items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return load_policy(Path(tmp))


def timed(policy: Policy, case: Case, options: EvalOptions) -> tuple[Decision, float, float]:
    """The decision, and the CPU and wall seconds decide() took."""
    cpu, wall = time.thread_time(), time.perf_counter()
    decision = decide(policy, case.op, case.content, options=options)
    return decision, time.thread_time() - cpu, time.perf_counter() - wall


def run(rounds: int = 5) -> list[dict[str, Any]]:
    rows = []
    unbounded = EvalOptions(max_steps=UNBOUNDED_STEPS)
    for case in CASES:
        policy = load(case)
        decide(policy, case.op, case.content)  # warm: compiled patterns, zone data
        default = [timed(policy, case, EvalOptions()) for _ in range(rounds)]
        clock = [timed(policy, case, unbounded) for _ in range(rounds)]
        error = clock[-1][0].error
        rows.append(
            {
                "scenario": "overrun",
                "subject": case.name,
                "stopped_by": "" if error is None else error.message[:60],
                "default_cpu_ms": round(max(c for _, c, _ in default) * 1e3, 1),
                "cpu_ms": round(statistics.median(c for _, c, _ in clock) * 1e3, 1),
                "wall_ms": round(statistics.median(w for _, _, w in clock) * 1e3, 1),
                "overrun_ms": round((max(c for _, c, _ in clock) - DEFAULT_EVAL_SECONDS) * 1e3, 1),
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"\nbudget overrun: {DEFAULT_EVAL_SECONDS * 1e3:.0f} ms of CPU per decision")
    print(f"  {'case':52} {'steps-bound':>11} {'clock-bound':>11} {'overrun':>8}  stopped by (clock-bound)")
    for r in rows:
        print(
            f"  {r['subject']:52} {r['default_cpu_ms']:>9} ms {r['cpu_ms']:>8} ms {r['overrun_ms']:>5} ms"
            f"  {r['stopped_by']}"
        )
    worst = max(rows, key=lambda r: r["overrun_ms"])
    print(f"  worst overrun: {worst['overrun_ms']} ms ({worst['subject']})")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rounds", type=int, default=5)
    rows = run(parser.parse_args().rounds)
    print_rows(rows)


if __name__ == "__main__":
    main()
