"""Shared pieces of the security suite: a policy with mutable-looking data, and safe-failure checks.

Every attack runs against the same data shape: nested tables, lists and maps that a rule could try
to change for every later request, so each check also proves the data stayed as loaded.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from policyd.engine import EvalOptions, decide
from policyd.errors import PolicyError, PolicyLoadError
from policyd.policy import Policy, load_policy
from policyd.rules.decision import GENERIC_ERROR_REASON, Decision, Op, Outcome
from policyd.service.app import create_app
from policyd.service.settings import Settings
from policyd.service.store import PolicyStore
from tests.oracle import add_hook
from tests.support import write_policy

with warnings.catch_warnings():
    # Starlette warns that it prefers httpx2 to the httpx this project pins; either works here.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

# Data files every attack can reach: `data.teams`, `data.access`.
DATA_FILES = {
    "data/teams.json": json.dumps(
        {
            "red": {"ports": [6000, 6999], "domain": "red.example.com", "tokens": ["tk-alice"]},
            "blue": {"ports": [7000, 7999], "domain": "blue.example.com", "tokens": []},
        }
    ),
    "data/access.toml": (
        'admins = ["root"]\nnetworks = ["10.0.0.0/8"]\n[limits]\nmax = 3\n[labels]\nenv = "prod"\n'
    ),
}

# A NewProxy request as frps sends it, with every container kind a rule might try to mutate.
CONTENT: dict[str, Any] = {
    "user": {"user": "alice", "metas": {"team": "red"}, "run_id": "r1"},
    "proxy_name": "alice.web",
    "proxy_type": "http",
    "custom_domains": ["web.red.example.com"],
    "subdomain": "red-web",
    "metas": {"owner": "alice"},
    "headers": {"X-A": "1"},
    "remote_port": 0,
}

# Size and step limits, not the clock, must stop the attacks (on any machine, however busy):
# with a budget of a second of CPU, ten times the default, a decision that still runs out of
# time was not stopped by them. The budget's clock has tests of its own that set it explicitly.
STEADY = EvalOptions(eval_seconds=1.0)


def load(files: dict[str, str]) -> Policy:
    """Load a policy directory written from {relative path: text}."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_policy(write_policy(Path(tmp), files))


def rules_policy(rules: str, op: Op = Op.NEW_PROXY) -> Policy:
    """A policy with the shared data files and one rule file."""
    return load({**DATA_FILES, f"{op.value}.rules": rules})


def load_failure(rules: str, op: Op = Op.NEW_PROXY) -> PolicyLoadError:
    """The PolicyLoadError a rule file causes; fails the test if the file loads."""
    try:
        rules_policy(rules, op)
    except PolicyLoadError as e:
        return e
    raise AssertionError(f"loaded, but should have been refused:\n{rules[:300]}")


def assert_positioned(error: PolicyError, file: str) -> None:
    """A load error must say where: the file and a line (column when the parser knows one)."""
    assert isinstance(error, PolicyError), repr(error)
    assert error.location is not None, f"no location: {error!r}"
    assert error.location.file == file, f"wrong file: {error!r}"
    assert error.location.line >= 1, f"no line: {error!r}"
    assert error.message, f"no message: {error!r}"


@dataclass(frozen=True)
class Run:
    decision: Decision


def decide_and_check_unchanged(
    policy: Policy,
    content: dict[str, Any] | None = None,
    op: Op = Op.NEW_PROXY,
    options: EvalOptions | None = None,
) -> Run:
    """Decide once; assert neither the shared data nor the request changed and, unless `options`
    sets a budget of its own, that a size or step limit stopped it, not the clock."""
    content = copy.deepcopy(CONTENT) if content is None else content
    data_before, content_before = copy.deepcopy(policy.data), copy.deepcopy(content)
    decision = decide(policy, op, content, options=options or STEADY)
    assert policy.data == data_before, "a rule changed the shared data"
    assert content == content_before, "a rule changed the request"
    if options is None and decision.error is not None:
        message = decision.error.message
        assert "ran out of time" not in message, f"stopped by the clock, not by a limit: {message}"
    return Run(decision)


def assert_failed_closed(decision: Decision) -> None:
    """A rule's failure is a reject with the generic reason and the error attached."""
    assert decision.error is not None, f"no error: {decision}"
    assert decision.outcome is Outcome.REJECT, decision
    assert decision.reason == GENERIC_ERROR_REASON, decision
    assert decision.error.location is not None, decision.error


def app_client(policies: Path, **settings: Any) -> TestClient:
    """The real ASGI app on `policies`, in-process (no watcher): for volume without sockets."""
    app = create_app(Settings(policies=policies, **settings), PolicyStore(policies), watch=False)
    return add_hook(TestClient(app, raise_server_exceptions=False))


def assert_valid_answer(status: int, body: bytes) -> None:
    """frps gets exactly one of the three answers (JSON booleans), or a 4xx with a JSON error."""
    doc = orjson.loads(body)
    if status != 200:
        assert 400 <= status < 500, (status, body[:200])
        assert isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str), body[:200]
        return
    assert isinstance(doc, dict), body[:200]
    if doc.get("reject") is True:
        assert set(doc) == {"reject", "reject_reason"} and isinstance(doc["reject_reason"], str), body[:200]
    elif doc.get("unchange") is True:
        assert doc == {"reject": False, "unchange": True}, body[:200]
    else:
        assert set(doc) == {"reject", "unchange", "content"}, body[:200]
        assert doc["reject"] is False and doc["unchange"] is False and isinstance(doc["content"], dict)
