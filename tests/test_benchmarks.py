"""The benchmarks' own logic: what their figures stand on must be right (timings are never asserted).

peers: the plain-Python floor decides as policyd does (it is held to that before it is timed, and
here on generated requests too), the request set says truly where each request is decided, and a
peer that disagrees is refused. frps and storm: the configs and request bodies they write.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.peers import requests, scenario
from benchmarks.peers.common import NOW, Verdict
from benchmarks.peers.floor import Floor
from benchmarks.peers.policyd_peer import Policyd

POLICYD = Policyd()
FLOOR = Floor()


def test_the_floor_reaches_policyds_decision_on_every_benchmark_request() -> None:
    for name, content in requests.requests().items():
        assert FLOOR.decide(content, NOW) == POLICYD.decide(content, NOW), name


def test_each_request_is_decided_where_its_name_says() -> None:
    """ "reject at rule 24" is rejected by the 24th rule (lets not counted), "rewrite" rewrites."""
    statements = POLICYD.policy.rules[POLICYD.op].statements
    rule_number = {}
    for s in statements:
        if s.action.value != "let":
            rule_number[s.location.line] = len(rule_number) + 1
    for name, content in requests.requests().items():
        decision = POLICYD.decision(content, NOW)
        outcome = name.split(":")[0].split(" ")[0]
        assert decision.outcome.value == outcome, name
        if " at rule " in name:
            assert decision.rule is not None, name
            assert f"at rule {rule_number[decision.rule.line]}" in name, name
    assert requests.REJECT_AT_24 is requests.REQUESTS["reject at rule 24: subdomain characters"]
    assert len(requests.REQUESTS) >= 16


USERS = st.sampled_from(["alice", "bob", "dave", "frank", "root", "mallory", ""])
TEXT = st.sampled_from(["", "web", "red-web", "blue-x", "Bad_1", "x" * 41])
# What a request may change, and to what: values frps can send, most of them fine for some rule.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "proxy_type": st.sampled_from(["tcp", "udp", "http", "https", "tcpmux", "stcp", "quic"]),
    "remote_port": st.sampled_from([0, 443, 6022, 6080, 6550, 6667, 7100, 8001, None]),
    "custom_domains": st.lists(
        st.sampled_from(["red.example.com", "a.red.example.com", "a.blue.example.com", "*.x"]), max_size=6
    )
    | st.none(),
    "subdomain": TEXT | st.none(),
    "locations": st.lists(st.sampled_from(["/", "/api", "api"]), max_size=2) | st.none(),
    "http_user": st.sampled_from(["", "u"]),
    "http_pwd": st.sampled_from(["", "p"]),
    "route_by_http_user": st.booleans(),
    "host_header_rewrite": st.sampled_from(["", "in.red.example.com", "x.org"]),
    "headers": st.dictionaries(st.sampled_from(["X-Forwarded-For", "X-Team"]), TEXT) | st.none(),
    "response_headers": st.dictionaries(st.sampled_from(["Server", "Via"]), TEXT),
    "allow_users": st.lists(USERS | st.just("*"), max_size=2) | st.none(),
    "sk": st.sampled_from(["", "s3cr3t"]),
    "group": st.sampled_from(["", "red-g", "g"]),
    "group_key": st.sampled_from(["", "k"]),
    "bandwidth_limit": st.sampled_from(["", "10MB", "fast"]),
    "bandwidth_limit_mode": st.sampled_from(["", "client", "both"]),
    "multiplexer": st.sampled_from(["", "httpconnect", "other"]),
    "metas": st.dictionaries(st.sampled_from(["owner", "team", "k"]), USERS | st.just("red")) | st.none(),
    "annotations": st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y" * 257])),
    "use_encryption": st.booleans(),
    "use_compression": st.booleans(),
    "proxy_name": st.sampled_from(["alice.ssh", "dave.ssh", "alice.WEB", "x", "alice." + "y" * 60]),
    "user": st.fixed_dictionaries(
        {
            "user": USERS,
            "metas": st.sampled_from([None, {}, {"team": "red"}, {"team": "blue"}, {"team": "green"}]),
            "run_id": st.sampled_from(["r1", ""]),
        }
    ),
}
ALLOWED = [c for name, c in requests.REQUESTS.items() if name.startswith(("allow", "rewrite"))]


@st.composite
def newproxy_requests(draw: st.DrawFn) -> dict[str, Any]:
    """An allowed benchmark request with up to three fields changed: most get past the first rules,
    so every rule is reached; both frps shapes (fields omitted, or null/empty) occur."""
    content = dict(draw(st.sampled_from(ALLOWED)))
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True)):
        content[name] = draw(FIELD_VALUES[name])
    return content


def test_the_floor_reaches_policyds_decision_on_generated_requests() -> None:
    decided_by: set[int | None] = set()

    @settings(max_examples=500, derandomize=True, database=None, deadline=None)
    @given(newproxy_requests(), st.sampled_from([NOW, NOW + 12 * 3600]))
    def check(content: dict[str, Any], now: int) -> None:
        assert FLOOR.decide(content, now) == POLICYD.decide(content, now)
        rule = POLICYD.decision(content, now).rule
        decided_by.add(rule.line if rule else None)

    check()
    assert len(decided_by) >= 30, f"the generated requests reached only {len(decided_by)} rules"


class _OffByOne(Floor):
    name = "a floor with one reason changed"

    def decide(self, content: dict[str, Any], now: int) -> Verdict:
        verdict = super().decide(content, now)
        if verdict.reason.startswith("subdomain may hold"):
            return Verdict("reject", "subdomain may hold a-z and 0-9")
        return verdict


def test_a_peer_that_decides_differently_is_refused_before_it_is_timed() -> None:
    subjects = [scenario.Subject(POLICYD, "policyd"), scenario.Subject(_OffByOne(), "peer")]
    with pytest.raises(scenario.Disagreement, match="reason is 'subdomain may hold a-z and 0-9'"):
        scenario.check(subjects)
    assert scenario.check([scenario.Subject(POLICYD, "policyd"), scenario.Subject(FLOOR, "floor")]) == len(
        requests.REQUESTS
    )


def _peer_row(subject: str, role: str, allow: float, reject: float, rewrite: float) -> dict[str, Any]:
    return {
        "scenario": scenario.SCENARIO,
        "subject": subject,
        "role": role,
        "allow_us": allow,
        "reject24_us": reject,
        "rewrite_us": rewrite,
    }


def test_the_peer_targets_compare_policyd_with_the_fastest_peer_and_the_floor() -> None:
    rows = [
        _peer_row("policyd", "policyd", 10, 10, 20),
        _peer_row("floor", "floor", 4, 2, 5),
        _peer_row("slow", "peer", 500, 500, 500),
        _peer_row("fast", "peer", 60, 40, 120),
        {"scenario": scenario.SCENARIO, "subject": "missing", "role": "peer", "skipped": "not installed"},
    ]
    judged = {name: (value, op, bound) for name, value, op, bound in scenario.targets(rows)}
    assert judged == {
        "peers, allow: fastest peer (fast) µs / policyd µs": (6.0, ">=", 5.0),
        "peers, reject at rule 24: fastest peer (fast) µs / policyd µs": (4.0, ">=", 5.0),
        "peers, rewrite: fastest peer (fast) µs / policyd µs": (6.0, ">=", 5.0),
        "peers, allow: policyd µs / plain-Python floor µs": (2.5, "<=", 2.0),
        "peers, rewrite: policyd µs / plain-Python floor µs": (4.0, "<=", 2.0),
    }
