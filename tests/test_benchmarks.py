"""The benchmarks' own logic: what their figures stand on must be right (timings are never asserted).

peers: the plain-Python floor decides as policyd does (it is held to that before it is timed, and
here on generated requests too), the request set says truly where each request is decided, and a
peer that disagrees is refused. frps and storm: the configs and request bodies they write. shadow:
the candidate it shadows with.
"""

from __future__ import annotations

import configparser
import itertools
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import frps, storm
from benchmarks.peers import requests, scenario
from benchmarks.peers.common import NOW, Verdict
from benchmarks.peers.floor import Floor
from benchmarks.peers.policyd_peer import Policyd
from benchmarks.run import BODY, shadow_policies
from policyd.engine import EvalOptions, decide
from policyd.policy import load_policy
from policyd.rules.decision import Op
from policyd.service.settings import DEFAULTS
from policyd.tools.rollout import Agreement, agreement, ops_decided_alike
from tests.support import UNTIMED

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

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
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
        "peers, allow: fastest peer (fast) (not run: missing) µs / policyd µs": (6.0, ">=", 5.0),
        "peers, reject at rule 24: fastest peer (fast) (not run: missing) µs / policyd µs": (4.0, ">=", 5.0),
        "peers, rewrite: fastest peer (fast) (not run: missing) µs / policyd µs": (6.0, ">=", 5.0),
        "peers, allow: policyd µs / plain-Python floor µs": (2.5, "<=", 2.0),
        "peers, rewrite: policyd µs / plain-Python floor µs": (4.0, "<=", 2.0),
    }


# -- frps: configs for real frps/frpc -----------------------------------------------------------
PORTS = frps.Ports(7000, 7080, 7500, red=range(6000, 6100), blue=range(7000, 7020))


def test_the_frp_version_picks_the_config_format_and_the_ops_frps_accepts() -> None:
    assert frps.parse_version("0.70.0\n") == (0, 70, 0)
    assert frps.parse_version("frps version 0.33.0") == (0, 33, 0)
    with pytest.raises(ValueError, match="no frp version"):
        frps.parse_version("command not found")
    assert frps.config_format((0, 70, 0)) is frps.ConfigFormat.TOML
    assert frps.config_format((0, 52, 0)) is frps.ConfigFormat.TOML
    assert frps.config_format((0, 51, 3)) is frps.ConfigFormat.INI
    assert frps.plugin_ops((0, 33, 0)) == ("Login", "NewProxy", "Ping", "NewWorkConn", "NewUserConn")
    assert frps.plugin_ops((0, 70, 0)) == frps.ALL_OPS


def test_the_fleet_is_one_200_proxy_client_and_20_logins_inside_their_teams_ranges() -> None:
    clients = frps.fleet(PORTS.red, PORTS.blue)
    assert len(clients) == 21
    assert [len(c.proxies) for c in clients] == [200] + [1] * 20
    assert sum(p.type == "http" for p in clients[0].proxies) == 100
    names = [(c.user, p.name) for c in clients for p in c.proxies]
    assert len(set(names)) == 220
    for client in clients:
        low, high = frps.TEAM_PORTS[client.metas["team"]]
        assert all(low <= p.remote_port <= high for p in client.proxies if p.type == "tcp")
    with pytest.raises(ValueError, match="need 100 red and 20 blue"):
        frps.fleet(PORTS.red[:10], PORTS.blue)


def test_the_toml_configs_hold_what_frps_and_frpc_v0_70_read() -> None:
    server = tomllib.loads(frps.frps_config(frps.ConfigFormat.TOML, PORTS, "127.0.0.1:9000", frps.ALL_OPS))
    assert server["bindAddr"] == server["proxyBindAddr"] == server["webServer"]["addr"] == "127.0.0.1"
    assert (server["bindPort"], server["vhostHTTPPort"], server["webServer"]["port"]) == (7000, 7080, 7500)
    assert server["auth"] == {"token": frps.TOKEN}
    assert server["httpPlugins"] == [
        {"name": "bench", "addr": "127.0.0.1:9000", "path": "/handler", "ops": list(frps.ALL_OPS)}
    ]
    bare = tomllib.loads(frps.frps_config(frps.ConfigFormat.TOML, PORTS, None, frps.ALL_OPS))
    assert "httpPlugins" not in bare and bare["subDomainHost"] == frps.SUBDOMAIN_HOST

    alice = frps.fleet(PORTS.red, PORTS.blue)[0]
    client = tomllib.loads(frps.frpc_config(frps.ConfigFormat.TOML, alice, 7000))
    assert (client["serverAddr"], client["serverPort"], client["user"]) == ("127.0.0.1", 7000, "alice")
    assert client["metadatas"] == {"team": "red", "token": "tk-alice"}
    assert client["auth"] == {"token": frps.TOKEN} and client["loginFailExit"] is True
    assert client["proxies"][0] == {
        "name": "tcp000",
        "type": "tcp",
        "localIP": "127.0.0.1",
        "localPort": 9,
        "remotePort": 6000,
    }
    assert client["proxies"][-1]["subdomain"] == "web099" and "remotePort" not in client["proxies"][-1]
    assert len(client["proxies"]) == 200


