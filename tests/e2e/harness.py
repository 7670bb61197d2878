"""policyd, real frps and real frpc together on loopback, plus the local services they expose.

The suite runs against whichever frp release FRPS_BIN/FRPC_BIN are (v0.33.0 and v0.70.0 before
each release): the version comes from `frps --version`, and each config is written in the form
that version reads, TOML from 0.52 (`[[httpPlugins]]` after every top-level key), INI before.
frps is ready when its ports accept, proxies when theirs do or their route answers; frpc's log is
read only for what frpc alone knows (a refusal's reason), with patterns that hold for both
releases. What policyd decided is read from its decision log, the same on every frps.

The parts without processes (config writers, version parsing, log patterns) are plain functions,
tested in tests/e2e/test_harness.py without binaries. Every process logs to a file in the
test's temp dir and is stopped by PID when the test ends; conftest.py attaches all those logs to
a failing test's report. Waits poll for real readiness, never a fixed sleep.
"""

from __future__ import annotations

import dataclasses
import http.server
import re
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from policyd.rules.decision import Op
from policyd.rules.schema import FrpsVersion
from policyd.tools.frpsconfig import (
    ConfigFormat,
    default_format,
    ops_for_version,
    render_ini,
    render_toml,
    version_in_output,
)
from tests.support import PolicydProcess, free_port, stop_process, write_policy

LOOPBACK = "127.0.0.1"  # everything binds here, never to another address
READY_TIMEOUT = 20.0  # seconds: generous, the 2-core machine runs other work too
POLL_INTERVAL = 0.05  # seconds between readiness checks
QUIET_PERIOD = 1.0  # seconds without a new event that count as "settled"
LOG_TAIL_LINES = 300  # per process, in a failure report
PLUGIN_NAME = "policyd"
HANDLER_PATH = "/handler"

T = TypeVar("T")


# -- versions ------------------------------------------------------------------------------------


def binary_version(binary: Path) -> FrpsVersion:
    done = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    return version_in_output(done.stdout + done.stderr)


def plugin_ops(version: FrpsVersion) -> list[Op]:
    """The ops the suite's frps asks policyd about: what `policyd frps-config` lists for it."""
    ops, _ = ops_for_version(list(Op), version, explicit=False)
    return ops


@dataclass(frozen=True)
class Proxy:
    """One frpc proxy, written in the form of the frpc it is for."""

    type: str
    local_port: int
    remote_port: int | None = None
    subdomain: str | None = None
    custom_domains: tuple[str, ...] = ()
    metas: Mapping[str, str] = field(default_factory=dict)

    def ini(self) -> dict[str, object]:
        options: dict[str, object] = {"type": self.type, "local_ip": LOOPBACK, "local_port": self.local_port}
        if self.remote_port is not None:
            options["remote_port"] = self.remote_port
        if self.subdomain is not None:
            options["subdomain"] = self.subdomain
        if self.custom_domains:
            options["custom_domains"] = list(self.custom_domains)
        options.update({f"meta_{k}": v for k, v in self.metas.items()})
        return options

    def toml(self, name: str) -> dict[str, object]:
        options: dict[str, object] = {
            "name": name,
            "type": self.type,
            "localIP": LOOPBACK,
            "localPort": self.local_port,
        }
        if self.remote_port is not None:
            options["remotePort"] = self.remote_port
        if self.subdomain is not None:
            options["subdomain"] = self.subdomain
        if self.custom_domains:
            options["customDomains"] = list(self.custom_domains)
        options.update({f"metadatas.{k}": v for k, v in self.metas.items()})
        return options


def tcp_proxy(local_port: int, remote_port: int) -> Proxy:
    return Proxy("tcp", local_port, remote_port=remote_port)


def http_proxy(local_port: int, *, subdomain: str | None = None, custom_domains: Sequence[str] = ()) -> Proxy:
    return Proxy("http", local_port, subdomain=subdomain, custom_domains=tuple(custom_domains))


@dataclass(frozen=True)
class FrpsSettings:
    bind_port: int
    vhost_http_port: int
    subdomain_host: str
    plugin_addr: str
    ops: Sequence[Op]


