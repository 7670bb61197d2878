"""A reconnect storm (issue 18, target 6): what policyd answers when a restarted frps reconnects.

An frps restart makes every frpc log in again at once and register its proxies again: here
10,000 clients, each a Login and then 3 NewProxy requests (40,000 bodies in frps v0.70's exact
shape, users and teams varied, the Login carrying the previous run_id as on a reconnect), sent
over 64 connections as fast as the server answers. Measured: the time until all 40,000 are
answered, and latency percentiles, for policyd (the shipped policy, decision log on) with 1 and
2 workers and for the raw ASGI constant responder, interleaved round by round.

The load is wrk with a Lua script (benchmarks/storm.lua): wrk sends a different body per
request from a prepared file at ~100k requests/s on one core, so the server, not the client, is
what is measured. A Python client (asyncio, httpx) would itself cost about as much per request
as policyd on these two cores. wrk's connections do not know which client a request belongs to:
each client's requests leave in order (Login first), but its NewProxy may be sent before its
Login is answered; for policyd's stateless shipped policy that is the same work.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.users import shipped_policy_with, token_for

HERE = Path(__file__).resolve().parent
LUA = HERE / "storm.lua"
CLIENTS = 10_000
PROXIES_PER_CLIENT = 3
CONNECTIONS = 64
TEAMS = (("red", (6000, 6999)), ("blue", (7000, 7999)))  # policies/data/teams.toml
# Every 49th client (from the 25th) asks for a tcp port outside its team's range: both teams, and
# none among the first or last 64 requests, so however the storm's last answers overlap with
# repeats of its first requests, the first 40,000 answers hold exactly expected_rejects() rejects.
REJECTED_EVERY, REJECTED_FROM = 49, 24
WRK_CAP_S = 600  # wrk's -d: a storm that has not ended by then is reported as unfinished
SCENARIO = "reconnect storm: 10,000 clients x (Login + 3 NewProxy), 64 connections, shipped policy"


@dataclass(frozen=True)
class Request:
    op: str
    reqid: str  # X-Frp-Reqid: 16 hex characters, one per event
    body: bytes  # exactly as frps sends it: compact JSON {"version","op","content"}


def _hex(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def _body(op: str, content: dict[str, Any]) -> bytes:
    return json.dumps({"version": "0.1.0", "op": op, "content": content}, separators=(",", ":")).encode()


def storm_policy(target: Path, clients: int = CLIENTS) -> Path:
    """The shipped policy, with the storm's clients as users of their teams."""
    return shipped_policy_with(((f"u{i:05d}", TEAMS[i % len(TEAMS)][0]) for i in range(clients)), target)


def storm(clients: int = CLIENTS, now: int = 1_796_150_070) -> Iterator[Request]:
    """Every client's Login, then its tcp, http and stcp NewProxy, in frps v0.70's shape."""
    for i in range(clients):
        team, (low, high) = TEAMS[i % len(TEAMS)]
        user = f"u{i:05d}"
        token = token_for(user)
        run_id = _hex(f"run {i}", 16)  # the session frps had before its restart
        metas = {"team": team, "token": token}
        login = {
            "version": "0.70.0",
            "hostname": f"host-{i % 97}",
            "os": "linux",
            "arch": "amd64",
            "user": user,
            "privilege_key": _hex(f"key {i}", 32),
            "timestamp": now + i // 100,
            "run_id": run_id,
            "metas": metas,
            "client_spec": {},
            "pool_count": 1,
            "client_address": f"127.0.{i // 250 % 256}.{i % 250 + 1}:{40000 + i % 20000}",
        }
        yield Request("Login", _hex(f"login {i}", 16), _body("Login", login))
        owner = {"user": user, "metas": metas, "run_id": run_id}
        port = low + i % (high - low + 1)
        if i % REJECTED_EVERY == REJECTED_FROM:
            port = high + 1
        teammate = f"u{(i + len(TEAMS)) % clients:05d}"
        proxies = [
            {
                "proxy_name": f"{user}.ssh",
                "proxy_type": "tcp",
                "use_encryption": True,
                "metas": {"owner": user},
                "remote_port": port,
            },
            {"proxy_name": f"{user}.web", "proxy_type": "http", "subdomain": "web"},
            {
                "proxy_name": f"{user}.db",
                "proxy_type": "stcp",
                "use_encryption": True,
                "sk": _hex(f"sk {i}", 12),
                "allow_users": [teammate],
            },
        ][:PROXIES_PER_CLIENT]
        for n, proxy in enumerate(proxies):
            yield Request("NewProxy", _hex(f"proxy {i} {n}", 16), _body("NewProxy", {"user": owner, **proxy}))


def expected_rejects(clients: int = CLIENTS) -> int:
    return sum(1 for i in range(clients) if i % REJECTED_EVERY == REJECTED_FROM)


