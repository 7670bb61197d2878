"""policyd's benchmarks: in-process decisions, HTTP throughput, reloads under load, a 10k-rule swap.

    python -m benchmarks.run [--duration 5] [--rounds 3] [--only inproc,peers,overrun,http,...]

Scenarios: inproc, peers, overrun, http, reload, shadow, swap, storm, frps, state.

Every server runs on 127.0.0.1 with `policyd serve`'s own uvicorn settings; baselines and
candidates are measured in the same run, interleaved round by round, and compared as ratios
(absolute numbers depend on the machine and on whatever else it runs). Prints a table and writes
it as JSON to benchmarks/results/. HTTP scenarios need wrk (`apt-get install -y wrk`); `peers`
times Rego and CEL from the `bench` extra; `frps` needs real frp binaries in FRPS_BIN/FRPC_BIN.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = HERE / "newproxy.json"
URL_PATH = "/handler?version=0.1.0&op=NewProxy"  # as frps sends it
CONNECTIONS = 32
SCENARIOS = ("inproc", "peers", "overrun", "http", "reload", "shadow", "swap", "storm", "frps", "state")
WRK_SCENARIOS = {"http", "reload", "shadow", "swap", "storm"}


# -- servers ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process on a free loopback port; its stderr kept in a file."""

    def __init__(self, label: str, args: list[str], log_dir: Path, checkout: Path = ROOT) -> None:
        self.label = label
        self.port = _free_port()
        self.log_path = log_dir / f"{label.replace(' ', '_').replace(',', '').replace('/', '_')}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, *[a.replace("{port}", str(self.port)) for a in args]]
        # Another checkout's policyd runs from its own tree (imports resolve there first).
        env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=self._log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.label} not ready after {timeout}s")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM, and SIGKILL if it is still there after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def policyd(label: str, policies: Path, log_dir: Path, *extra: str, checkout: Path = ROOT) -> Server:
    args = ["-m", "policyd", "serve", "--policies", str(policies), "--port", "{port}", *extra]
    return Server(label, args, log_dir, checkout)


def baseline(label: str, name: str, log_dir: Path) -> Server:
    return Server(label, ["-m", "benchmarks.baselines", name, "{port}"], log_dir)


# -- load ---------------------------------------------------------------------------------
def wrk(url: str, seconds: float, connections: int = CONNECTIONS, delay_ms: float = 0) -> dict[str, Any]:
    """One wrk run (1 thread): its JSON summary, with req/s added. With `delay_ms`, each
    connection pauses that long between requests: a partial load instead of as fast as it answers."""
    pace = {"WRK_DELAY_MS": f"{delay_ms:g}"} if delay_ms else {}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(HERE / "wrk.lua"), url],
        capture_output=True,
        text=True,
        env={**os.environ, "WRK_BODY_FILE": str(BODY), **pace},
        timeout=seconds + 60,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["failed"] = sum(result["errors"].values())
    return result


def _ms(us: float) -> float:
    return round(us / 1000, 2)


# -- scenarios ----------------------------------------------------------------------------
def scenario_inproc(seconds: float) -> list[dict[str, Any]]:
    from benchmarks import inproc

    return inproc.run(seconds)


def scenario_peers(seconds: float) -> list[dict[str, Any]]:
    from benchmarks.peers import scenario

    return scenario.run(seconds)


