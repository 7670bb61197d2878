"""A rule file's program (policyd.rules.program) decides exactly as its statements run one by one.

decide() runs the generated chunks; with `trace=[]` it runs the statements one by one instead
(the path `policyd eval` explains). Both must give the same Decision: outcome, reason, rule,
content, changes, warnings and errors with their locations. The expression-level agreement of
generated code with the closures and the reference is tests/rules/test_differential.py's job.
"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import EvalOptions, decide
from policyd.policy import Policy, load_policy
from policyd.rules import program
from policyd.rules.decision import Decision, Op
from policyd.rules.program import CHUNK_STATEMENTS, chunk_source
from policyd.rules.sandbox import MAX_FILE_RULES
from tests.helpers import policy_of
from tests.rules.expressions import CONTENTS, SPECIALISED
from tests.security.corpus import EVAL_FAILS, as_rule
from tests.security.harness import CONTENT, rules_policy
from tests.support import ROOT, SHIPPED_POLICIES, UNTIMED, fixture, fixture_names

BENCHMARK_POLICY = ROOT / "benchmarks" / "policy50"
TEAMS = 'red = { ports = [6000, 6999], members = ["alice"] }\n'
ACCESS = 'admins = ["root", "alice"]\n'


def summary(decision: Decision) -> dict[str, Any]:
    """Everything a Decision says but its timing."""
    return {
        "outcome": decision.outcome,
        "reason": decision.reason,
        "rule": decision.rule,
        "content": decision.content,
        "changes": decision.changes,
        "warnings": decision.warnings,
        "error": None if decision.error is None else (type(decision.error), str(decision.error)),
        "failed_open": decision.failed_open,
    }


def both_paths(policy: Policy, op: Op, content: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Decide on the program and one rule at a time; both must agree. Without `options`, with
    no time limit: a budget spent on one path and not the other is not what is compared."""
    kwargs.setdefault("options", UNTIMED)
    assert policy.rules[op].program is not None, "the rule file has no program"
    program = summary(decide(policy, op, content, now=1_700_000_000, **kwargs))
    one_by_one = summary(decide(policy, op, content, now=1_700_000_000, trace=[], **kwargs))
    assert program == one_by_one
    return program


def fixture_cases() -> list[tuple[Path, str]]:
    """Every fixture with the shipped policy; the NewProxy ones with the benchmark's (NewProxy only)."""
    cases = [(SHIPPED_POLICIES, name) for name in fixture_names()]
    cases += [(BENCHMARK_POLICY, name) for name in fixture_names() if name.startswith("NewProxy")]
    return cases


@pytest.mark.parametrize(("policies", "name"), fixture_cases(), ids=lambda v: getattr(v, "name", v))
def test_the_shipped_and_benchmark_policies_decide_alike_on_every_fixture(policies: Path, name: str) -> None:
    body = fixture(name)
    both_paths(load_policy(policies), Op(body["op"]), body["content"])


def test_the_benchmark_request_is_rewritten_by_the_program() -> None:
    body = orjson.loads((BENCHMARK_POLICY.parent / "newproxy.json").read_bytes())
    decision = both_paths(load_policy(BENCHMARK_POLICY), Op.NEW_PROXY, body["content"])
    assert decision["content"]["metas"] == {"owner": "alice", "team": "red"}
    assert [w.message for w in decision["warnings"]] == []


# -- generated rule files -------------------------------------------------------------------
ACTIONS = st.sampled_from(
    [
        'reject "no: {{content.proxy_name}}" when {}',
        "allow when {}",
        'warn "w {{user.user}}" when {}',
        "set content.subdomain = 'x' + content.subdomain when {}",
        "set content.metas.team = team when {}",
        "set content.remote_port = 7000 when {}",
        "let flag = bool({})",
    ]
)


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    lines = ['let team = user.metas.team or "red"', "let t = data.teams.red", "let ports = t.ports"]
    lines += ["let n = len(content.proxy_name)", 'let xs = ["a", content.proxy_type]']
    for _ in range(draw(st.integers(1, 8))):
        lines.append(draw(ACTIONS).format(draw(st.sampled_from(SPECIALISED))))
    return "\n".join(lines) + "\n"


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(rule_files(), st.sampled_from(range(len(CONTENTS))), st.sampled_from([1, 30, 200_000]))
def test_generated_rule_files_decide_alike(rules: str, index: int, max_steps: int) -> None:
    policy = policy_of({"NewProxy.rules": rules, "data/teams.toml": TEAMS, "data/access.toml": ACCESS})
    options = EvalOptions(max_steps=max_steps, eval_seconds=UNTIMED.eval_seconds)
    both_paths(policy, Op.NEW_PROXY, CONTENTS[index], options=options)
    fail_open = EvalOptions(frozenset({Op.NEW_PROXY}), eval_seconds=UNTIMED.eval_seconds)
    both_paths(policy, Op.NEW_PROXY, CONTENTS[index], options=fail_open)