def write_requests(path: Path, requests: Iterator[Request]) -> int:
    """The file storm.lua reads: one "<op>\\t<reqid>\\t<body>" line per request. Returns the count."""
    count = 0
    with path.open("wb") as f:
        for r in requests:
            f.write(b"%s\t%s\t%s\n" % (r.op.encode(), r.reqid.encode(), r.body))
            count += 1
    return count


def run_storm(url: str, requests_file: Path, total: int) -> dict[str, Any]:
    """One storm against `url`: seconds from wrk's first request to the `total`-th answer, plus
    wrk's summary (latency percentiles, errors) and the number of rejects answered."""
    proc = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{WRK_CAP_S}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STORM_FILE": str(requests_file), "STORM_TOTAL": str(total)},
    )
    assert proc.stdout is not None
    started = seconds = None
    answered = rejected = 0
    summary: dict[str, Any] = {}
    output = []
    for line in proc.stdout:
        if line.startswith("STORMSTART"):
            started = time.monotonic()
        elif line.startswith("STORMDONE") and started is not None:
            seconds = time.monotonic() - started
            answered, rejected = (int(x) for x in line.split()[1:3])
            proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        elif line.startswith("WRKJSON "):
            summary = json.loads(line.removeprefix("WRKJSON "))
        else:
            output.append(line)
    proc.wait(timeout=60)
    if not summary:
        raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}):\n{''.join(output)}")
    return {
        "seconds": seconds,  # None: the storm did not end within WRK_CAP_S
        "answered": answered,
        "rejected": rejected,
        "latency_us": summary["latency_us"],
        "failed": sum(summary["errors"].values()),
    }


def scenario(rounds: int, log_dir: Path) -> list[dict[str, Any]]:
    """The storm against each server in turn, `rounds` times; medians and ratios to raw."""
    from benchmarks.run import baseline, policyd

    quiet = ("--log-level", "warning")
    servers = [
        baseline("raw ASGI constant responder", "raw", log_dir),
        policyd("policyd, 1 worker", storm_policy(log_dir / "policies"), log_dir, *quiet),
        policyd("policyd, 2 workers", log_dir / "policies", log_dir, *quiet, "--workers", "2"),
    ]
    expected = {s.label: 0 if s.label.startswith("raw") else expected_rejects() for s in servers}
    runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
    with tempfile.TemporaryDirectory(prefix="policyd-storm-") as tmp:
        requests_file = Path(tmp) / "storm.tsv"
        total = write_requests(requests_file, storm())
        try:
            for s in servers:
                s.wait_ready()
            for s in servers:  # warm-up: one storm each, not counted
                run_storm(s.url, requests_file, total)
            for r in range(rounds):
                for s in servers[r % len(servers) :] + servers[: r % len(servers)]:
                    runs[s.label].append(run_storm(s.url, requests_file, total))
        finally:
            for s in servers:
                s.stop()
    return rows(runs, expected, total)


def rows(
    runs: dict[str, list[dict[str, Any]]], expected_rejected: dict[str, int], total: int
) -> list[dict[str, Any]]:
    """Table rows: median seconds and percentiles per server, each against the raw responder's."""

    def median(values: list[float | None]) -> float | None:
        return (
            None if any(v is None for v in values) else statistics.median(v for v in values if v is not None)
        )

    out = []
    raw_label = next(iter(runs))
    raw_seconds = median([r["seconds"] for r in runs[raw_label]])
    raw_p99 = statistics.median(r["latency_us"]["p99"] for r in runs[raw_label])
    for label, results in runs.items():
        seconds = median([r["seconds"] for r in results])
        p99 = statistics.median(r["latency_us"]["p99"] for r in results)
        wrong = [r["rejected"] for r in results if r["rejected"] != expected_rejected[label]]
        out.append(
            {
                "scenario": SCENARIO,
                "subject": label,
                "seconds": None if seconds is None else round(seconds, 2),
                "rps": None if seconds is None else round(total / seconds),
                "p50_ms": round(statistics.median(r["latency_us"]["p50"] for r in results) / 1000, 2),
                "p99_ms": round(p99 / 1000, 2),
                "max_ms": round(max(r["latency_us"]["max"] for r in results) / 1000, 2),
                "time_vs_raw": None
                if seconds is None or not raw_seconds
                else round(seconds / raw_seconds, 2),
                "p99_vs_raw": round(p99 / raw_p99, 2) if raw_p99 else None,
                "answered": min(r["answered"] for r in results),
                "rejected": [r["rejected"] for r in results],
                "rejected_expected": expected_rejected[label],
                "rounds_seconds": [None if r["seconds"] is None else round(r["seconds"], 2) for r in results],
                # Transport errors and non-2xx answers, plus rounds with the wrong number of rejects.
                "failed": sum(r["failed"] for r in results) + len(wrong),
            }
        )
    return out
