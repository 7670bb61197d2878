"""The playground: decide one request with the serving policy, or with one rule file edited.

It is `policyd eval` with the text of the op's rule file given: the candidate policy is loaded by
the service's loader (the serving directory with that file replaced, see `files`), the request is
decided by `explain()` (the service's `decide()` with the trace kept) under the service's own
EvalOptions (fail-open ops, step and time budgets), and the answer is the exact JSON frps would
get. Nothing is written to the policy directory.

State functions read the service's live state through the state layer's non-recording view:
`proxies()` and `sessions()` see what the service sees, `rate()` answers as if this evaluation
counted, and nothing is counted, registered or forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from policyd.console.editing import Pause, diagnostics, load_candidate
from policyd.console.errors import ConsoleError
from policyd.console.files import candidate_directory
from policyd.engine import EvalOptions, StateBinding
from policyd.policy import RULES_SUFFIX, Policy, policy_sources
from policyd.rules.decision import OPS
from policyd.tools.check import lint
from policyd.tools.eval import explain

MAX_REQID_CHARS = 64


@dataclass(frozen=True, slots=True)
class PlaygroundRequest:
    op: str
    content: dict[str, Any]
    rules: str | None  # the op's rule file as edited; None decides with the serving policy
    reqid: str = ""
    now: float | None = None


def read_playground_request(doc: Any) -> PlaygroundRequest:
    """Check the JSON body of POST /ui/api/eval; ConsoleError says what is wrong."""
    if not isinstance(doc, dict):
        raise ConsoleError("expected a JSON object {op, content, rules?, reqid?, now?}")
    unknown = sorted(set(doc) - {"op", "content", "rules", "reqid", "now"})
    if unknown:
        raise ConsoleError(f"unknown field {unknown[0]!r}; expected op, content, rules, reqid, now")
    op = doc.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ConsoleError(f"'op' must be one of {', '.join(OPS)}; got {op!r}")
    content = doc.get("content")
    if not isinstance(content, dict):
        raise ConsoleError("'content' must be a JSON object (the request's content, as frps sends it)")
    rules = doc.get("rules")
    if rules is not None and not isinstance(rules, str):
        raise ConsoleError("'rules' must be the rule file's text, or absent")
    reqid = doc.get("reqid", "")
    if not isinstance(reqid, str) or len(reqid) > MAX_REQID_CHARS:
        raise ConsoleError(f"'reqid' must be a string of at most {MAX_REQID_CHARS} characters")
    now = doc.get("now")
    if now is not None and (isinstance(now, bool) or not isinstance(now, int | float)):
        raise ConsoleError("'now' must be a number (unix seconds) or absent")
    return PlaygroundRequest(op, content, rules, reqid, now)


def evaluate(
    request: PlaygroundRequest,
    *,
    root: Path,
    serving: Policy,
    options: EvalOptions,
    state: StateBinding | None = None,
    pause: Pause | None = None,
) -> dict[str, Any]:
    """The playground's answer: the explanation, or the candidate's load errors (with positions).

    `state` is the service's live state; it is read through its non-recording view whatever it
    says. Without it, state functions read an empty state.
    """
    op = OPS[request.op]
    rel = f"{op.value}{RULES_SUFFIX}"
    result: dict[str, Any] = {"op": op.value, "rule_file": rel, "edited": request.rules is not None}
    if request.rules is None:
        policy = serving
        warnings: list[dict[str, Any]] = []
    else:
        with candidate_directory(root, rel, request.rules) as candidate:
            loaded, errors = load_candidate(candidate, serving, pause, (root.resolve(),))
            if loaded is None:
                return {**result, "ok": False, "errors": errors}
            policy = loaded
            findings = [w for w in lint(policy) if w.location is not None and w.location.file == rel]
            warnings = diagnostics(findings, policy_sources(candidate, (root.resolve(),)))
    view = None if state is None else replace(state, recording=False)
    explanation = explain(
        policy, op, request.content, reqid=request.reqid, now=request.now, options=options, state=view
    )
    rule_file = policy.rules.get(op)
    return {
        **result,
        "ok": True,
        "policy_version": policy.version,
        "serving_version": serving.version,
        "lint": warnings,
        "explanation": explanation.to_dict(),
        # What the rules' state functions read: the service's live state, never changed.
        "state": {
            "functions": sorted(rule_file.state_functions) if rule_file is not None else [],
            "backend": view.backend.kind if view is not None else None,
            "recorded": False,
        },
    }
