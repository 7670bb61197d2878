"""As frps feels it (issue 18, target 5): real frps and frpc, the time until every proxy is up.

One frpc (alice, team red) registers 200 proxies (100 tcp, 100 http) while 20 more frpc clients
(team blue, one tcp proxy each) log in at the same moment: 21 Logins and 220 NewProxy requests
reach the plugin chain at once, and frps handles each client's NewProxy one after the other.
Measured: the time from starting the 21 frpc processes until frps's API lists all 220 proxies
online, three ways, interleaved round by round, frps started afresh each time:
- with policyd and the shipped policy (policies/) in the plugin chain,
- with the raw ASGI allow-all plugin (benchmarks/baselines.py `raw`) in its place,
- with no plugin.
Target: policyd adds at most 10% over the raw plugin.

Runs where FRPS_BIN and FRPC_BIN point at real frp binaries (v0.33.0 with INI configs, v0.52+
such as v0.70.0 with TOML: chosen from `frps --version`); elsewhere it says so and is skipped.
The configs (written by policyd.tools.frpsconfig's writers) and the fleet are plain functions
(tests/test_benchmarks.py checks them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.users import shipped_policy_with, token_for
from policyd.rules.decision import Op
from policyd.rules.schema import OP_FACTS, FrpsVersion
from policyd.tools.frpsconfig import ConfigFormat, default_format, render_ini, render_toml, version_in_output

LOOPBACK = "127.0.0.1"
SCENARIO = "frps + 21 frpc: time until 220 proxies are registered"
TOKEN = "bench-token"  # frps's auth token; frpc sends it (the plugin runs before frps checks it)
API_USER, API_PASSWORD = "admin", "bench"
SUBDOMAIN_HOST = "bench.test"
BULK_TCP, BULK_HTTP, LOGINS = 100, 100, 20  # the 200-proxy client; the 20 clients logging in with it
TEAM_PORTS = {"red": (6000, 6999), "blue": (7000, 7999)}  # policies/data/teams.toml
RED_TOKEN = "tk-alice"  # alice's token in the shipped data/users.toml
READY_TIMEOUT_S = 30.0
REGISTER_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.02
ALL_OPS = ("Login", "NewProxy", "CloseProxy", "Ping", "NewWorkConn", "NewUserConn")
CLOSE_PROXY_SINCE = OP_FACTS[Op.CLOSE_PROXY].since  # frps validates ops: older ones refuse CloseProxy

# The version and the config format come from policyd's frps facts (what `policyd frps-config
# --frps-version` uses): TOML from 0.52, INI before.
parse_version = version_in_output
config_format = default_format


def plugin_ops(version: FrpsVersion) -> tuple[str, ...]:
    """Every op this frps can send to a plugin (v0.33's NewWorkConn arrives as Ping, as in use)."""
    return tuple(op for op in ALL_OPS if op != "CloseProxy" or version >= CLOSE_PROXY_SINCE)


@dataclass(frozen=True)
class Proxy:
    name: str
    type: str  # "tcp" or "http"
    remote_port: int = 0  # tcp
    subdomain: str = ""  # http


@dataclass(frozen=True)
class Client:
    user: str
    metas: dict[str, str]
    proxies: tuple[Proxy, ...]


@dataclass(frozen=True)
class Ports:
    """The loopback ports one round uses: frps's own, and the tcp proxies' per team."""

    bind: int
    vhost_http: int
    api: int
    red: Sequence[int] = field(default=())
    blue: Sequence[int] = field(default=())


def fleet_policy(target: Path) -> Path:
    """The shipped policy, with the fleet's blue clients as users (alice is one already)."""
    return shipped_policy_with(((f"u{i:02d}", "blue") for i in range(LOGINS)), target)


def fleet(red_ports: Sequence[int], blue_ports: Sequence[int]) -> list[Client]:
    """alice (red) with BULK_TCP tcp + BULK_HTTP http proxies, then LOGINS blue clients with one tcp
    proxy each; tcp ports come from the team's range so the shipped policy allows them all."""
    if len(red_ports) < BULK_TCP or len(blue_ports) < LOGINS:
        raise ValueError(f"need {BULK_TCP} red and {LOGINS} blue tcp ports")
    bulk = tuple(Proxy(f"tcp{i:03d}", "tcp", remote_port=red_ports[i]) for i in range(BULK_TCP)) + tuple(
        Proxy(f"web{i:03d}", "http", subdomain=f"web{i:03d}") for i in range(BULK_HTTP)
    )
    clients = [Client("alice", {"team": "red", "token": RED_TOKEN}, bulk)]
    for i in range(LOGINS):
        clients.append(
            Client(
                f"u{i:02d}",
                {"team": "blue", "token": token_for(f"u{i:02d}")},
                (Proxy("ssh", "tcp", remote_port=blue_ports[i]),),
            )
        )
    return clients


def frps_config(fmt: ConfigFormat, ports: Ports, plugin_addr: str | None, ops: Sequence[str]) -> str:
    """frps on loopback: proxies, vhost and API bound to 127.0.0.1; one plugin, or none."""
    if fmt is ConfigFormat.TOML:
        top: dict[str, object] = {
            "bindAddr": LOOPBACK,
            "bindPort": ports.bind,
            "proxyBindAddr": LOOPBACK,
            "vhostHTTPPort": ports.vhost_http,
            "subDomainHost": SUBDOMAIN_HOST,
            "auth.token": TOKEN,
            "webServer.addr": LOOPBACK,
            "webServer.port": ports.api,
            "webServer.user": API_USER,
            "webServer.password": API_PASSWORD,
            "log.to": "console",
            "log.level": "info",
            "log.disablePrintColor": True,
        }
        plugin = {"name": "bench", "addr": plugin_addr, "path": "/handler", "ops": list(ops)}
        return render_toml(top, {"httpPlugins": [plugin]} if plugin_addr else None)
    common: dict[str, object] = {
        "bind_addr": LOOPBACK,
        "bind_port": ports.bind,
        "proxy_bind_addr": LOOPBACK,
        "vhost_http_port": ports.vhost_http,
        "subdomain_host": SUBDOMAIN_HOST,
        "token": TOKEN,
        "dashboard_addr": LOOPBACK,
        "dashboard_port": ports.api,
        "dashboard_user": API_USER,
        "dashboard_pwd": API_PASSWORD,
        "log_file": "console",
        "log_level": "info",
        "disable_log_color": True,
    }
    sections: dict[str, dict[str, object]] = {"common": common}
    if plugin_addr:
        sections["plugin.bench"] = {"addr": plugin_addr, "path": "/handler", "ops": list(ops)}
    return render_ini(sections)


def frpc_config(fmt: ConfigFormat, client: Client, server_port: int) -> str:
    """One frpc: its user and metadatas (what the rules key on), its proxies to a dummy local port
    (registration never connects to it)."""
    if fmt is ConfigFormat.TOML:
        top: dict[str, object] = {
            "serverAddr": LOOPBACK,
            "serverPort": server_port,
            "user": client.user,
            "auth.token": TOKEN,
            **{f"metadatas.{k}": v for k, v in client.metas.items()},
            "loginFailExit": True,
            "log.to": "console",
            "log.level": "info",
            "log.disablePrintColor": True,
        }
        proxies = []
        for p in client.proxies:
            options: dict[str, object] = {"name": p.name, "type": p.type, "localIP": LOOPBACK, "localPort": 9}
            options.update({"remotePort": p.remote_port} if p.type == "tcp" else {"subdomain": p.subdomain})
            proxies.append(options)
        return render_toml(top, {"proxies": proxies})
    common: dict[str, object] = {
        "server_addr": LOOPBACK,
        "server_port": server_port,
        "user": client.user,
        "token": TOKEN,
        **{f"meta_{k}": v for k, v in client.metas.items()},
        "login_fail_exit": True,
        "log_file": "console",
        "log_level": "info",
        "disable_log_color": True,
    }
    sections: dict[str, dict[str, object]] = {"common": common}
    for p in client.proxies:
        options = {"type": p.type, "local_ip": LOOPBACK, "local_port": 9}
        options.update({"remote_port": p.remote_port} if p.type == "tcp" else {"subdomain": p.subdomain})
        sections[p.name] = options
    return render_ini(sections)


def online(answers: Iterable[dict[str, Any]]) -> int:
    """How many proxies frps's `/api/proxy/<type>` answers list as online (both versions' shape:
    {"proxies": [{"name": ..., "status": "online", ...}]})."""
    return sum(1 for answer in answers for p in answer.get("proxies") or () if p.get("status") == "online")


# -- running it ---------------------------------------------------------------------------------
def binaries() -> tuple[Path, Path] | str:
    """(frps, frpc) from FRPS_BIN/FRPC_BIN, or why the scenario cannot run here."""
    frps, frpc = os.environ.get("FRPS_BIN"), os.environ.get("FRPC_BIN")
    if not frps or not frpc:
        return "FRPS_BIN/FRPC_BIN not set: point them at frp's frps and frpc (v0.33.0 or v0.70.0)"
    for variable, binary in (("FRPS_BIN", frps), ("FRPC_BIN", frpc)):
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            return f"{variable}={binary} is not an executable file"
    return Path(frps), Path(frpc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _free_ports(low: int, high: int, count: int, taken: set[int]) -> list[int]:
    found = []
    for port in range(low, high + 1):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"only {len(found)} free loopback ports in {low}-{high}, need {count}")


def round_ports() -> Ports:
    own = {_free_port() for _ in range(3)}
    while len(own) < 3:
        own.add(_free_port())
    bind, vhost, api = sorted(own)
    red = _free_ports(*TEAM_PORTS["red"], BULK_TCP, own)
    blue = _free_ports(*TEAM_PORTS["blue"], LOGINS, own)
    return Ports(bind, vhost, api, red, blue)


class _Process:
    """A binary whose stdout and stderr go to one log file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        from benchmarks.run import stop_process

        stop_process(self.proc)
        self._log.close()


def _api(port: int, path: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}")
    credentials = base64.b64encode(f"{API_USER}:{API_PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def _registered(api_port: int) -> int:
    return online(_api(api_port, f"/api/proxy/{kind}") for kind in ("tcp", "http"))


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2):
            return True
    except OSError:
        return False


def _wait_ready(server: _Process, ports: Ports) -> None:
    """Until frps accepts clients and its API answers (listing no proxy yet)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = "no answer"
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"frps exited ({server.proc.returncode}):\n{server.tail()}")
        if _accepts(ports.bind):
            try:
                if _registered(ports.api) == 0:
                    return
            except (OSError, ValueError) as e:
                last = e
        if time.monotonic() > deadline:
            raise RuntimeError(f"frps not ready after {READY_TIMEOUT_S:g}s (API: {last}):\n{server.tail()}")
        time.sleep(0.1)


