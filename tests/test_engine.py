"""decide() on its fast path: what the differential test does not reach on its own (views built
lazily, the value before a set, whole decisions against a plain engine on the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import _view_at, decide, new_context
from policyd.policy import load_policy
from policyd.rules.context import RequestNames
from policyd.rules.decision import Op
from policyd.rules.sandbox import Budget
from policyd.rules.schema import SCHEMAS, view
from tests.rules.expressions import records
from tests.support import ROOT, SHIPPED_POLICIES, UNTIMED, fixture


def _old_read_path(content: dict[str, Any], op: Op, path: tuple[str, ...]) -> Any:
    node: Any = view(SCHEMAS[op], content)
    for key in path:
        node = node[key] if isinstance(node, dict) else None
    return node


SET_PATHS = [("remote_port",), ("metas", "owner"), ("user", "metas", "team"), ("user",), ("custom_domains",)]


@settings(max_examples=300, derandomize=True, database=None)
@given(records(SCHEMAS[Op.NEW_PROXY]), st.sampled_from(SET_PATHS))
def test_value_before_a_set_is_what_the_full_view_shows(
    content: dict[str, Any], path: tuple[str, ...]
) -> None:
    assert _view_at(SCHEMAS[Op.NEW_PROXY], content, path) == _old_read_path(content, Op.NEW_PROXY, path)


def test_views_are_built_only_when_a_rule_uses_the_whole_object() -> None:
    content = fixture("NewProxy-tcp")["content"]
    ctx = new_context(Op.NEW_PROXY, content, data={}, budget=Budget())
    assert isinstance(ctx.names, RequestNames)
    assert "content" not in ctx.names and "user" not in ctx.names
    assert ctx.names["content"] == view(SCHEMAS[Op.NEW_PROXY], content)
    assert "content" in ctx.names


BENCHMARKS = ROOT / "benchmarks"
NAMES = st.sampled_from(["alice", "bob", "root", "mallory", "dave", ""])
DOMAINS = st.sampled_from(["a.red.example.com", "red.example.com", "x.example.com", "*.red.example.com"])


@st.composite
def newproxy_contents(draw: st.DrawFn) -> dict[str, Any]:
    """NewProxy requests that get past the first rules often enough to reach the later ones."""
    name = draw(NAMES)
    content = draw(
        st.fixed_dictionaries(
            {"proxy_type": st.sampled_from(["tcp", "udp", "http", "https", "stcp", "tcpmux", "bogus"])},
            optional={
                "remote_port": st.sampled_from([0, 80, 6022, 6666, 6550, 7001, None]),
                "custom_domains": st.lists(DOMAINS, max_size=2),
                "subdomain": st.sampled_from(["", "web", "red-web", "Bad!"]),
                "allow_users": st.lists(NAMES | st.just("*"), max_size=2),
                "metas": st.dictionaries(st.sampled_from(["owner", "team"]), NAMES, max_size=2),
                "use_encryption": st.booleans(),
                "sk": st.sampled_from(["", "s3cret"]),
                "group": st.sampled_from(["", "red-g", "g"]),
                "group_key": st.sampled_from(["", "k"]),
                "bandwidth_limit": st.sampled_from(["", "10MB", "fast"]),
                "locations": st.lists(st.sampled_from(["/", "/api", "api"]), max_size=2),
            },
        )
    )
    team = draw(st.sampled_from(["red", "red", "blue", "", "x"]))
    content["user"] = {
        "user": name,
        "metas": {"team": team},
        "run_id": draw(st.sampled_from(["r1", "r1", ""])),
    }
    content["proxy_name"] = draw(st.sampled_from([f"{name}.ssh", f"{name}.web", "x", f"{name}.BAD"]))
    return content


@pytest.mark.parametrize(
    "directory", [SHIPPED_POLICIES, BENCHMARKS / "policy50"], ids=["shipped", "policy50"]
)
def test_whole_decisions_agree_with_a_plain_engine_on_the_reference(directory: Path) -> None:
    """decide() against benchmarks/inproc.TreeEngine: the same rules through policyd.rules.reference,
    with every view built in full (no lazy views, no field readers, no specialised closures)."""
    from benchmarks.inproc import TreeEngine
    from policyd.rules import reference

    policy = load_policy(directory)
    plain = TreeEngine(policy, Op.NEW_PROXY, reference.evaluate)

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(newproxy_contents())
    def check(content: dict[str, Any]) -> None:
        decision = decide(policy, Op.NEW_PROXY, content, options=UNTIMED)
        assert decision.error is None
        outcome, reason = plain.decide(content)
        assert (decision.outcome.value, decision.reason) == (outcome, reason)

    check()
