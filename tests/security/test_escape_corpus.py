"""Every entry of the escape and abuse corpus is refused at load time or fails closed, safely.

"Safely" means: the op is rejected with the generic reason and the error is attached with its rule's
location, the decision came back quickly, and neither the shared `data` nor the request changed.
"""

from __future__ import annotations

import pytest

from policyd.rules.decision import Outcome
from tests.security.corpus import EVAL_FAILS, LOAD_REFUSED, as_rule
from tests.security.harness import (
    CONTENT,
    assert_failed_closed,
    assert_positioned,
    decide_and_check_unchanged,
    load_failure,
    rules_policy,
)


def test_corpus_has_at_least_fifty_attacks() -> None:
    assert len(LOAD_REFUSED) + len(EVAL_FAILS) >= 50
    ids = [i for i, _, _ in LOAD_REFUSED + EVAL_FAILS]
    assert len(ids) == len(set(ids)), "corpus ids must be unique"


@pytest.mark.parametrize(
    ("rule", "fragment"), [c[1:] for c in LOAD_REFUSED], ids=[c[0] for c in LOAD_REFUSED]
)
def test_refused_at_load_with_a_positioned_message(rule: str, fragment: str) -> None:
    errors = load_failure(as_rule(rule)).errors
    for error in errors:
        assert_positioned(error, "NewProxy.rules")
    assert any(fragment in error.message for error in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("rule", "fragment"), [c[1:] for c in EVAL_FAILS], ids=[c[0] for c in EVAL_FAILS])
def test_fails_closed_at_evaluation_leaving_data_unchanged(rule: str, fragment: str) -> None:
    policy = rules_policy(as_rule(rule))
    run = decide_and_check_unchanged(policy)
    assert_failed_closed(run.decision)
    assert run.decision.error is not None
    assert fragment in run.decision.error.message, run.decision.error


EXPRESSIONS = [c for c in EVAL_FAILS if as_rule(c[1]) != c[1]]


@pytest.mark.parametrize("expression", [c[1] for c in EXPRESSIONS], ids=[c[0] for c in EXPRESSIONS])
def test_same_policy_decides_the_next_request_after_a_failure(expression: str) -> None:
    """A failure leaves nothing behind in the compiled policy: the next request is decided normally."""
    policy = rules_policy(
        f'reject "x" when content.proxy_name == "alice.web" and ({expression})\nreject "next"'
    )
    assert_failed_closed(decide_and_check_unchanged(policy).decision)
    after = decide_and_check_unchanged(policy, {**CONTENT, "proxy_name": "bob.web"}).decision
    assert (after.outcome, after.reason, after.error) == (Outcome.REJECT, "next", None)


def test_reading_data_every_allowed_way_leaves_it_as_loaded() -> None:
    """Views, copies and rewrites built from data alias it at most; none of them writes to it."""
    rules = """
let teams = data.teams
let red = teams.get("red", {})
let keys = sorted(teams.keys())
let pairs = list(teams.items())
let ports = red["ports"][:] + [1]
let admins = set(data.access.admins) | {"x"}
set content.custom_domains = data.access.networks
set content.headers = user.metas
set content.headers["X-Team"] = str(keys) + str(pairs) + str(ports) + str(sorted(admins))
set content.metas = data.access.labels
set content.metas["owner"] = user.user
"""
    policy = rules_policy(rules)
    first = decide_and_check_unchanged(policy).decision
    assert first.error is None and first.content is not None
    assert first.content["metas"] == {"env": "prod", "owner": "alice"}
    for _ in range(20):
        again = decide_and_check_unchanged(policy).decision
        assert again.content == first.content
    assert policy.data["access"]["labels"] == {"env": "prod"}