def scenario_http(
    seconds: float, rounds: int, log_dir: Path, compare: Path | None = None
) -> list[dict[str, Any]]:
    """Throughput of each server, wrk against one at a time, all in the same rounds."""
    servers = [
        baseline("raw ASGI constant responder", "raw", log_dir),
        baseline("bare FastAPI, pydantic model", "fastapi-model", log_dir),
        baseline("bare FastAPI, request.json()", "fastapi-json", log_dir),
        policyd("policyd, shipped policy", ROOT / "policies", log_dir, "--log-level", "warning"),
        policyd("policyd, 50-rule policy", HERE / "policy50", log_dir, "--log-level", "warning"),
        policyd(
            "policyd, 50-rule policy, decision log off",
            HERE / "policy50",
            log_dir,
            "--log-level",
            "warning",
            "--decision-log",
            "off",
        ),
    ]
    if compare is not None:
        for label, policies in (("shipped policy", ROOT / "policies"), ("50-rule policy", HERE / "policy50")):
            servers.append(
                policyd(
                    f"{compare.name} checkout, {label}",
                    policies,
                    log_dir,
                    "--log-level",
                    "warning",
                    checkout=compare,
                )
            )
    runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
    try:
        for s in servers:
            s.wait_ready()
            wrk(s.url + URL_PATH, 1)  # warm-up
        for _ in range(rounds):
            for s in servers:
                runs[s.label].append(wrk(s.url + URL_PATH, seconds))
    finally:
        for s in servers:
            s.stop()
    rows = []
    medians = {label: statistics.median(r["rps"] for r in rs) for label, rs in runs.items()}
    for label, rs in runs.items():
        failed = sum(r["failed"] for r in rs)
        rows.append(
            {
                "scenario": "HTTP, NewProxy body",
                "subject": label,
                "rps": round(medians[label]),
                "p50_ms": _ms(statistics.median(r["latency_us"]["p50"] for r in rs)),
                "p99_ms": _ms(statistics.median(r["latency_us"]["p99"] for r in rs)),
                "vs_raw": round(medians[label] / medians["raw ASGI constant responder"], 2),
                "vs_fastapi_model": round(medians[label] / medians["bare FastAPI, pydantic model"], 2),
                "vs_fastapi_json": round(medians[label] / medians["bare FastAPI, request.json()"], 2),
                "rounds_rps": [round(r["rps"]) for r in rs],
                "failed": failed,
            }
        )
    return rows


def _copy_policy(target: Path) -> Path:
    shutil.copytree(HERE / "policy50", target, dirs_exist_ok=True)
    return target


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def scenario_reload(seconds: float, rounds: int, log_dir: Path) -> list[dict[str, Any]]:
    """p99 with one rule of NewProxy.rules edited every second, against p99 without, same server."""
    with tempfile.TemporaryDirectory() as tmp:
        policies = _copy_policy(Path(tmp) / "policies")
        rules = policies / "NewProxy.rules"
        original = rules.read_text()
        server = policyd("policyd reloading", policies, log_dir, "--decision-log", "off").wait_ready()
        quiet: list[dict[str, Any]] = []
        busy: list[dict[str, Any]] = []
        edits = 0
        try:
            wrk(server.url + URL_PATH, 1)
            for _ in range(rounds):
                quiet.append(wrk(server.url + URL_PATH, seconds))
                stop = threading.Event()

                def edit(stop: threading.Event = stop) -> None:
                    nonlocal edits
                    while not stop.wait(1.0):
                        edits += 1
                        # One rule changes, as in an operator's edit: a new port every time.
                        edited = original.replace("(6666, 6667, 6697)", f"(6666, 6667, {7000 + edits})")
                        _write_atomically(rules, edited)

                editor = threading.Thread(target=edit)
                editor.start()
                try:
                    busy.append(wrk(server.url + URL_PATH, seconds))
                finally:
                    stop.set()
                    editor.join()
                time.sleep(0.5)  # let the last reload finish before the next quiet round
            reloads = server.logs().count("active after change")
        finally:
            server.stop()
    p99_quiet = statistics.median(r["latency_us"]["p99"] for r in quiet)
    p99_busy = statistics.median(r["latency_us"]["p99"] for r in busy)
    return [
        {
            "scenario": "reload every second under load (50-rule policy)",
            "subject": "without reloads",
            "rps": round(statistics.median(r["rps"] for r in quiet)),
            "p50_ms": _ms(statistics.median(r["latency_us"]["p50"] for r in quiet)),
            "p99_ms": _ms(p99_quiet),
            "rounds_p99_ms": [_ms(r["latency_us"]["p99"]) for r in quiet],
            "failed": sum(r["failed"] for r in quiet),
        },
        {
            "scenario": "reload every second under load (50-rule policy)",
            "subject": f"with reloads ({reloads} swaps of {edits} edits)",
            "rps": round(statistics.median(r["rps"] for r in busy)),
            "p50_ms": _ms(statistics.median(r["latency_us"]["p50"] for r in busy)),
            "p99_ms": _ms(p99_busy),
            "p99_ratio": round(p99_busy / p99_quiet, 2),
            "rounds_p99_ms": [_ms(r["latency_us"]["p99"]) for r in busy],
            "failed": sum(r["failed"] for r in busy),
        },
    ]