def frps_config(version: FrpsVersion, s: FrpsSettings) -> tuple[str, str]:
    """(file name, text) of frps's config for `version`: loopback only, policyd as its plugin."""
    if default_format(version) is ConfigFormat.TOML:
        top: dict[str, object] = {
            "bindAddr": LOOPBACK,
            "bindPort": s.bind_port,
            "proxyBindAddr": LOOPBACK,
            "vhostHTTPPort": s.vhost_http_port,
            "subDomainHost": s.subdomain_host,
            "log.disablePrintColor": True,
        }
        plugin = {
            "name": PLUGIN_NAME,
            "addr": s.plugin_addr,
            "path": HANDLER_PATH,
            "ops": [op.value for op in s.ops],
        }
        return "frps.toml", render_toml(top, {"httpPlugins": [plugin]})
    common: dict[str, object] = {
        "bind_addr": LOOPBACK,
        "bind_port": s.bind_port,
        "proxy_bind_addr": LOOPBACK,
        "vhost_http_port": s.vhost_http_port,
        "subdomain_host": s.subdomain_host,
        "disable_log_color": True,
    }
    plugin_section = {"addr": s.plugin_addr, "path": HANDLER_PATH, "ops": [op.value for op in s.ops]}
    return "frps.ini", render_ini({"common": common, f"plugin.{PLUGIN_NAME}": plugin_section})


@dataclass(frozen=True)
class FrpcSettings:
    server_port: int
    user: str
    metas: Mapping[str, str]
    admin_port: int
    proxies: Mapping[str, Proxy]
    heartbeat_interval: int | None = None  # seconds; None: frpc's default (none from 0.58)


def frpc_config(version: FrpsVersion, s: FrpcSettings) -> tuple[str, str]:
    """(file name, text) of frpc's config for `version`, with its admin API for `frpc reload`."""
    if default_format(version) is ConfigFormat.TOML:
        top: dict[str, object] = {"serverAddr": LOOPBACK, "serverPort": s.server_port}
        if s.user:
            top["user"] = s.user
        top["loginFailExit"] = True
        top.update({f"metadatas.{k}": v for k, v in s.metas.items()})
        if s.heartbeat_interval is not None:
            top["transport.heartbeatInterval"] = s.heartbeat_interval
        top.update(
            {"webServer.addr": LOOPBACK, "webServer.port": s.admin_port, "log.disablePrintColor": True}
        )
        proxies = [proxy.toml(name) for name, proxy in s.proxies.items()]
        return "frpc.toml", render_toml(top, {"proxies": proxies} if proxies else None)
    common: dict[str, object] = {"server_addr": LOOPBACK, "server_port": s.server_port}
    if s.user:
        common["user"] = s.user
    common["login_fail_exit"] = True
    common.update({f"meta_{k}": v for k, v in s.metas.items()})
    if s.heartbeat_interval is not None:
        common["heartbeat_interval"] = s.heartbeat_interval
    common.update({"admin_addr": LOOPBACK, "admin_port": s.admin_port, "disable_log_color": True})
    return "frpc.ini", render_ini({"common": common, **{name: p.ini() for name, p in s.proxies.items()}})


# -- what frpc prints (both releases) ------------------------------------------------------------


def proxy_label(user: str, proxy: str) -> str:
    """How frp names a proxy: prefixed with the client's user."""
    return f"{user}.{proxy}" if user else proxy


def login_refused(reason: str) -> re.Pattern[str]:
    """v0.33 `login to server failed: R`; v0.70 `login to the server failed: R. With loginFailExit…`."""
    return re.compile(rf"login to (?:the )?server failed: {re.escape(reason)}")


def login_succeeded() -> re.Pattern[str]:
    return re.compile(r"login to (?:the )?server success")


def proxy_refused(user: str, proxy: str, reason: str) -> re.Pattern[str]:
    """`[alice.ssh] start error: R` (frps's error text is the plugin's reason, on both releases).

    frpc names the proxy with its user's prefix or, in some releases' lines, without it.
    """
    prefix = f"(?:{re.escape(user)}\\.)?" if user else ""
    return re.compile(rf"\[{prefix}{re.escape(proxy)}\] start error: {re.escape(reason)}")


