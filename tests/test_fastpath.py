"""Pieces of the fast path that the differential test does not reach on its own."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.app import _query_op
from policyd.compiler import RequestNames
from policyd.engine import _view_at, decide, new_context
from policyd.errors import PolicyLoadError
from policyd.policy import load_policy
from policyd.sandbox import Budget, regex
from policyd.schema import SCHEMAS, Op, view
from policyd.store import PolicyStore
from tests.support import SHIPPED_POLICIES, fixture
from tests.test_differential import records

PATTERNS = ["^[a-z0-9._-]+$", "b", "", "^$", "(a)|(b)", "é+", "[0-9]+(MB|KB)$", "\\.", "^x.*y$"]
TEXTS = st.text(alphabet="abxy.é0-9MBK\n", max_size=8)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.sampled_from(PATTERNS), TEXTS)
def test_regex_answers_as_re2_search(pattern: str, text: str) -> None:
    assert regex(pattern, text) is (re2.compile(pattern).search(text) is not None)


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


def test_a_loaded_policy_holds_no_reference_cycles() -> None:
    """Compiled policies are frozen out of the garbage collector; cycles in them would leak."""
    gc.collect()
    gc.disable()
    try:
        policy = load_policy(SHIPPED_POLICIES)
        decide(policy, Op.NEW_PROXY, fixture("NewProxy-https")["content"])
        del policy
        assert gc.collect() == 0
    finally:
        gc.enable()


QUERY_PARTS = st.sampled_from(
    ["op=NewProxy", "op=Ping", "version=0.1.0", "op=", "op", "op=a%42", "op=a+b", "x=1"]
)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.lists(QUERY_PARTS, max_size=4), st.sampled_from(["&", ";", "&&"]))
def test_query_op_reads_as_starlette_does(parts: list[str], sep: str) -> None:
    query = sep.join(parts)
    expected = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "op":
            expected = value
    assert _query_op(query.encode()) == expected


def test_reload_loads_out_of_the_collector_and_frees_the_replaced_policy(tmp_path: Path) -> None:
    rules = tmp_path / "NewProxy.rules"
    rules.write_text('reject "a" when content.remote_port == 1\n')
    store = PolicyStore(tmp_path)
    first = weakref.ref(store.policy.rules[Op.NEW_PROXY].statements[0].condition)  # type: ignore[arg-type]
    frozen = gc.get_freeze_count()
    rules.write_text('reject "b" when content.remote_port == 2\n')
    assert store.reload(("NewProxy.rules",)).changed
    assert gc.isenabled() and gc.get_freeze_count() > frozen
    assert first() is not None, "kept until the next reload frees it in the reload thread"
    rules.write_text('reject "c" when content.remote_port == 3\n')
    store.reload(("NewProxy.rules",))
    assert first() is None


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
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
    """decide() against benchmarks/inproc.TreeEngine: the same rules through policyd.reference,
    with every view built in full (no lazy views, no field readers, no specialised closures)."""
    from benchmarks.inproc import TreeEngine
    from policyd import reference

    policy = load_policy(directory)
    plain = TreeEngine(policy, Op.NEW_PROXY, reference.evaluate)

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(newproxy_contents())
    def check(content: dict[str, Any]) -> None:
        decision = decide(policy, Op.NEW_PROXY, content)
        assert decision.error is None
        outcome, reason = plain.decide(content)
        assert (decision.outcome.value, decision.reason) == (outcome, reason)

    check()


def test_a_reload_compiles_only_the_rules_that_changed(tmp_path: Path) -> None:
    rules = tmp_path / "NewProxy.rules"
    head = 'let team = user.metas.team\nreject "a" when team == "x"\n'
    rules.write_text(head + 'reject "b" when content.remote_port == 1\n')
    first = load_policy(tmp_path)
    rules.write_text("# moved down\n" + head + 'reject "b" when content.remote_port == 2\n')
    second = load_policy(tmp_path, previous=first)
    old, new = first.rules[Op.NEW_PROXY].statements, second.rules[Op.NEW_PROXY].statements
    assert new[1].condition is old[1].condition, "unchanged: reused"
    assert new[2].condition is not old[2].condition, "changed: compiled again"
    assert [s.location.line for s in new] == [2, 3, 4], "reused rules carry their new lines"


def test_a_reused_rule_is_validated_again_when_what_it_depends_on_changed(tmp_path: Path) -> None:
    rules = tmp_path / "NewProxy.rules"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "teams.toml").write_text("red = 1\n")
    rules.write_text('let team = user.metas.team\nreject "a" when team == "x" or data.teams.red\n')
    first = load_policy(tmp_path)
    rules.write_text('reject "a" when team == "x" or data.teams.red\n')
    with pytest.raises(PolicyLoadError, match="unknown name 'team'"):
        load_policy(tmp_path, previous=first)
    rules.write_text('let team = user.metas.team\nreject "a" when team == "x" or data.teams.red\n')
    (tmp_path / "data" / "teams.toml").unlink()
    with pytest.raises(PolicyLoadError, match="no data file named 'teams'"):
        load_policy(tmp_path, previous=first)
