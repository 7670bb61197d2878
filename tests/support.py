"""Shared test helpers: fixtures from ../shared, temporary policies, a real policyd subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = ROOT / "policies"


def _fixtures_dir() -> Path:
    env = os.environ.get("POLICYD_FIXTURES")
    if env:
        return Path(env)
    for candidate in (
        ROOT.parent / "shared" / "fixtures",
        ROOT.parent.parent / "shared" / "fixtures",
    ):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("frp fixtures not found: set POLICYD_FIXTURES or lay shared/ beside the repo")


FIXTURES = _fixtures_dir()


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

    def __init__(self, policies: Path, log_path: Path, *extra: str, env: Mapping[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [
            sys.executable,
            "-m",
            "policyd",
            "serve",
            "--policies",
            str(policies),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(
            [*args, *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)

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

    def post(self, body: Any, *, op: str | None = None, **kwargs: Any) -> httpx.Response:
        op = op or (body.get("op") if isinstance(body, dict) else None)
        params = {"op": op, "version": "0.1.0"} if op else {}
        if isinstance(body, dict | list):
            return self.client.post("/handler", params=params, json=body, **kwargs)
        return self.client.post("/handler", params=params, content=body, **kwargs)

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
