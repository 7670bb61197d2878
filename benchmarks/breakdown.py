"""Where a 50-rule decision's time goes, against the plain-Python floor (issue 18 §2).

    python -m benchmarks.breakdown [--seconds 5] [--out FILE]

The peers scenario shows policyd's 50-rule decision at 4-5x the hand-written floor. This splits
that time, in one process, interleaved, as medians of µs per call:

- **fixed**: `decide()` of a NewProxy rule file with one rule that never fires: the Budget, the
  request's names, the Decision, the program's call;
- **per rule, the cheapest**: 50 rules of `content.remote_port == -1` (a field read and a
  compare inline, no call): what a rule costs where the sandbox charges nothing at run time;
- **the 50-rule policy**, allow and rewrite, and the floor for both;
- **its rules by kind**: the 50-rule file cut after each section, so each section's cost is the
  difference to the cut before it.

What is left between "50 cheapest rules" and "the 50-rule policy" is the sandbox's work per
operation: each `in` over data, method call, `regex()`, template and `set` charges its operands'
size through a Python call with the budget before it runs (docs/performance.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.peers.common import NOW, POLICY_DIR
from benchmarks.peers.floor import Floor
from benchmarks.peers.requests import ALLOW, REWRITE
from benchmarks.peers.scenario import BATCH_SECONDS, batch_us, calibrated
from policyd.engine import decide
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Op

RULES = POLICY_DIR / "NewProxy.rules"


def policy_in(directory: Path, rules: str, data: bool = True) -> Policy:
    directory.mkdir(parents=True)
    (directory / "NewProxy.rules").write_text(rules)
    if data:
        shutil.copytree(POLICY_DIR / "data", directory / "data")
    return load_policy(directory)


def sections_of(text: str) -> list[tuple[str, str]]:
    """(section title, the rule file up to the end of that section) for each `# title` section."""
    lines = text.splitlines(keepends=True)
    cuts: list[tuple[str, int]] = []
    for i, line in enumerate(lines):
        if line.startswith("# ") and i > 2:
            cuts.append((line[2:].strip(), i))
    out = []
    for n, (title, _) in enumerate(cuts):
        end = cuts[n + 1][1] if n + 1 < len(cuts) else len(lines)
        out.append((title, "".join(lines[:end])))
    return out


def measure(subjects: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """{name: median µs per call}, the subjects interleaved round by round."""
    calls = [(name, fn, calibrated(fn)) for name, fn in subjects.items()]
    rounds = max(5, int(seconds / (len(calls) * BATCH_SECONDS)))
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for r in range(rounds):
        for name, fn, n in calls[r % len(calls) :] + calls[: r % len(calls)]:
            samples[name].append(batch_us(fn, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def run(seconds: float) -> dict[str, Any]:
    floor = Floor()
    text = RULES.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lets = "".join(line for line in text.splitlines(keepends=True)[:4] if line.startswith("let "))
        policies = {
            "fixed: one rule that never fires": policy_in(
                root / "fixed", 'reject "x" when content.remote_port == -1\n', data=False
            ),
            "50 cheapest rules (a field compared inline)": policy_in(
                root / "cheap", 'reject "x" when content.remote_port == -1\n' * 50, data=False
            ),
            "the lets alone": policy_in(root / "lets", lets + 'reject "x" when content.remote_port == -1\n'),
        }
        sections = sections_of(text)
        for n, (title, prefix) in enumerate(sections):
            policies[f"policy50 up to '{title}'"] = policy_in(root / f"s{n}", prefix)
        full = load_policy(POLICY_DIR)
        subjects: dict[str, Callable[[], object]] = {
            name: functools.partial(decide, policy, Op.NEW_PROXY, ALLOW, now=NOW)
            for name, policy in policies.items()
        }
        subjects["policy50, allow"] = functools.partial(decide, full, Op.NEW_PROXY, ALLOW, now=NOW)
        subjects["policy50, rewrite"] = functools.partial(decide, full, Op.NEW_PROXY, REWRITE, now=NOW)
        subjects["floor, allow"] = functools.partial(floor.decide, ALLOW, NOW)
        subjects["floor, rewrite"] = functools.partial(floor.decide, REWRITE, NOW)
        for name, fn in subjects.items():  # every subject decides as it should before it is timed
            result = fn()
            outcome = getattr(result, "outcome", None)
            value = getattr(outcome, "value", outcome)
            assert value in ("allow", "rewrite"), f"{name}: {value}"
        medians = measure(subjects, seconds)
    sections_us = []
    before = medians["the lets alone"]
    for title, _ in sections:
        at = medians[f"policy50 up to '{title}'"]
        sections_us.append({"section": title, "us": round(at - before, 2)})
        before = at
    return {"medians_us": {k: round(v, 2) for k, v in medians.items()}, "sections_us": sections_us}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per subject group")
    parser.add_argument("--out", type=Path, help="where the JSON goes")
    args = parser.parse_args(argv)
    result = run(args.seconds)
    m = result["medians_us"]
    fixed, cheap = m["fixed: one rule that never fires"], m["50 cheapest rules (a field compared inline)"]
    print("where a 50-rule NewProxy decision's time goes (µs per decision, medians)")
    for name, us in m.items():
        print(f"  {name:<58} {us:8.2f}")
    print("by section of benchmarks/policy50/NewProxy.rules (each against the cut before it):")
    for row in result["sections_us"]:
        print(f"  {row['section']:<58} {row['us']:8.2f}")
    per_rule = (cheap - fixed) / 49
    allow, floor = m["policy50, allow"], m["floor, allow"]
    print(
        f"fixed {fixed:.2f} µs; a rule that charges nothing {per_rule:.3f} µs; the policy's allow "
        f"{allow:.2f} µs = {allow / floor:.2f}x the floor ({floor:.2f} µs); "
        f"{allow - cheap:.2f} µs above 50 rules that charge nothing"
    )
    out = (
        args.out
        or Path(__file__).resolve().parent / "results" / f"breakdown-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": {"python": sys.version}, **result}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