PACED_DELAY_MS = 10  # with CONNECTIONS connections: at most ~3,200 requests/s, a third of capacity
# A shadow NewProxy rule that runs into the shadow's budget on every request: the slow case.
SLOW_SHADOW_RULE = 'reject "never" when any(any(j < 0 for j in range(9999)) for i in range(9999))\n'


def shadow_policies(root: Path) -> tuple[Path, Path, Path]:
    """The shadow scenario's policies under `root`: the 50-rule policy; the same with one rule
    edited (the size of the main one, and NewProxy not decided by the same files); and the same
    with a rule that runs into the shadow's budget first."""
    policies = _copy_policy(root / "policies")
    candidate = _copy_policy(root / "candidate")
    rules = candidate / "NewProxy.rules"
    rules.write_text(rules.read_text().replace("(6666, 6667, 6697)", "(6666, 6667, 6697, 7000)"))
    slow = _copy_policy(root / "slow")
    (slow / "NewProxy.rules").write_text(SLOW_SHADOW_RULE + (slow / "NewProxy.rules").read_text())
    return policies, candidate, slow


def scenario_shadow(seconds: float, rounds: int, log_dir: Path) -> list[dict[str, Any]]:
    """p99 with a shadow policy the size of the main one (the 50-rule policy, one rule edited),
    against p99 without a shadow; and with a shadow that runs out of budget on every request."""
    with tempfile.TemporaryDirectory() as tmp:
        policies, candidate, slow = shadow_policies(Path(tmp))
        quiet = ("--decision-log", "off", "--log-level", "warning")
        servers = [
            policyd("policyd, no shadow", policies, log_dir, *quiet),
            policyd(
                "policyd, 50-rule shadow", policies, log_dir, *quiet, "--shadow-policies", str(candidate)
            ),
            policyd(
                "policyd, shadow over its budget on every request",
                policies,
                log_dir,
                *quiet,
                "--shadow-policies",
                str(slow),
            ),
        ]
        runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
        cpu: dict[str, list[float]] = {s.label: [] for s in servers}
        counts: dict[str, dict[str, float]] = {}
        paced: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers[:2]}
        paced_counts: dict[str, dict[str, float]] = {}
        try:
            for s in servers:
                s.wait_ready()
                wrk(s.url + URL_PATH, 1)
            for _ in range(rounds):
                for s in servers:
                    before = _cpu_seconds(s.proc.pid)
                    run = wrk(s.url + URL_PATH, seconds)
                    runs[s.label].append(run)
                    cpu[s.label].append((_cpu_seconds(s.proc.pid) - before) / run["requests"] * 1e6)
            for s in servers[1:]:
                counts[s.label] = _shadow_counts(s.url)
            # The same servers at a steady partial load, as a fleet's plugin traffic usually is.
            for _ in range(rounds):
                for s in servers[:2]:
                    paced[s.label].append(wrk(s.url + URL_PATH, seconds, delay_ms=PACED_DELAY_MS))
            after = _shadow_counts(servers[1].url)
            paced_counts[servers[1].label] = {k: v - counts[servers[1].label][k] for k, v in after.items()}
        finally:
            for s in servers:
                s.stop()
    base = runs[servers[0].label]
    rows = []
    for label, rs in runs.items():
        p99 = statistics.median(r["latency_us"]["p99"] for r in rs)
        row = {
            "scenario": "shadow policy under load (50-rule policy)",
            "subject": label,
            "rps": round(statistics.median(r["rps"] for r in rs)),
            "p50_ms": _ms(statistics.median(r["latency_us"]["p50"] for r in rs)),
            "p99_ms": _ms(p99),
            "shadow_p99_ratio": _p99_ratio(rs, base),
            # CPU the server spent per request: what the shadow costs, whatever else the host runs.
            "cpu_us": round(statistics.median(cpu[label]), 1),
            "rounds_p99_ms": [_ms(r["latency_us"]["p99"]) for r in rs],
            "failed": sum(r["failed"] for r in rs),
        }
        if label in counts:
            row.update(counts[label])
        rows.append(row)
    paced_base = paced[servers[0].label]
    for label, rs in paced.items():
        rows.append(
            {
                "scenario": "shadow policy under load (50-rule policy)",
                "subject": f"{label}, {CONNECTIONS} connections pausing {PACED_DELAY_MS:g} ms",
                "rps": round(statistics.median(r["rps"] for r in rs)),
                "p50_ms": _ms(statistics.median(r["latency_us"]["p50"] for r in rs)),
                "p99_ms": _ms(statistics.median(r["latency_us"]["p99"] for r in rs)),
                "paced_p99_ratio": _p99_ratio(rs, paced_base),
                "rounds_p99_ms": [_ms(r["latency_us"]["p99"]) for r in rs],
                "failed": sum(r["failed"] for r in rs),
                **paced_counts.get(label, {}),
            }
        )
    return rows