def test_rules_across_chunks_see_lets_sets_and_report_their_own_line() -> None:
    filler = [f"reject 'never {i}' when content.remote_port == {-1 - i}" for i in range(CHUNK_STATEMENTS)]
    rules = "\n".join(
        [
            "let base = content.remote_port + 1",
            "set content.subdomain = 'sub'",
            *filler,
            "warn 'port {base} sub {content.subdomain}'",
            *filler[:10],
            "reject 'too high {base}' when base > 7000",
            "reject 'broken' when content.remote_port // 0",
        ]
    )
    policy = policy_of({"NewProxy.rules": rules})
    assert len(policy.rules[Op.NEW_PROXY].program or ()) == 2  # CHUNK_STATEMENTS + 15 statements

    high = both_paths(policy, Op.NEW_PROXY, {"remote_port": 7500})
    assert high["reason"] == "too high 7501"
    assert high["rule"].line == CHUNK_STATEMENTS + 14
    assert [w.message for w in high["warnings"]] == ["port 7501 sub sub"]

    broken = both_paths(policy, Op.NEW_PROXY, {"remote_port": 10})
    assert broken["reason"] == "policy error"
    assert broken["rule"].line == CHUNK_STATEMENTS + 15
    assert "ZeroDivisionError" in broken["error"][1]


@pytest.mark.parametrize(("rule", "expected"), [c[1:] for c in EVAL_FAILS], ids=[c[0] for c in EVAL_FAILS])
def test_corpus_attacks_that_load_fail_closed_alike(rule: str, expected: str) -> None:
    # A budget of steps only (the clock would make which limit is hit first a race).
    options = EvalOptions(eval_seconds=30)
    decision = both_paths(rules_policy(as_rule(rule)), Op.NEW_PROXY, CONTENT, options=options)
    assert decision["error"] is not None and expected in decision["error"][1]


# -- what the generated source may contain --------------------------------------------------
ALLOWED_NAMES = {"ctx", "names", "decision", "warn", "set_", "b", "c", "u", "at", "e", "chunk", "_next"}
ALLOWED_NAMES |= {"_type", "_dict", "_int", "_str", "_list", "_len", "_Exception", "_RuleFailed"}
# attributes of ours
ALLOWED_NAMES |= {"budget", "content_raw", "user_raw", "get", "add", "add2", "field_view", "tick"}
KEYWORDS = {"def", "try", "except", "as", "raise", "from", "return", "if", "else", "and", "or", "not"}
KEYWORDS |= {"in", "is", "None", "True", "False"}


def generated_name(name: str) -> bool:
    head, _, number = name.rpartition("_")
    return (
        name in ALLOWED_NAMES
        or name in KEYWORDS
        or (name[0] in "swvkr" and name[1:].isdigit())
        or (name.startswith("_t") and name[2:].isdigit())
        or (head[:1] in ("w", "v", "r") and head[1:].isdigit() and number.isdigit())
    )


@pytest.mark.parametrize(
    "policy",
    [
        load_policy(SHIPPED_POLICIES),
        load_policy(BENCHMARK_POLICY),
        rules_policy("\n".join(as_rule(rule) for _, rule, _ in EVAL_FAILS)),
    ],
    ids=["shipped", "policy50", "corpus"],
)
def test_no_rule_text_reaches_the_generated_source(policy: Policy) -> None:
    """Strings, numbers and names from rules are references: the source has only our names."""
    for rule_file in policy.rules.values():
        statements = rule_file.statements
        for start in range(0, len(statements), CHUNK_STATEMENTS):
            source = chunk_source(statements, start, min(start + CHUNK_STATEMENTS, len(statements)), {})
            assert source is not None
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                assert tok.type != tokenize.STRING, tok
                if tok.type == tokenize.NAME:
                    assert generated_name(tok.string), tok
                if tok.type == tokenize.NUMBER:
                    assert tok.string.isdigit() and int(tok.string) < len(statements) + 3, tok