def pong_refused(reason: str) -> re.Pattern[str]:
    """v0.33 `Pong contains error: R`; v0.70 `pong message contains error: R`."""
    return re.compile(rf"(?i)pong (?:message )?contains error: {re.escape(reason)}")


# -- waiting -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = READY_TIMEOUT) -> T:
    """Poll until condition() is truthy and return it; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def wait_settled(count: Callable[[], int], what: str, quiet: float = QUIET_PERIOD) -> int:
    """Wait until count() has not changed for `quiet` seconds; return it."""
    last, since = count(), time.monotonic()
    deadline = since + READY_TIMEOUT
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never settled within {READY_TIMEOUT:.0f}s")
        time.sleep(POLL_INTERVAL)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2):
            return True
    except OSError:
        return False


def tcp_roundtrip(port: int, payload: bytes, *, source: str = LOOPBACK, timeout: float = 10) -> bytes:
    """Send payload to a loopback port from `source`; return what came back before EOF.

    b"" means the peer accepted and then cut the connection off (EOF or reset).
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout, source_address=(source, 0)) as sock:
        received = b""
        try:
            sock.sendall(payload)
            while len(received) < len(payload):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return received


def echoes(port: int) -> bool:
    """Whether a tcp proxy on `port` carries traffic to its echo service yet."""
    try:
        return tcp_roundtrip(port, b"ping", timeout=3) == b"ping"
    except OSError:
        return False


# -- processes -----------------------------------------------------------------------------------


class LoggedProcess:
    """A subprocess whose stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log_path.parent
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_mark(self) -> int:
        """An offset into logs(): pass it as `after` to wait only for lines logged from now on."""
        return len(self.logs())

    def wait_for_log(
        self, pattern: str | re.Pattern[str], *, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> None:
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern

        def logged() -> bool:
            if regex.search(self.logs()[after:]):
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before logging {regex.pattern!r}"
                )
            return False

        wait_until(logged, f"{self.name} to log {regex.pattern!r}", timeout)

    def wait_exit(self, timeout: float = READY_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s") from None

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class FrpServer(LoggedProcess):
    """frps with policyd as its plugin for every op its version sends, bound to loopback only."""

    def __init__(
        self,
        binary: Path,
        directory: Path,
        version: FrpsVersion,
        settings: FrpsSettings,
        *,
        config: tuple[str, str] | None = None,
    ) -> None:
        """`config` (file name, text) replaces the config written from `settings`."""
        self.version = version
        self.settings = settings
        name, text = config or frps_config(version, settings)
        self.config = directory / name
        self.config.write_text(text)
        super().__init__("frps", [str(binary), "-c", str(self.config)], directory / "frps.log")

    @property
    def bind_port(self) -> int:
        return self.settings.bind_port

    @property
    def vhost_http_port(self) -> int:
        return self.settings.vhost_http_port

    @property
    def subdomain_host(self) -> str:
        return self.settings.subdomain_host

    def wait_ready(self) -> FrpServer:
        """Ready when its ports accept: the log line that says so differs between releases."""
        ports = [self.bind_port] + ([self.vhost_http_port] if self.vhost_http_port else [])
        for port in ports:
            wait_until(partial(self._accepts, port), f"frps to accept on port {port}")
        return self

    def _accepts(self, port: int) -> bool:
        return self._alive() and port_accepts(port)

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"frps exited ({self.proc.returncode}) before accepting:\n{self.logs()}")
        return True

    def http_get(self, host: str) -> httpx.Response:
        """GET / through frps's vhost port with the given Host header."""
        with httpx.Client(timeout=10) as client:
            return client.get(f"http://{LOOPBACK}:{self.vhost_http_port}/", headers={"Host": host})

    def wait_http_route(self, host: str) -> httpx.Response:
        """Wait until frps routes `host` (a 200 from the local service), and return that answer."""

        def routed() -> httpx.Response | None:
            try:
                response = self.http_get(host)
            except httpx.TransportError:
                return None
            return response if response.status_code == 200 else None

        return wait_until(routed, f"frps to route Host {host}")