def _p99_ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> float:
    """The median of each round's p99 over the same round's p99 without a shadow: the two runs
    of a round are moments apart, so a host busy with other work slows both, not one median."""
    ratios = [r["latency_us"]["p99"] / b["latency_us"]["p99"] for r, b in zip(runs, base, strict=True)]
    return round(statistics.median(ratios), 2)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _shadow_counts(url: str) -> dict[str, float]:
    """How many requests the shadow decided (by agreement) and skipped, from /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"shadowed": 0.0, "shadow_errors": 0.0, "shadow_skipped": 0.0}
    for line in text.splitlines():
        if line.startswith("policyd_shadow_decisions_total{"):
            value = float(line.rsplit(" ", 1)[1])
            out["shadowed"] += value
            if 'agreement="error"' in line:
                out["shadow_errors"] += value
        elif line.startswith("policyd_shadow_skipped_total{"):
            out["shadow_skipped"] += float(line.rsplit(" ", 1)[1])
    return {k: round(v) for k, v in out.items()}


BIG_POLICY_FILES = ("Login", "Ping", "NewWorkConn", "NewUserConn", "CloseProxy")


def big_policy(rules: int = 10_000) -> dict[str, str]:
    """Per-user rules spread over the ops the load does not send (a file holds at most
    sandbox.MAX_FILE_RULES), so requests keep deciding 50 NewProxy rules while 10,000 load."""
    per_file = -(-rules // len(BIG_POLICY_FILES))
    files = {}
    for n, op in enumerate(BIG_POLICY_FILES):
        lines = [f"# {op}.rules: part of a 10,000-rule policy for the swap benchmark."]
        for i in range(n * per_file, min(rules, (n + 1) * per_file)):
            lines.append(
                f'reject "user u{i} may only connect from team t{i % 50} ({{user.metas.team}} asked)" '
                f'when user.user == "u{i}" and user.metas.team != "t{i % 50}" '
                f'and not regex("^r{i % 256}-", user.run_id)'
            )
        files[f"{op}.rules"] = "\n".join(lines) + "\n"
    return files


def _swap_row(scenario: str, subject: str, run: dict[str, Any]) -> dict[str, Any]:
    """One table row of a swap-scenario wrk run."""
    latency = run["latency_us"]
    return {
        "scenario": scenario,
        "subject": subject,
        "rps": round(run["rps"]),
        "p50_ms": _ms(latency["p50"]),
        "p99_ms": _ms(latency["p99"]),
        "max_ms": _ms(latency["max"]),
        "failed": run["failed"],
    }


def scenario_swap(seconds: float, log_dir: Path) -> list[dict[str, Any]]:
    """Load and swap in a 10,000-rule policy while NewProxy requests keep coming."""
    with tempfile.TemporaryDirectory() as tmp:
        policies = _copy_policy(Path(tmp) / "policies")
        server = policyd("policyd swapping", policies, log_dir, "--decision-log", "off").wait_ready()
        files = big_policy()
        try:
            wrk(server.url + URL_PATH, 1)
            control = wrk(server.url + URL_PATH, seconds)  # the same load, nothing changing
            result: dict[str, Any] = {}
            load = threading.Thread(target=lambda: result.update(wrk(server.url + URL_PATH, seconds)))
            load.start()
            time.sleep(min(2.0, seconds / 4))
            before = server.logs().count("active after change")
            written = time.monotonic()
            staging = Path(tmp) / "staging"
            shutil.copytree(policies, staging)
            for name, text in files.items():
                (staging / name).write_text(text)
            # Five renames in a row, as a sync tool makes them (the watcher debounces them).
            for name in files:
                os.replace(staging / name, policies / name)
            swapped_after = None
            while load.is_alive():
                if swapped_after is None and server.logs().count("active after change") > before:
                    swapped_after = time.monotonic() - written
                time.sleep(0.05)
            load.join()
            if swapped_after is None and server.logs().count("active after change") > before:
                swapped_after = float("nan")  # swapped, but only after the load ended
        finally:
            server.stop()
    scenario = "swap in a 10,000-rule policy under load"
    return [
        _swap_row(scenario, "same server and load, no change (control)", control),
        {
            **_swap_row(scenario, "policyd, 50 NewProxy rules + 10,000 in 5 other files", result),
            "swapped_after_s": None if swapped_after is None else round(swapped_after, 2),
        },
    ]


# -- report -------------------------------------------------------------------------------
def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, judged on this run's rows."""
    out = []

    def find(scenario: str, subject: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["scenario"].startswith(scenario) and r["subject"] == subject), None)

    inproc = next(
        (r for r in rows if r["scenario"].startswith("in-process, 50-rule") and "compiled" in r["subject"]),
        None,
    )
    if inproc:
        out.append(_target("in-process: 50-rule decision vs plain simpleeval", inproc["ratio"], ">=", 10))
    http = find("HTTP", "policyd, 50-rule policy")
    if http:
        out.append(
            _target("HTTP: policyd 50-rule vs FastAPI (pydantic)", http["vs_fastapi_model"], ">=", 1.5)
        )
        out.append(
            _target("HTTP: policyd 50-rule vs FastAPI (request.json)", http["vs_fastapi_json"], ">=", 1.5)
        )
        out.append(_target("HTTP: policyd 50-rule vs raw ASGI", http["vs_raw"], ">=", 0.6))
    if any(r["scenario"].startswith("peers") for r in rows):
        from benchmarks.peers import scenario as peers

        out += [_target(*goal) for goal in peers.targets(rows)]
    if any(r["scenario"].startswith("frps") and "skipped" not in r for r in rows):
        from benchmarks import frps

        out += [_target(*goal) for goal in frps.targets(rows)]
    if any(r["scenario"] == "state" for r in rows):
        from benchmarks import state

        out += [_target(*goal) for goal in state.targets(rows)]
    reload_row = next((r for r in rows if "p99_ratio" in r), None)
    if reload_row:
        out.append(_target("reload every second: p99 ratio", reload_row["p99_ratio"], "<=", 1.2))
    shadow = find("shadow policy", "policyd, 50-rule shadow")
    if shadow:
        out.append(_target("50-rule shadow: main-path p99 ratio", shadow["shadow_p99_ratio"], "<=", 1.3))
    paced = next((r for r in rows if "paced_p99_ratio" in r and "shadowed" in r), None)
    if paced:
        out.append(_target("50-rule shadow, partial load: p99 ratio", paced["paced_p99_ratio"], "<=", 1.3))
    overruns = [r["overrun_ms"] for r in rows if r["scenario"] == "overrun"]
    if overruns:
        from benchmarks.overrun import STATED_BOUND_MS

        worst = max(overruns)
        out.append(_target("budget: worst overrun of a 100 ms CPU budget (ms)", worst, "<=", STATED_BOUND_MS))
    swap = next((r for r in rows if "swapped_after_s" in r), None)
    if swap:
        out.append(_target("10k-rule swap: failed answers", swap["failed"], "<=", 0))
        out.append(_target("10k-rule swap: slowest answer (ms)", swap["max_ms"], "<=", 50))
        swapped = swap["swapped_after_s"] is not None and swap["swapped_after_s"] == swap["swapped_after_s"]
        out.append({"target": "10k-rule swap: swapped during the load", "value": swapped, "met": swapped})
    return out


