"""The state functions in the language: checked at load time where visible, charged, and the same
through the closures, the generated code and the reference evaluator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policyd.engine import new_context
from policyd.errors import EvaluationError, LimitError, PolicyLoadError
from policyd.policy import load_policy
from policyd.rules import reference
from policyd.rules.decision import Op
from policyd.rules.sandbox import Budget
from policyd.rules.statefns import STATE_CALL_STEPS, parse_period
from policyd.state.backend import Failure
from policyd.state.memory import MemoryBackend
from policyd.state.tracking import Preset
from policyd.state.view import DecisionState
from tests.rules.test_differential import compile_expression, outcome, same
from tests.support import write_policy

T0 = 1_700_000_000.0
CONTENT = {
    "user": {"user": "alice", "metas": {"team": "red"}, "run_id": "r1"},
    "proxy_name": "alice.new",
    "proxy_type": "tcp",
    "remote_port": 6001,
}
BACKEND = MemoryBackend()
BACKEND.preset(
    Preset.parse(
        {
            "proxies": {
                "alice": [{"name": "alice.a", "type": "tcp", "remote_port": 6000}, {"name": "alice.new"}],
                "bob": [{"name": "bob.web", "type": "http", "custom_domains": ["b.example.com"]}],
            },
            "sessions": {"alice": [{"run_id": "r1", "client_address": "203.0.113.5:1"}]},
            "rates": {"k": 2},
        },
        T0,
    ),
    T0,
)

EXPRESSIONS = [
    "len(proxies(user.user))",
    "proxies(user.user)",
    "[p.remote_port for p in proxies('alice')]",
    "sum(len(proxies(u)) for u in ['alice', 'bob', 'carol'])",
    "proxies('bob')[0].custom_domains",
    "any(s.run_id != content.user.run_id for s in sessions(user.user))",
    "sessions('alice')[0].client_address",
    "rate('k', 3, '1m')",
    "rate('k', 3, '1m') and rate('k', 3, '1m')",
    "rate('other', 0, 60)",
    "hits('k', '1h')",
    "hits('k', 1.5) + hits('nothing', '1d')",
    "proxies(user.metas.team)",
    # errors only the evaluation can see
    "proxies(content.remote_port + 0)",
    "rate('k', user.metas.team, '1m')",
    "rate('k', 3, user.metas.team)",
    "hits('k', 10 ** 7)",
    "proxies('x' * 600)",
]


def reader() -> DecisionState:
    return DecisionState(
        BACKEND, Op.NEW_PROXY, user="alice", run_id="r1", name="alice.new", now=T0 + 1,
        recording=False, failure=Failure.CLOSED,
    )  # fmt: skip


@pytest.mark.parametrize("source", EXPRESSIONS)
@pytest.mark.parametrize("max_steps", [5, 12, 10_000])
def test_state_calls_agree_with_the_reference(source: str, max_steps: int) -> None:
    tree, compiled, generated = compile_expression(source, Op.NEW_PROXY)
    ref_budget = Budget(max_steps, 60.0)
    names = reference.request_names(Op.NEW_PROXY, CONTENT, data={}, now=int(T0))
    ref = outcome(lambda: reference.evaluate(tree, names, ref_budget, reader()))
    for name, fn in (("closures", compiled), ("generated code", generated)):
        budget = Budget(max_steps, 60.0)
        ctx = new_context(Op.NEW_PROXY, CONTENT, data={}, budget=budget, now=T0, state=reader())
        fast = outcome(lambda fn=fn, ctx=ctx: fn(ctx))  # type: ignore[misc]
        assert fast[0] == ref[0] and same(fast[1], ref[1]), (
            f"{source!r}: {name} {fast!r} != reference {ref!r}"
        )
        assert budget.steps == ref_budget.steps, (
            f"{source!r}: steps ({name}) {budget.steps} != {ref_budget.steps}"
        )


def test_answers_leave_out_the_proxy_being_decided_and_count_as_if_recording() -> None:
    _, compiled, _ = compile_expression(
        "[len(proxies(user.user)), rate('k', 3, '1m'), rate('k', 3, '1m')]", Op.NEW_PROXY
    )
    ctx = new_context(Op.NEW_PROXY, CONTENT, data={}, budget=Budget(), now=T0, state=reader())
    assert compiled(ctx) == [1, True, False]  # k had 2 hits: the 3rd is under, the 4th over
    assert BACKEND.hits("k", 60, T0 + 1) == 2  # the non-recording view counted nothing


def test_a_state_call_is_charged() -> None:
    _, compiled, _ = compile_expression("hits('k', '1m')", Op.NEW_PROXY)
    budget = Budget()
    compiled(new_context(Op.NEW_PROXY, CONTENT, data={}, budget=budget, now=T0, state=reader()))
    assert budget.steps == STATE_CALL_STEPS
    with pytest.raises(LimitError):
        compiled(
            new_context(Op.NEW_PROXY, CONTENT, data={}, budget=Budget(STATE_CALL_STEPS - 1), state=reader())
        )


def test_without_a_state_a_call_is_an_evaluation_error() -> None:
    _, compiled, _ = compile_expression("proxies(user.user)", Op.NEW_PROXY)
    with pytest.raises(EvaluationError, match="need a state backend"):
        compiled(new_context(Op.NEW_PROXY, CONTENT, data={}, budget=Budget()))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            'reject "x" when rate("k", "ten", "1m")',
            "1:27: rate() takes a limit that is a whole number, not 'ten'",
        ),
        ('reject "x" when rate("k", 10, "1x")', "1:31: rate(): '1x' is not a period"),
        ('reject "x" when rate("k", -1, "1m")', "rate(): a limit of -1 is outside 0-10000"),
        ('reject "x" when hits("k", 0)', "hits(): a period must be positive, not 0"),
        ('reject "x" when hits("k", "2d") > 0 and hits("k", "8d")', "exceeds the limit of 604800 seconds"),
        ('reject "x" when proxies(content.remote_port)', "'content.remote_port' is an integer"),
        ('reject "x" when proxies(5)', "proxies() takes a string, not int"),
        ('reject "x" when proxies()', "proxies(name) takes 1 argument(s), not 0"),
        ('reject "x" when sessions(user.user, 1)', "takes 1 argument(s), not 2"),
        ('reject "x" when rate(key="k", limit=1, per=1)', "rate() takes positional arguments only"),
        ('reject "x" when rate(["k"], 1, 1)', "rate() takes a string here, not a collection"),
        ('reject "x" when sorted([1], key=proxies)', "proxies() is a state function: call it"),
        ("let rate = 1", "'rate' is a built-in name"),
        ('reject "x" when proxie(user.user)', "did you mean 'proxies'"),
    ],
)
def test_wrong_arguments_are_load_errors(tmp_path: Path, rule: str, message: str) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy(write_policy(tmp_path, {"NewProxy.rules": rule + "\n"}))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("period", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (90, 90), (0.5, 0.5), ("1.5m", 90)],
)
def test_periods(period: Any, seconds: float) -> None:
    assert parse_period(period) == seconds


def test_the_compiler_knows_which_calls_ask_about_other_users(tmp_path: Path) -> None:
    own = load_policy(
        write_policy(tmp_path / "a", {"NewProxy.rules": 'reject "q" when len(proxies(user.user)) > 1\n'})
    )
    other = load_policy(
        write_policy(
            tmp_path / "b", {"NewProxy.rules": 'let u = user.user\nreject "q" when len(proxies(u)) > 1\n'}
        )
    )
    login = load_policy(
        write_policy(tmp_path / "c", {"Login.rules": 'reject "q" when sessions(content.user)\n'})
    )
    assert (
        own.rules[Op.NEW_PROXY].state_functions == {"proxies"}
        and not own.rules[Op.NEW_PROXY].reads_other_users
    )
    assert other.rules[Op.NEW_PROXY].reads_other_users  # a let alias is not known to be the request's user
    assert not login.rules[Op.LOGIN].reads_other_users and login.tracks_sessions