def test_the_ini_configs_hold_what_frps_and_frpc_v0_33_read() -> None:
    server = configparser.ConfigParser()
    server.read_string(
        frps.frps_config(frps.ConfigFormat.INI, PORTS, "127.0.0.1:9000", frps.plugin_ops((0, 33, 0)))
    )
    assert dict(server["plugin.bench"]) == {
        "addr": "127.0.0.1:9000",
        "path": "/handler",
        "ops": "Login,NewProxy,Ping,NewWorkConn,NewUserConn",
    }
    common = server["common"]
    assert (common["bind_port"], common["vhost_http_port"], common["dashboard_port"]) == (
        "7000",
        "7080",
        "7500",
    )
    assert common["proxy_bind_addr"] == common["dashboard_addr"] == "127.0.0.1"
    assert common["token"] == frps.TOKEN
    bare = configparser.ConfigParser()
    bare.read_string(frps.frps_config(frps.ConfigFormat.INI, PORTS, None, ()))
    assert bare.sections() == ["common"]

    blue = frps.fleet(PORTS.red, PORTS.blue)[1]
    client = configparser.ConfigParser()
    client.read_string(frps.frpc_config(frps.ConfigFormat.INI, blue, 7000))
    assert client.sections() == ["common", "ssh"]
    assert (client["common"]["user"], client["common"]["meta_team"]) == ("u00", "blue")
    assert client["common"]["login_fail_exit"] == "true"
    assert dict(client["ssh"]) == {
        "type": "tcp",
        "local_ip": "127.0.0.1",
        "local_port": "9",
        "remote_port": "7000",
    }


def test_the_shipped_policy_lets_the_whole_fleet_in(tmp_path: Path) -> None:
    """With policyd in the chain the round ends only if every Login and NewProxy is allowed:
    the fleet's requests, as frps v0.70 sends them, against the shipped policy (with the fleet's
    users and their tokens in data/users.toml)."""
    policy = load_policy(frps.fleet_policy(tmp_path / "policies"))
    ops = {op.value: op for op in policy.rules}
    for n, client in enumerate(frps.fleet(PORTS.red, PORTS.blue)):
        login = {
            "version": "0.70.0",
            "os": "linux",
            "arch": "amd64",
            "user": client.user,
            "privilege_key": "0" * 32,
            "timestamp": NOW,
            "metas": client.metas,
            "client_spec": {},
            "pool_count": 1,
            "client_address": f"127.0.0.1:{40000 + n}",
        }
        assert decide(policy, ops["Login"], login, options=UNTIMED).outcome.value == "allow", client.user
        user = {"user": client.user, "metas": client.metas, "run_id": f"{n:016x}"}
        for p in client.proxies:
            content = {"user": user, "proxy_name": f"{client.user}.{p.name}", "proxy_type": p.type}
            content.update({"remote_port": p.remote_port} if p.type == "tcp" else {"subdomain": p.subdomain})
            decision = decide(policy, ops["NewProxy"], content, options=UNTIMED)
            assert decision.outcome.value != "reject", (content, decision.reason)


def test_online_counts_the_proxies_frps_lists_as_online() -> None:
    answers = [
        {"proxies": [{"name": "alice.tcp000", "status": "online"}, {"name": "u00.ssh", "status": "offline"}]},
        {"proxies": None},  # frps v0.33 with no proxy of that type
        {"code": 0, "proxies": [{"name": "alice.web000", "status": "online", "conf": {}}]},
    ]
    assert frps.online(answers) == 2


def test_without_frp_binaries_the_frps_scenario_says_why_it_is_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FRPS_BIN", raising=False)
    monkeypatch.delenv("FRPC_BIN", raising=False)
    [row] = frps.scenario(1, tmp_path)
    assert "FRPS_BIN/FRPC_BIN not set" in row["skipped"]
    monkeypatch.setenv("FRPS_BIN", str(tmp_path / "frps"))
    monkeypatch.setenv("FRPC_BIN", str(tmp_path / "frpc"))
    assert frps.binaries() == f"FRPS_BIN={tmp_path / 'frps'} is not an executable file"