class FrpClient(LoggedProcess):
    """frpc with a user, client metadata and proxies; its admin API allows `frpc reload`."""

    def __init__(
        self,
        binary: Path,
        directory: Path,
        version: FrpsVersion,
        server: FrpServer,
        *,
        user: str,
        metas: Mapping[str, str],
        proxies: Mapping[str, Proxy],
        heartbeat_interval: int | None = None,
    ) -> None:
        self.binary = binary
        self.version = version
        self.user = user
        self.settings = FrpcSettings(
            server_port=server.bind_port,
            user=user,
            metas=dict(metas),
            admin_port=free_port(),
            proxies=dict(proxies),
            heartbeat_interval=heartbeat_interval,
        )
        name, text = frpc_config(version, self.settings)
        self.config = directory / name
        self.config.write_text(text)
        super().__init__("frpc", [str(binary), "-c", str(self.config)], directory / "frpc.log")

    def label(self, proxy: str) -> str:
        return proxy_label(self.user, proxy)

    def wait_proxy_refused(self, proxy: str, reason: str, *, after: int = 0) -> None:
        self.wait_for_log(proxy_refused(self.user, proxy, reason), after=after)

    def add_proxies(self, proxies: Mapping[str, Proxy]) -> None:
        """Register more proxies in the running session: rewrite the config, then `frpc reload`."""
        wait_until(partial(port_accepts, self.settings.admin_port), "frpc's admin API to accept")
        self.settings = dataclasses.replace(self.settings, proxies={**self.settings.proxies, **proxies})
        self.config.write_text(frpc_config(self.version, self.settings)[1])
        reload = subprocess.run(
            [str(self.binary), "reload", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert reload.returncode == 0, f"frpc reload failed: {reload.stdout}{reload.stderr}"

    def remove_proxies(self, names: Sequence[str]) -> None:
        """Close proxies of the running session: rewrite the config without them, `frpc reload`."""
        kept = {name: proxy for name, proxy in self.settings.proxies.items() if name not in names}
        self.settings = dataclasses.replace(self.settings, proxies={})
        self.add_proxies(kept)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True  # a connection left open must not keep the test run alive


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while chunk := self.request.recv(4096):
            self.request.sendall(chunk)


def _web_handler(body: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output for failures

    return Handler


class E2EStack:
    """What one test started: policyd, frps, frpc and local services; `close()` stops them all."""

    def __init__(self, directory: Path, frps_binary: Path, frpc_binary: Path, version: FrpsVersion) -> None:
        self.directory = directory
        self.frps_binary = frps_binary
        self.frpc_binary = frpc_binary
        self.version = version
        self.policies = directory / "policies"
        self.policyd: PolicydProcess | None = None
        self.frps: FrpServer | None = None
        self.frpcs: list[FrpClient] = []
        self._servers: list[socketserver.BaseServer] = []

    def require(self, since: FrpsVersion, what: str) -> None:
        """Skip the test, saying why, on a frp release before `since` (which lacks `what`)."""
        if self.version < since:
            pytest.skip(f"frp {self.version} has no {what} (it came in {since})")

    # -- policyd -------------------------------------------------------------------------------

    def start_policyd(self, files: Mapping[str, str]) -> PolicydProcess:
        """Write this test's policy directory and serve it."""
        write_policy(self.policies, files)
        self.policyd = PolicydProcess(self.policies, self.directory / "policyd.log")
        self.policyd.wait_ready(timeout=READY_TIMEOUT)
        return self.policyd

    def policy_version(self) -> str:
        assert self.policyd is not None
        return str(self.policyd.client.get("/readyz").json()["policy_version"])

    def edit_policy(self, files: Mapping[str, str]) -> None:
        """Change rule or data files in place and wait until policyd serves the new version."""
        before = self.policy_version()
        write_policy(self.policies, files)
        wait_until(lambda: self.policy_version() != before, f"policyd to reload after editing {list(files)}")

    def decisions(self, op: str | None = None, **match: object) -> list[dict[str, Any]]:
        """policyd's decision-log lines so far, of `op`, whose keys equal `match`."""
        assert self.policyd is not None
        return [
            line
            for line in self.policyd.decision_lines(timeout=0)
            if (op is None or line["op"] == op) and all(line.get(k) == v for k, v in match.items())
        ]

    def wait_decision(self, op: str, what: str = "", **match: object) -> dict[str, Any]:
        """The first decision-log line of `op` with `match`, once policyd has written one."""
        found = wait_until(lambda: self.decisions(op, **match), what or f"policyd to decide {op} {match}")
        return found[0]

    # -- frp -----------------------------------------------------------------------------------

    def frps_settings(self, *, subdomain_host: str = "e2e.test") -> FrpsSettings:
        """Fresh ports, policyd as the plugin for every op this frps sends."""
        assert self.policyd is not None, "start policyd first: frps fails every op it cannot ask about"
        return FrpsSettings(
            bind_port=free_port(),
            vhost_http_port=free_port(),
            subdomain_host=subdomain_host,
            plugin_addr=f"{LOOPBACK}:{self.policyd.port}",
            ops=plugin_ops(self.version),
        )

    def start_frps(
        self, settings: FrpsSettings | None = None, *, config: tuple[str, str] | None = None
    ) -> FrpServer:
        """Start frps (with `config` as its whole config file, when given) and wait for its ports."""
        self.frps = FrpServer(
            self.frps_binary, self.directory, self.version, settings or self.frps_settings(), config=config
        )
        return self.frps.wait_ready()

    def start_frpc(
        self,
        proxies: Mapping[str, Proxy],
        *,
        user: str = "alice",
        metas: Mapping[str, str] | None = None,
        heartbeat_interval: int | None = None,
    ) -> FrpClient:
        """Start frpc against this stack's frps; the caller waits for what it expects (login, proxies)."""
        assert self.frps is not None, "start frps first"
        directory = self.directory / f"frpc-{len(self.frpcs)}"
        directory.mkdir()
        client = FrpClient(
            self.frpc_binary,
            directory,
            self.version,
            self.frps,
            user=user,
            metas=metas or {},
            proxies=proxies,
            heartbeat_interval=heartbeat_interval,
        )
        self.frpcs.append(client)
        return client

    def wait_tcp_proxy(self, port: int) -> None:
        """Wait until a tcp proxy's remote port carries traffic to its echo service."""
        wait_until(partial(echoes, port), f"frps to carry traffic on port {port}")

    # -- local services behind the proxies -------------------------------------------------------

    def echo_server(self) -> int:
        """A TCP echo service on loopback; returns its port."""
        return self._serve(_EchoServer((LOOPBACK, 0), _EchoHandler))

    def web_server(self, body: bytes) -> int:
        """An HTTP service answering every GET with `body`; returns its port."""
        return self._serve(http.server.ThreadingHTTPServer((LOOPBACK, 0), _web_handler(body)))

    def _serve(self, server: socketserver.TCPServer) -> int:
        threading.Thread(
            target=server.serve_forever, name=f"e2e-{type(server).__name__}", daemon=True
        ).start()
        self._servers.append(server)
        return int(server.server_address[1])

    # -- reporting and teardown ------------------------------------------------------------------

    def log_files(self) -> Iterable[tuple[str, Path]]:
        if self.policyd is not None:
            yield "policyd", self.policyd.log_path
        if self.frps is not None:
            yield f"frps {self.version} ({self.frps.config.name})", self.frps.log_path
            yield f"frps config ({self.frps.config.name})", self.frps.config
        for index, client in enumerate(self.frpcs):
            yield f"frpc-{index}", client.log_path
            yield f"frpc-{index} config ({client.config.name})", client.config

    def log_sections(self) -> list[tuple[str, str]]:
        """(title, last lines) per process started, for a failure report; works after close()."""
        sections = []
        for name, path in self.log_files():
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            sections.append((f"{name} (last {len(lines)} lines)", "\n".join(lines) or "(empty)"))
        return sections

    def close(self) -> None:
        """Stop everything, clients first so frps and policyd see orderly goodbyes."""
        stops: list[Callable[[], None]] = [client.stop for client in self.frpcs]
        if self.frps is not None:
            stops.append(self.frps.stop)
        if self.policyd is not None:
            stops.append(self.policyd.stop)
        for server in self._servers:
            stops += [server.shutdown, server.server_close]
        errors = []
        for stop in stops:
            try:
                stop()
            except Exception as e:  # stop the rest anyway; report afterwards
                errors.append(e)
        if errors:
            raise RuntimeError(f"stopping the e2e stack failed: {errors}")
