"""Shared test helpers: request fixtures, temporary policies, a real policyd subprocess."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from policyd.engine import EvalOptions
from tests.oracle import checked_client

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = ROOT / "policies"
# For tests that compare decisions and need no time limit: the default budget (0.1 s of the
# deciding thread's CPU) can be spent by a garbage collection or a descheduled thread on a busy
# machine, and the comparison would then fail for a reason that is not the test's. The budget's
# clock has tests of its own that set it explicitly.
UNTIMED = EvalOptions(eval_seconds=60.0)


# The project's own copy of frps's request bodies (from shared/fixtures, byte for byte): the
# suite runs in any clone, with nothing beside it.
FIXTURES = ROOT / "tests" / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    """A request body exactly as frps sends it, e.g. fixture("NewProxy-tcp")."""
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def write_policy(directory: Path, files: Mapping[str, str]) -> Path:
    """Write {relative path: text} under directory (data files under "data/...")."""
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PolicydProcess:
    """`policyd serve` in a subprocess on a free loopback port; logs kept in a file."""

    def __init__(
        self,
        policies: Path | None,
        log_path: Path,
        *extra: str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        port_flag: bool = True,
        tls_ca: Path | None = None,
        prefix: Sequence[str] = (),
    ):
        """`port_flag=False` leaves the port to POLICYD_PORT or a config file (pass `port`);
        `policies=None` leaves the directory to them too; `tls_ca` makes the client speak HTTPS;
        `prefix` is a command that runs policyd (it ends with `exec "$@"` or the like)."""
        self.port = port or free_port()
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [*prefix, sys.executable, "-m", "policyd", "serve"]
        if policies is not None:
            args += ["--policies", str(policies)]
        if port_flag:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*args, *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
        )
        # Every plugin answer it gets is checked by the frps oracle (tests/oracle.py).
        self.client = checked_client(base_url=self.url, timeout=10, verify=self.verify)

    def wait_ready(self, timeout: float = 15) -> PolicydProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"policyd exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"policyd not ready after {timeout}s:\n{self.logs()}")

    def post(
        self, body: Any, *, op: str | None = None, path: str = "/handler", **kwargs: Any
    ) -> httpx.Response:
        op = op or (body.get("op") if isinstance(body, dict) else None)
        params = {"op": op, "version": "0.1.0"} if op else {}
        if isinstance(body, dict | list):
            return self.client.post(path, params=params, json=body, **kwargs)
        return self.client.post(path, params=params, content=body, **kwargs)

    def decision_lines(self, count: int = 0, timeout: float = 10) -> list[dict[str, Any]]:
        """Decision-log lines the process printed (its stdout and stderr share the log file), once
        there are at least `count`: the log writes its lines in batches, within a moment."""
        deadline = time.monotonic() + timeout
        while len(lines := decision_lines(self.logs())) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return lines

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if text in logs[after:]:
                return logs
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not logged within {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)
        self._log.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s: every process a test starts is gone when it ends."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def decision_lines(text: str) -> list[dict[str, Any]]:
    """The decision-log entries among `text`'s lines (JSON objects with a policy_version).

    Only whole lines count: the last piece, after the final newline, may be half written.
    """
    out = []
    for line in text.split("\n")[:-1]:
        if line.startswith("{"):
            doc = json.loads(line)
            if "policy_version" in doc:
                out.append(doc)
    return out