# -- storm: the requests of a reconnect storm ---------------------------------------------------
def test_the_storm_is_each_clients_login_then_its_three_newproxy_in_frps_shape() -> None:
    requests_ = list(storm.storm())
    assert len(requests_) == storm.CLIENTS * (1 + storm.PROXIES_PER_CLIENT) == 40_000
    assert [r.op for r in requests_[:8]] == ["Login", "NewProxy", "NewProxy", "NewProxy"] * 2
    assert len({r.reqid for r in requests_}) == 40_000
    assert all(re.fullmatch(r"[0-9a-f]{16}", r.reqid) for r in requests_[:100])
    users = set()
    for r in requests_[:400]:
        body = json.loads(r.body)
        assert r.body == json.dumps(body, separators=(",", ":")).encode(), "compact, as frps sends it"
        assert list(body) == ["version", "op", "content"] and body["op"] == r.op
        content = body["content"]
        # v0.70 omits empty fields; the user object of other ops is complete, client_spec always there.
        empty = [k for k, v in content.items() if v in ("", 0, None, [], {}, False) and k != "client_spec"]
        assert empty == [], (r.op, empty)
        user = content["user"] if r.op == "Login" else content["user"]["user"]
        users.add(user)
        if r.op == "NewProxy":
            assert set(content["user"]) == {"user", "metas", "run_id"}
            assert content["proxy_name"].startswith(user + ".")
        else:
            assert content["run_id"], "a reconnect carries the previous run_id"
    assert len(users) == 100


def test_the_shipped_policy_rejects_exactly_the_expected_storm_requests(tmp_path: Path) -> None:
    """storm.lua counts the rejects in the first 40,000 answers: the count the scenario checks."""
    policy = load_policy(storm.storm_policy(tmp_path / "policies"))
    ops = {op.value: op for op in policy.rules}
    outcomes: list[str] = []
    for r in storm.storm():
        decision = decide(policy, ops[r.op], json.loads(r.body)["content"], options=UNTIMED)
        outcomes.append(decision.outcome.value)
    assert outcomes.count("reject") == storm.expected_rejects() > 100
    edge = storm.CONNECTIONS
    assert "reject" not in outcomes[:edge] + outcomes[-edge:], "repeats or late answers could not hide one"
    assert outcomes.count("allow") == storm.CLIENTS, "every Login gets in"


def test_the_storm_file_holds_one_request_a_line_as_storm_lua_splits_it(tmp_path: Path) -> None:
    path = tmp_path / "storm.tsv"
    assert storm.write_requests(path, storm.storm(clients=3)) == 12
    lines = path.read_bytes().splitlines()
    assert len(lines) == 12
    op, reqid, body = lines[1].split(b"\t")
    assert (op, json.loads(body)["op"]) == (b"NewProxy", "NewProxy")
    assert reqid == next(r for i, r in enumerate(storm.storm(clients=3)) if i == 1).reqid.encode()