def test_an_edit_that_keeps_the_shape_reuses_compiled_chunks() -> None:
    """A new port in a list compiles nothing (constants are not in the source) yet applies."""
    rules = "reject 'irc' when content.remote_port in (6666, 6667, {port})\n" + "".join(
        f"reject 'r{i}' when content.remote_port == {-i}\n" for i in range(CHUNK_STATEMENTS)
    )
    first = policy_of({"NewProxy.rules": rules.format(port=7001)})
    misses = program._compiled.cache_info().misses
    second = policy_of({"NewProxy.rules": rules.format(port=7002)})
    assert program._compiled.cache_info().misses == misses
    assert both_paths(first, Op.NEW_PROXY, {"remote_port": 7002})["reason"] == ""
    assert both_paths(second, Op.NEW_PROXY, {"remote_port": 7002})["reason"] == "irc"
    assert both_paths(second, Op.NEW_PROXY, {"remote_port": 7001})["reason"] == ""


def test_a_set_is_seen_by_the_next_rules_field_reads() -> None:
    """A set changes what later rules read, in its chunk and the next."""
    filler = [f"reject 'never {i}' when content.proxy_name == 'x{i}'" for i in range(CHUNK_STATEMENTS)]
    rules = "\n".join(
        [
            "reject 'low' when content.remote_port < 10",
            "set content.remote_port = 7000 when content.remote_port == 6000",
            "warn 'same chunk' when content.remote_port == 7000",
            *filler,
            "reject 'next chunk {content.remote_port}' when content.remote_port == 7000",
        ]
    )
    decision = both_paths(policy_of({"NewProxy.rules": rules}), Op.NEW_PROXY, {"remote_port": 6000})
    assert [w.message for w in decision["warnings"]] == ["same chunk"]
    assert decision["reason"] == "next chunk 7000"


def test_a_file_of_the_most_rules_runs_chunk_after_chunk_to_its_last_rule() -> None:
    """Each chunk calls the next: a file of MAX_FILE_RULES rules is that many nested calls
    deep, and a rule in the last chunk decides and fails with its own line."""
    cheap = [f"reject 'r{i}' when content.remote_port == {-1 - i}\n" for i in range(MAX_FILE_RULES - 2)]
    rules = "".join([*cheap, "reject 'last' when content.remote_port == 7\n", "reject 'x' when 1 // 0\n"])
    policy = policy_of({"NewProxy.rules": rules})
    assert len(policy.rules[Op.NEW_PROXY].program or ()) == -(-MAX_FILE_RULES // CHUNK_STATEMENTS)
    last = both_paths(policy, Op.NEW_PROXY, {"remote_port": 7})
    assert last["reason"] == "last" and last["rule"].line == MAX_FILE_RULES - 1
    failed = both_paths(policy, Op.NEW_PROXY, {"remote_port": 8})
    assert failed["rule"].line == MAX_FILE_RULES and "ZeroDivisionError" in failed["error"][1]


@pytest.mark.parametrize("port", [0, 6001, 7000])
def test_a_field_read_after_a_set_in_the_same_chunk_sees_the_new_value(port: int) -> None:
    """A chunk reads each field its rules read once per run of rules up to a `set`, and again
    after it: a rule after the set sees what the set made, whether or not it fired."""
    rules = "\n".join(
        [
            "reject 'low' when content.remote_port > 0 and content.remote_port < 1024",
            "set content.remote_port = 6500 when content.remote_port == 0",
            "set content.user.user = 'bob' when content.remote_port == 7000",
            "reject 'moved {content.remote_port}' when content.remote_port == 6500 and user.user == 'alice'",
            "reject 'renamed' when user.user == 'bob' and content.remote_port == 7000",
        ]
    )
    policy = policy_of({"NewProxy.rules": rules})
    source = chunk_source(policy.rules[Op.NEW_PROXY].statements, 0, 5, {})
    assert source is not None and source.count("c.get(") == 3  # one read of remote_port a run
    decision = both_paths(policy, Op.NEW_PROXY, {"remote_port": port, "user": {"user": "alice"}})
    expected = {0: "moved 6500", 6001: "", 7000: "renamed"}[port]
    assert decision["reason"] == expected
