"""In-process benchmark: µs per decision, policyd's compiled rules against plain simpleeval.

The baseline evaluates the very same rules the way a straightforward simpleeval engine would:
each expression parsed once (`previously_parsed`), one `EvalWithCompoundTypes` reused for every
request, names built as full views; lets, sets, templates and the first reject/allow included.
It is checked to reach the same decision as `decide()` before it is timed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import json
import statistics
import time
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simpleeval import EvalWithCompoundTypes

from policyd.engine import decide
from policyd.policy import Policy, load_policy
from policyd.rules import functions, reference
from policyd.rules.decision import Op
from policyd.rules.language import Action
from policyd.rules.sandbox import Budget
from policyd.rules.statements import Statement

HERE = Path(__file__).resolve().parent
FUNCTIONS = {name: fn for name, (fn, _) in functions.FUNCTIONS.items()}


@dataclass(frozen=True)
class _Rule:
    action: Action
    condition: ast.expr | None
    value: ast.expr | None  # let/set value, or the f-string of a reject/warn message
    path: tuple[str, ...]


def _expression(tokens: list[tokenize.TokenInfo], line: str) -> ast.expr:
    src = line[tokens[0].start[1] : tokens[-1].end[1]]
    return ast.parse(src, mode="eval").body


def _split(statement: Statement) -> _Rule:
    """Re-read one rule's source into expression trees (the benchmark's own tiny parser)."""
    line = statement.source
    toks = [
        t
        for t in tokenize.generate_tokens(io.StringIO(line).readline)
        if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT)
    ]
    depth, when = 0, len(toks)
    for i, t in enumerate(toks):
        depth += t.string in "([{" if t.type == tokenize.OP else 0
        depth -= t.string in ")]}" if t.type == tokenize.OP else 0
        if depth == 0 and t.type == tokenize.NAME and t.string == "when":
            when = i
            break
    body = toks[1:when]
    condition = _expression(toks[when + 1 :], line) if when < len(toks) else None
    action = statement.action
    if action in (Action.REJECT, Action.WARN):
        return _Rule(action, condition, ast.parse("f" + body[0].string, mode="eval").body, ())
    if action in (Action.LET, Action.SET):
        eq = next(i for i, t in enumerate(body) if t.string == "=")
        return _Rule(action, condition, _expression(body[eq + 1 :], line), statement.path)
    return _Rule(action, condition, None, ())


Evaluate = Callable[[ast.expr, dict[str, Any], Budget], Any]


def plain_simpleeval() -> Evaluate:
    """Plain simpleeval: one EvalWithCompoundTypes, reused; the expression's parse is cached."""
    evaluator = EvalWithCompoundTypes(functions=dict(FUNCTIONS))

    def evaluate(tree: ast.expr, names: dict[str, Any], budget: Budget) -> Any:
        evaluator.names = names
        return evaluator.eval("", previously_parsed=tree)

    return evaluate


class TreeEngine:
    """decide() for one op, written plainly over an expression evaluator that walks the AST."""

    def __init__(self, policy: Policy, op: Op, evaluate: Evaluate) -> None:
        self.policy = policy
        self.op = op
        self.rules = [_split(s) for s in policy.rules[op].statements]
        self.evaluate = evaluate

    def decide(self, content: dict[str, Any]) -> tuple[str, str]:
        names = reference.request_names(self.op, content, data=self.policy.data, now=int(time.time()))
        budget = Budget()
        ev = self.evaluate
        work: dict[str, Any] | None = None
        for rule in self.rules:
            if rule.condition is not None and not ev(rule.condition, names, budget):
                continue
            assert rule.value is not None or rule.action is Action.ALLOW
            if rule.action is Action.LET:
                names[rule.path[0]] = ev(rule.value, names, budget)  # type: ignore[arg-type]
            elif rule.action is Action.REJECT:
                return "reject", ev(rule.value, names, budget)  # type: ignore[arg-type]
            elif rule.action is Action.ALLOW:
                break
            elif rule.action is Action.WARN:
                ev(rule.value, names, budget)  # type: ignore[arg-type]
            else:
                value = ev(rule.value, names, budget)  # type: ignore[arg-type]
                current: Any = content if work is None else work
                for key in rule.path:
                    current = current.get(key) if isinstance(current, dict) else None
                if current == value:
                    continue  # nothing changes: no copy, so the outcome stays "allow"
                work = dict(content) if work is None else work
                node = work
                for key in rule.path[:-1]:
                    node[key] = node = dict(node.get(key) or {})
                node[rule.path[-1]] = value
                fresh = reference.request_names(self.op, work, data=self.policy.data, now=names["now"])
                names.update(content=fresh["content"], user=fresh["user"])
        return ("rewrite", "") if work is not None else ("allow", "")


def _without_programs(policy: Policy) -> Policy:
    """The policy with its rule files run one by one (closures), as before policyd.rules.program."""
    rules = {op: dataclasses.replace(f, program=None) for op, f in policy.rules.items()}
    return dataclasses.replace(policy, rules=rules)


def _per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Median µs per call over several timed batches of about seconds/5 each."""
    for _ in range(50):
        fn()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < 0.05:
        fn()
        n += 1
    batch = max(1, int(n * seconds / 5 / 0.05))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t) / batch * 1e6)
    return statistics.median(samples)


def run(seconds: float = 2.0) -> list[dict[str, Any]]:
    """Rows for the results table: each policy's NewProxy decision, fast path vs simpleeval."""
    body = json.loads((HERE / "newproxy.json").read_text())
    content = body["content"]
    rows = []
    for label, directory in (("shipped policy", HERE.parent / "policies"), ("50-rule", HERE / "policy50")):
        policy = load_policy(directory)
        baseline = TreeEngine(policy, Op.NEW_PROXY, plain_simpleeval())
        ref = TreeEngine(policy, Op.NEW_PROXY, reference.evaluate)
        fast = decide(policy, Op.NEW_PROXY, content)
        expected = (fast.outcome.value, fast.reason)
        for engine in (baseline, ref):
            if engine.decide(content) != expected:
                raise AssertionError(
                    f"{label}: a baseline decides {engine.decide(content)}, policyd {expected}"
                )
        rules = policy.rules[Op.NEW_PROXY].rule_count
        timings = {}
        subjects: dict[str, Callable[[], object]] = {
            "simpleeval": functools.partial(baseline.decide, content),
            "policyd": functools.partial(decide, policy, Op.NEW_PROXY, content),
            "reference": functools.partial(ref.decide, content),
            "closures": functools.partial(decide, _without_programs(policy), Op.NEW_PROXY, content),
        }
        for name, fn in subjects.items():
            timings[name] = _per_call_us(fn, seconds)
        for name in ("simpleeval", "reference", "closures", "policyd"):
            rows.append(
                {
                    "scenario": f"in-process, {label} ({rules} rules)",
                    "subject": {
                        "simpleeval": "plain simpleeval, cached parse (baseline)",
                        "reference": "policyd.rules.reference evaluator",
                        "closures": "policyd decide(), closures rule by rule",
                        "policyd": "policyd decide() (compiled)",
                    }[name],
                    "us_per_decision": round(timings[name], 2),
                    "ratio": round(timings["simpleeval"] / timings[name], 2),
                }
            )
    return rows