def _storm_run(seconds: float | None, p99_us: int, rejected: int) -> dict[str, Any]:
    latency = {"mean": 1.0, "p50": p99_us // 2, "p90": p99_us, "p99": p99_us, "max": p99_us * 2}
    return {"seconds": seconds, "answered": 40_000, "rejected": rejected, "latency_us": latency, "failed": 0}


def test_storm_rows_give_time_and_p99_against_raw_and_count_a_wrong_reject_tally() -> None:
    runs = {
        "raw": [_storm_run(2.0, 4000, 0), _storm_run(2.2, 5000, 0)],
        "policyd": [_storm_run(5.0, 12000, 204), _storm_run(6.0, 14000, 203)],
        "stuck": [_storm_run(None, 9000, 204)],
    }
    raw, policyd, stuck = storm.rows(runs, {"raw": 0, "policyd": 204, "stuck": 204}, 40_000)
    assert (raw["seconds"], raw["time_vs_raw"], raw["failed"]) == (2.1, 1.0, 0)
    assert (policyd["seconds"], policyd["time_vs_raw"], policyd["p99_vs_raw"]) == (5.5, 2.62, 2.89)
    assert policyd["failed"] == 1, "one round answered 203 rejects instead of 204"
    assert (stuck["seconds"], stuck["time_vs_raw"], stuck["rps"]) == (None, None, None)


# -- shadow ---------------------------------------------------------------------------------
def test_the_shadow_scenarios_candidate_decides_newproxy_again_and_alike(tmp_path: Path) -> None:
    """The 50-rule shadow costs a full decision per request (its NewProxy.rules is not the main
    one's) and agrees with it on the benchmark's request, so it logs nothing; the slow shadow
    runs out of its budget on that request."""
    policies, candidate, slow = shadow_policies(tmp_path)
    main, shadow = load_policy(policies), load_policy(candidate)
    assert Op.NEW_PROXY not in ops_decided_alike(main, shadow)
    assert shadow.rule_count == main.rule_count
    content = json.loads(BODY.read_text())["content"]
    first = decide(main, Op.NEW_PROXY, content, now=NOW, options=UNTIMED)
    again = decide(shadow, Op.NEW_PROXY, content, now=NOW, options=UNTIMED)
    assert agreement(first, again) is Agreement.SAME
    budget = EvalOptions(eval_seconds=DEFAULTS.shadow_eval_budget_ms / 1000)
    slow_decision = decide(load_policy(slow), Op.NEW_PROXY, content, now=NOW, options=budget)
    assert slow_decision.error is not None and "ran out of time" in slow_decision.error.message


def test_the_limits_cases_sit_at_the_totals_they_are_named_for() -> None:
    """benchmarks/limits.py reports loads at and past each total: check where they stand (by
    counting, without the seconds-long loads)."""
    from benchmarks import limits
    from policyd.policy import MAX_DATA_BYTES, MAX_DATA_FILES, MAX_TOML_BYTES
    from policyd.rules.sandbox import MAX_FILE_RULES, MAX_POLICY_NODES

    def nodes(files: dict[str, str], rule: Callable[[int], str]) -> int:
        count = sum(len(text.splitlines()) for name, text in files.items() if name.endswith(".rules"))
        assert all(len(t.splitlines()) <= MAX_FILE_RULES for n, t in files.items() if n.endswith(".rules"))
        return count * limits._cost(rule)

    def data_bytes(files: dict[str, str], suffix: str = "") -> int:
        return sum(len(t) for n, t in files.items() if n.startswith("data/") and n.endswith(suffix))

    medium = limits.CASES["rules-at-total-medium"]()
    assert (
        MAX_POLICY_NODES - limits._cost(limits._medium_rule)
        < nodes(medium, limits._medium_rule)
        <= MAX_POLICY_NODES
    )
    wide = limits.CASES["rules-at-total-wide"]()
    assert MAX_POLICY_NODES - 492 < nodes(wide, limits._wide_rule) <= MAX_POLICY_NODES
    assert nodes(limits.CASES["rules-past-total"](), limits._medium_rule) > MAX_POLICY_NODES
    json_data = limits.CASES["data-at-total-json"]()
    assert MAX_DATA_BYTES - 4096 < data_bytes(json_data) <= MAX_DATA_BYTES
    assert len([n for n in json_data if n.startswith("data/")]) == MAX_DATA_FILES
    assert MAX_TOML_BYTES - 4096 < data_bytes(limits.CASES["data-at-toml-total"](), ".toml") <= MAX_TOML_BYTES
    assert data_bytes(limits.CASES["data-past-total"]()) > MAX_DATA_BYTES
    everything = limits.CASES["everything-at-total"]()
    assert data_bytes(everything) <= MAX_DATA_BYTES and data_bytes(everything, ".toml") <= MAX_TOML_BYTES


def test_the_breakdown_cuts_the_50_rule_file_at_every_section_and_each_cut_allows(tmp_path: Path) -> None:
    """benchmarks.breakdown subtracts each cut of policy50 from the next: the cuts must grow
    section by section, end with the whole file, and decide the timed request as the whole does."""
    from benchmarks import breakdown
    from policyd.rules.decision import Op

    text = breakdown.RULES.read_text()
    sections = breakdown.sections_of(text)
    titles = [title for title, _ in sections]
    assert titles[0] == "who" and len(titles) == len(set(titles)) >= 6
    prefixes = [prefix for _, prefix in sections]
    assert all(a != b and b.startswith(a) for a, b in itertools.pairwise(prefixes))
    assert prefixes[-1] == text
    for n, prefix in enumerate(prefixes):
        policy = breakdown.policy_in(tmp_path / str(n), prefix)
        outcome = decide(policy, Op.NEW_PROXY, requests.ALLOW, now=NOW).outcome.value
        assert outcome in ("allow", "rewrite"), (titles[n], outcome)