def _target(name: str, value: float, op: str, bound: float) -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound
    return {"target": f"{name} {op} {bound:g}", "value": value, "met": met}


COLUMNS = [  # (row key, title, width): a scenario's table shows the columns its rows have
    ("subject", "subject", 48),
    ("rps", "req/s", 8),
    ("seconds", "seconds", 7),
    ("p50_ms", "p50 ms", 7),
    ("p99_ms", "p99 ms", 7),
    ("max_ms", "max ms", 7),
    ("us_per_decision", "µs/dec", 8),
    ("ratio", "×simpleeval", 11),
    ("allow_us", "allow", 19),
    ("reject24_us", "reject at rule 24", 19),
    ("rewrite_us", "rewrite", 19),
    ("vs_raw", "×raw", 5),
    ("vs_fastapi_model", "×FastAPI", 8),
    ("vs_fastapi_json", "×FA.json", 8),
    ("time_vs_raw", "time ×raw", 9),
    ("p99_vs_raw", "p99 ×raw", 8),
    ("time_vs_raw_plugin", "time ×raw plugin", 16),
    ("p99_ratio", "p99 ×", 6),
    ("shadow_p99_ratio", "p99 ×", 6),
    ("paced_p99_ratio", "p99 ×", 6),
    ("cpu_us", "CPU µs/req", 10),
    ("shadowed", "shadowed", 8),
    ("shadow_errors", "errors", 7),
    ("shadow_skipped", "skipped", 7),
    ("state_call_us", "µs/state call", 13),
    ("state_call_best_us", "best round", 10),
    ("round_trips", "round trips", 11),
    ("round_trip_us", "µs/trip", 8),
    ("answered", "answered", 8),
    ("default_cpu_ms", "CPU ms, default steps", 21),
    ("cpu_ms", "CPU ms, clock only", 18),
    ("overrun_ms", "overrun ms", 10),
    ("stopped_by", "stopped by", 0),
    ("failed", "failed", 6),
]