def one_round(
    frps_bin: Path, frpc_bin: Path, version: FrpsVersion, plugin_addr: str | None, directory: Path
) -> float:
    """Start frps, then all frpc at once; seconds until frps lists every proxy online."""
    fmt = config_format(version)
    ports = round_ports()
    clients = fleet(ports.red, ports.blue)
    expected = sum(len(c.proxies) for c in clients)
    directory.mkdir(parents=True)
    frps_file = directory / f"frps.{fmt.value}"
    frps_file.write_text(frps_config(fmt, ports, plugin_addr, plugin_ops(version)))
    server = _Process([str(frps_bin), "-c", str(frps_file)], directory / "frps.log")
    frpcs: list[_Process] = []
    try:
        _wait_ready(server, ports)
        files = []
        for n, client in enumerate(clients):
            path = directory / f"frpc-{n:02d}.{fmt.value}"
            path.write_text(frpc_config(fmt, client, ports.bind))
            files.append(path)
        started = time.monotonic()
        for n, path in enumerate(files):
            frpcs.append(_Process([str(frpc_bin), "-c", str(path)], directory / f"frpc-{n:02d}.log"))
        while True:
            with contextlib.suppress(OSError, ValueError):
                if _registered(ports.api) >= expected:
                    return time.monotonic() - started
            exited = next((p for p in frpcs if p.proc.poll() is not None), None)
            if exited is not None:
                raise RuntimeError(f"{exited.log_path.name}: frpc exited:\n{exited.tail()}")
            if time.monotonic() - started > REGISTER_TIMEOUT_S:
                raise RuntimeError(
                    f"not all {expected} proxies online after {REGISTER_TIMEOUT_S:g}s:\n{server.tail()}"
                )
            time.sleep(POLL_INTERVAL_S)
    finally:
        for p in frpcs:
            p.stop()
        server.stop()


