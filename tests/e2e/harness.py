"""policyd, real frps and real frpc together on loopback, plus the local services they expose.

Every process logs to a file in the test's temp dir and is stopped by PID when the test ends;
conftest.py attaches all those logs to a failing test's report. Waits poll for real readiness
(a log line, a port that accepts, a new policy version), never a fixed sleep.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tests.support import PolicydProcess, free_port, stop_process, write_policy

LOOPBACK = "127.0.0.1"  # everything binds here, never to another address
READY_TIMEOUT = 20.0  # seconds: generous, the 2-core machine runs other work too
POLL_INTERVAL = 0.05  # seconds between readiness checks
LOG_TAIL_LINES = 300  # per process, in a failure report

T = TypeVar("T")
IniSections = Mapping[str, Mapping[str, object]]


def wait_until(condition: Callable[[], T], what: str, timeout: float = READY_TIMEOUT) -> T:
    """Poll until condition() is truthy and return it; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


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


def write_ini(path: Path, sections: IniSections) -> Path:
    """frp v0.33 reads legacy INI only; booleans become frp's true/false."""
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        for key, value in options.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


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

    def wait_for_log(self, text: str, *, after: int = 0, timeout: float = READY_TIMEOUT) -> None:
        def logged() -> bool:
            if text in self.logs()[after:]:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before logging {text!r}")
            return False

        wait_until(logged, f"{self.name} to log {text!r}", timeout)

    def wait_exit(self, timeout: float = READY_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s") from None

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class FrpServer(LoggedProcess):
    """frps with policyd as its plugin for every op v0.33 knows, bound to loopback only."""

    def __init__(self, binary: Path, directory: Path, policyd_port: int, *, subdomain_host: str) -> None:
        self.bind_port = free_port()
        self.vhost_http_port = free_port()
        self.subdomain_host = subdomain_host
        common = {
            "bind_addr": LOOPBACK,
            "bind_port": self.bind_port,
            "proxy_bind_addr": LOOPBACK,
            "vhost_http_port": self.vhost_http_port,
            "subdomain_host": subdomain_host,
            "disable_log_color": True,
        }
        plugin = {
            "addr": f"{LOOPBACK}:{policyd_port}",
            "path": "/handler",
            # No CloseProxy before frp v0.40; v0.33 sends NewWorkConn as op=Ping.
            "ops": "Login,NewProxy,Ping,NewWorkConn,NewUserConn",
        }
        config = write_ini(directory / "frps.ini", {"common": common, "plugin.policyd": plugin})
        super().__init__("frps", [str(binary), "-c", str(config)], directory / "frps.log")

    def wait_ready(self) -> FrpServer:
        self.wait_for_log("start frps success")
        for port in (self.bind_port, self.vhost_http_port):
            wait_until(partial(port_accepts, port), f"frps to accept on port {port}")
        return self


class FrpClient(LoggedProcess):
    """frpc with a user, client metadata (`meta_*`) and proxies; its admin API allows `reload`."""

    def __init__(
        self,
        binary: Path,
        directory: Path,
        server: FrpServer,
        *,
        user: str,
        metas: Mapping[str, str],
        proxies: IniSections,
    ) -> None:
        self.binary = binary
        self.user = user
        self.admin_port = free_port()
        self.common: dict[str, object] = {
            "server_addr": LOOPBACK,
            "server_port": server.bind_port,
            "user": user,
            **{f"meta_{key}": value for key, value in metas.items()},
            "heartbeat_interval": 1,
            "admin_addr": LOOPBACK,
            "admin_port": self.admin_port,
            "disable_log_color": True,
        }
        self.proxies = dict(proxies)
        self.config = write_ini(directory / "frpc.ini", {"common": self.common, **self.proxies})
        super().__init__("frpc", [str(binary), "-c", str(self.config)], directory / "frpc.log")

    def label(self, proxy: str) -> str:
        """How frp names a proxy in logs: prefixed with the client's user."""
        return f"{self.user}.{proxy}" if self.user else proxy

    def wait_proxy_started(self, proxy: str, *, after: int = 0) -> None:
        self.wait_for_log(f"[{self.label(proxy)}] start proxy success", after=after)

    def wait_proxy_refused(self, proxy: str, reason: str, *, after: int = 0) -> None:
        self.wait_for_log(f"[{self.label(proxy)}] start error: {reason}", after=after)

    def add_proxies(self, proxies: IniSections) -> None:
        """Register more proxies in the running session: rewrite the config, then `frpc reload`."""
        self.wait_for_log("admin server listen on")
        self.proxies.update(proxies)
        write_ini(self.config, {"common": self.common, **self.proxies})
        reload = subprocess.run(
            [str(self.binary), "reload", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert reload.returncode == 0, f"frpc reload failed: {reload.stdout}{reload.stderr}"


def tcp_proxy(local_port: int, remote_port: int) -> dict[str, object]:
    return {"type": "tcp", "local_ip": LOOPBACK, "local_port": local_port, "remote_port": remote_port}


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

    def __init__(self, directory: Path, frps_binary: Path, frpc_binary: Path) -> None:
        self.directory = directory
        self.frps_binary = frps_binary
        self.frpc_binary = frpc_binary
        self.policies = directory / "policies"
        self.policyd: PolicydProcess | None = None
        self.frps: FrpServer | None = None
        self.frpcs: list[FrpClient] = []
        self._servers: list[socketserver.BaseServer] = []

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

    # -- frp -----------------------------------------------------------------------------------

    def start_frps(self, *, subdomain_host: str = "e2e.test") -> FrpServer:
        assert self.policyd is not None, "start policyd first: frps fails every op it cannot ask about"
        self.frps = FrpServer(
            self.frps_binary, self.directory, self.policyd.port, subdomain_host=subdomain_host
        )
        return self.frps.wait_ready()

    def start_frpc(
        self,
        proxies: IniSections,
        *,
        user: str = "alice",
        metas: Mapping[str, str] | None = None,
    ) -> FrpClient:
        """Start frpc against this stack's frps; the caller waits for what it expects (login, proxies)."""
        assert self.frps is not None, "start frps first"
        directory = self.directory / f"frpc-{len(self.frpcs)}"
        directory.mkdir()
        client = FrpClient(
            self.frpc_binary, directory, self.frps, user=user, metas=metas or {}, proxies=proxies
        )
        self.frpcs.append(client)
        return client

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
            yield "frps", self.frps.log_path
        for index, client in enumerate(self.frpcs):
            yield f"frpc-{index}", client.log_path

    def log_sections(self) -> list[tuple[str, str]]:
        """(title, last lines) per process started, for a failure report; works after close()."""
        sections = []
        for name, path in self.log_files():
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            sections.append((f"{name} log (last {len(lines)} lines)", "\n".join(lines) or "(empty)"))
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
