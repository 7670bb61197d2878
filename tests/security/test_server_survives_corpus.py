"""A sample of the corpus through a real `policyd serve`: each attack fails safely, the next good
request is answered, and broken versions are refused with positioned errors while the last good
version keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.security.corpus import EVAL_FAILS, LOAD_REFUSED, as_rule
from tests.security.harness import DATA_FILES, assert_valid_answer
from tests.support import PolicydProcess, write_policy

Start = Callable[..., PolicydProcess]
POLICY_ERROR = {"reject": True, "reject_reason": "policy error"}
GOOD = {"reject": True, "reject_reason": "good request answered"}

EVAL_SAMPLE = [c for c in EVAL_FAILS if as_rule(c[1]) != c[1]][::3]  # expressions only
LOAD_SAMPLE = [c for c in LOAD_REFUSED if "\n" not in c[1] and len(c[1]) < 200][::6]


def request(proxy_name: str) -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "op": "NewProxy",
        "content": {"user": {"user": "alice", "metas": {"team": "red"}}, "proxy_name": proxy_name},
    }


def sample_policy() -> str:
    """One rule per attack, each armed only for its own proxy name, then a rule for the rest."""
    lines = [
        f'reject "never" when content.proxy_name == "{name}" and ({expression})'
        for name, expression, _ in EVAL_SAMPLE
    ]
    return "\n".join([*lines, f'reject "{GOOD["reject_reason"]}"'])


def test_attacks_fail_closed_and_the_next_request_is_answered(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {**DATA_FILES, "NewProxy.rules": sample_policy()})
    server = policyd_server(policies)
    assert len(EVAL_SAMPLE) >= 10
    for name, _, _ in EVAL_SAMPLE:
        attacked = server.post(request(name))
        assert attacked.status_code == 200
        assert attacked.json() == POLICY_ERROR, name
        assert server.post(request("good")).json() == GOOD, f"not answering after {name}"
    logs = server.logs()
    for line, _ in enumerate(EVAL_SAMPLE, 1):
        assert f"NewProxy.rules:{line}:1" in logs


def test_unencodable_answer_is_a_200_reject(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": 'reject "\\ud800"'})
    server = policyd_server(policies)
    response = server.post(request("x"))
    assert (response.status_code, response.json()) == (200, POLICY_ERROR)
    assert server.post(request("y")).status_code == 200


def test_refused_versions_never_serve_and_say_where(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {**DATA_FILES, "NewProxy.rules": sample_policy()})
    server = policyd_server(policies)
    broken = ['reject "broken version served"', *(as_rule(rule) for _, rule, _ in LOAD_SAMPLE)]
    (policies / "NewProxy.rules").write_text("\n".join(broken))
    logs = server.wait_for_log("reload FAILED")
    for line, (name, _, fragment) in enumerate(LOAD_SAMPLE, 2):
        assert f"NewProxy.rules:{line}:" in logs and fragment in logs, name
    answer = server.post(request("good"))
    assert_valid_answer(answer.status_code, answer.content)
    assert answer.json() == GOOD
