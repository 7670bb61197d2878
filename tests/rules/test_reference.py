"""The reference evaluator on its own: configured from the sandbox tables, refusing the rest."""

from __future__ import annotations

import ast

import pytest
from simpleeval import FeatureNotAvailable

from policyd.errors import EvaluationError, LimitError
from policyd.rules import reference
from policyd.rules.decision import Op
from policyd.rules.sandbox import Budget
from tests.helpers import load_errors

NAMES = reference.request_names(
    Op.NEW_PROXY,
    {"user": {"user": "alice", "metas": {"team": "red"}}, "remote_port": 6022, "future": 1},
    data={"teams": {"red": {"ports": [6000, 6999]}}},
    now=5,
)


def evaluate(source: str, budget: Budget | None = None) -> object:
    return reference.evaluate(ast.parse(source, mode="eval").body, NAMES, budget or Budget())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("content.remote_port in range(6000, 7000)", True),
        ("user.metas.team + '-' + content.proxy_type", "red-"),
        ("content.custom_domains", []),
        ("content['future']", 1),
        ("content['never_sent']", None),
        ("user.metas.nothing", ""),
        ("data.teams[user.metas.team].ports[1] - now", 6994),
        ("sorted({'b': 1, 'a': 2}.keys())", ["a", "b"]),
        ("[x * 2 for x in range(3) if x]", [2, 4]),
        ("{k: v for k, v in {'a': 1}.items()}", {"a": 1}),
        ("f'{content.remote_port}!'", "6022!"),
        ("content.remote_port is None", False),
    ],
)
def test_reference_values(source: str, expected: object) -> None:
    assert evaluate(source) == expected


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("content.__class__", FeatureNotAvailable),
        ("(1).real", EvaluationError),
        ("''.format", EvaluationError),
        ("tuple([1])", FeatureNotAvailable),
        ("[1].append(2)", EvaluationError),
        ("data.nope", EvaluationError),
        ("lambda: 1", FeatureNotAvailable),
        ("'a' * 200000", LimitError),
        ("2 ** 100000", LimitError),
    ],
)
def test_reference_refuses(source: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        evaluate(source)


def test_reference_charges_the_budget() -> None:
    budget = Budget(max_steps=10)
    with pytest.raises(LimitError):
        evaluate("[x for x in range(100)]", budget)
    budget = Budget()
    evaluate("[x for x in range(3)]", budget)
    # iterating range(3) (3), one per item (3); a range and plain ints cost nothing as built
    assert budget.steps == 6


def test_is_compares_with_none_true_or_false_only() -> None:
    (error,) = load_errors({"NewProxy.rules": "reject 'x' when content.metas is content.metas"})
    assert "'is' compares with None, True or False only" in str(error)