def _cell(row: dict[str, Any], key: str) -> str:
    if key.endswith("_us") and f"{key[:-3]}_vs_policyd" in row:  # the peers table: "10.7 µs (1×)"
        return f"{row[key]:g} µs ({row[key[:-3] + '_vs_policyd']:g}×)"
    return str(row.get(key, ""))


def print_table(rows: list[dict[str, Any]], goals: list[dict[str, Any]]) -> None:
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        group = [r for r in rows if r["scenario"] == scenario]
        columns = [c for c in COLUMNS if c[0] == "subject" or any(c[0] in r for r in group)]
        print(f"\n{scenario}")
        if any("skipped" not in r for r in group):
            print(
                "  "
                + " ".join(
                    f"{title:>{width}}" if key != "subject" else f"{title:<{width}}"
                    for key, title, width in columns
                )
            )
        for row in group:
            if "skipped" in row:
                print(f"  {row['subject']:<48} skipped: {row['skipped']}")
                continue
            cells = []
            for key, _, width in columns:
                value = _cell(row, key)
                cells.append(f"{value:<{width}}" if key == "subject" else f"{value:>{width}}")
            print("  " + " ".join(cells))
            if "swapped_after_s" in row:
                print(f"  (the new policy answered {row['swapped_after_s']} s after the file was written)")
    print("\ntargets")
    for goal in goals:
        print(f"  [{'met' if goal['met'] else 'NOT MET'}] {goal['target']}: {goal['value']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per server (default 3)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run (comma-separated)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes")
    parser.add_argument(
        "--compare",
        type=Path,
        help="another checkout of policyd (e.g. a worktree of main) to serve in the HTTP scenario too",
    )
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    if wanted - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {', '.join(sorted(wanted - set(SCENARIOS)))}: use {SCENARIOS}")
    if wanted & WRK_SCENARIOS and shutil.which("wrk") is None:
        print(
            f"wrk is not installed; {', '.join(sorted(wanted & WRK_SCENARIOS))} need it. On Debian/Ubuntu:\n"
            "  apt-get update && apt-get install -y wrk\n"
            "or run only the in-process scenarios: python -m benchmarks.run --only inproc,peers",
            file=sys.stderr,
        )
        return 2
    rows: list[dict[str, Any]] = []
    with _log_dir() as log_dir:
        if "inproc" in wanted:
            rows += scenario_inproc(max(1.0, args.duration / 2))
        if "peers" in wanted:
            rows += scenario_peers(args.duration)
        if "overrun" in wanted:
            from benchmarks import overrun

            rows += overrun.run(max(args.rounds, 5))
        if "http" in wanted:
            rows += scenario_http(args.duration, args.rounds, log_dir, args.compare)
        if "reload" in wanted:
            rows += scenario_reload(args.duration, args.rounds, log_dir)
        if "shadow" in wanted:
            rows += scenario_shadow(args.duration, args.rounds, log_dir)
        if "swap" in wanted:
            rows += scenario_swap(max(30.0, args.duration), log_dir)
        if "storm" in wanted:
            from benchmarks import storm

            rows += storm.scenario(args.rounds, log_dir)
        if "frps" in wanted:
            from benchmarks import frps

            rows += frps.scenario(args.rounds, log_dir)
        if "state" in wanted:
            from benchmarks import state

            rows += state.run(max(1.0, args.duration / 2))
    goals = targets(rows)
    print_table(rows, goals)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"environment": environment(args), "rows": rows, "targets": goals}, indent=2))
    print(f"\nwritten to {path}")
    return 0


@contextlib.contextmanager
def _log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="policyd-bench-") as tmp:
        yield Path(tmp)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    def installed(module: str) -> bool:
        try:
            __import__(module)
        except ImportError:
            return False
        return True

    wrk_version = ""
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        wrk_version = (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else ""
    from importlib import metadata

    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "opa_eval": version("opa-eval"),
        "common_expression_language": version("common-expression-language"),
        "frps_bin": os.environ.get("FRPS_BIN"),
        "uvicorn": uvicorn.__version__,
        "uvloop": installed("uvloop"),
        "httptools": installed("httptools"),
        "wrk": wrk_version,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": CONNECTIONS,
    }


if __name__ == "__main__":
    sys.exit(main())