def scenario(rounds: int, log_dir: Path) -> list[dict[str, Any]]:
    """Each plugin setup in turn, `rounds` times; a skipped row (with why) without frp binaries."""
    found = binaries()
    if isinstance(found, str):
        print(f"frps: skipping: {found}", file=sys.stderr)
        return [{"scenario": SCENARIO, "subject": "real frps and frpc", "skipped": found}]
    frps_bin, frpc_bin = found
    version_text = subprocess.run(
        [str(frps_bin), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    version = parse_version(version_text)
    shown = str(version)
    print(f"frps: v{shown} ({config_format(version).value} configs)", file=sys.stderr)

    from benchmarks.run import baseline, policyd

    plugins = {
        "policyd, shipped policy": policyd(
            "frps policyd", fleet_policy(log_dir / "policies"), log_dir, "--log-level", "warning"
        ),
        "raw ASGI allow-all plugin": baseline("frps raw plugin", "raw", log_dir),
    }
    setups: dict[str, str | None] = {}
    times: dict[str, list[float]] = {label: [] for label in (*plugins, "no plugin")}
    try:
        for label, server in plugins.items():
            server.wait_ready()
            setups[label] = f"{LOOPBACK}:{server.port}"
        setups["no plugin"] = None
        order = list(setups)
        one_round(frps_bin, frpc_bin, version, setups[order[0]], log_dir / "frps-warmup")
        for r in range(rounds):
            for label in order[r % len(order) :] + order[: r % len(order)]:
                directory = log_dir / f"frps-{r}-{label.split(',')[0].replace(' ', '-')}"
                times[label].append(one_round(frps_bin, frpc_bin, version, setups[label], directory))
    finally:
        for server in plugins.values():
            server.stop()
    return rows(times, f"v{shown}")


def rows(times: dict[str, list[float]], version: str) -> list[dict[str, Any]]:
    raw = statistics.median(times["raw ASGI allow-all plugin"])
    return [
        {
            "scenario": f"{SCENARIO} (frp {version})",
            "subject": label,
            "seconds": round(statistics.median(values), 3),
            "time_vs_raw_plugin": round(statistics.median(values) / raw, 2),
            "rounds_seconds": [round(v, 3) for v in values],
        }
        for label, values in times.items()
    ]


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, float]]:
    row = next(
        (r for r in rows if r["scenario"].startswith(SCENARIO) and r["subject"].startswith("policyd")), None
    )
    if row is None:
        return []
    return [
        ("frps: time to register 220 proxies, policyd / raw plugin", row["time_vs_raw_plugin"], "<=", 1.1)
    ]
