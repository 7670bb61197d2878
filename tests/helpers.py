"""Helpers the test modules share: small policies decided in-process, metrics read from a
scrape, waiting for a condition, what the shipped policy answers to each request fixture, and
every error class of the package."""

from __future__ import annotations

import importlib
import pkgutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import policyd
from policyd.engine import EvalOptions, decide
from policyd.errors import PolicydError, PolicyError, PolicyLoadError
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Decision, Op
from tests.support import write_policy


def policy_of(files: Mapping[str, str]) -> Policy:
    with tempfile.TemporaryDirectory() as tmp:
        return load_policy(write_policy(Path(tmp), files))


def load_errors(files: Mapping[str, str]) -> list[PolicyError]:
    with pytest.raises(PolicyLoadError) as info:
        policy_of(files)
    return info.value.errors


def run(
    rules: str,
    content: dict[str, Any],
    op: Op = Op.NEW_PROXY,
    data: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Decision:
    files = {f"{op.value}.rules": rules, **{f"data/{k}": v for k, v in (data or {}).items()}}
    options = kwargs.pop("options", EvalOptions())
    return decide(policy_of(files), op, content, options=options, **kwargs)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{name}{labels} not in metrics")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(0.05)


REJECT, ALLOW = "reject", "allow"

# What the shipped policy answers to each request fixture:
# fixture → (outcome, reason or {field: new value} for rewrites)
SHIPPED_ANSWERS: dict[str, tuple[str, Any]] = {
    "CloseProxy-basic": (ALLOW, ""),
    "CloseProxy-frps070-captured": (ALLOW, ""),
    # Only alice's fixtures carry a token (hers, "tk-alice"): every other client is nobody.
    "Login-anonymous": (REJECT, "login needs a user and metadatas.token"),
    "Login-basic": (ALLOW, ""),
    "Login-frps033-captured": (REJECT, "login needs a user and metadatas.token"),
    "Login-frps070-captured": (REJECT, "login needs a user and metadatas.token"),
    "Login-reconnect": (REJECT, "login needs a user and metadatas.token"),
    "NewProxy-frps033-captured": (REJECT, "unknown user or bad token"),
    "NewProxy-frps070-captured": (REJECT, "unknown user or bad token"),
    "NewProxy-future-field": ("rewrite", {"metas": {"team": "red"}}),
    "NewProxy-http-group": (REJECT, "unknown user or bad token"),
    "NewProxy-http": (
        REJECT,
        "custom domains must be red.example.com or end in .red.example.com (asked for web.example.com)",
    ),
    "NewProxy-https": (
        REJECT,
        "custom domains must be red.example.com or end in .red.example.com "
        "(asked for secure.example.com, www.secure.example.com)",
    ),
    "NewProxy-no-user": (REJECT, "unknown user or bad token"),
    "NewProxy-stcp": (REJECT, 'allow_users = "*" is not allowed'),
    "NewProxy-tcp-any-port": (REJECT, "tcp/udp ports for team red are 6000-6999 (asked for 0)"),
    "NewProxy-tcp": ("rewrite", {"metas": {"owner": "alice", "team": "red"}}),
    "NewProxy-tcpmux": (
        REJECT,
        "custom domains must be red.example.com or end in .red.example.com (asked for mux.example.com)",
    ),
    "NewProxy-udp-bandwidth": ("rewrite", {"metas": {"team": "red"}}),
    "NewUserConn-frps033-captured": (ALLOW, ""),
    "NewUserConn-frps070-captured": (ALLOW, ""),
    "NewUserConn-https": (ALLOW, ""),
    "NewUserConn-tcp": (REJECT, "visitors from 198.51.100.23 are blocked"),
    "NewWorkConn-basic": (ALLOW, ""),
    "NewWorkConn-frps070-captured": (REJECT, "unknown user or bad token"),
    "Ping-basic": (ALLOW, ""),
    "Ping-frps033-captured": (REJECT, "unknown user or bad token"),
    "Ping-frps070-captured": (REJECT, "unknown user or bad token"),
}


def error_classes() -> list[type[PolicydError]]:
    """Every PolicydError class of the package (all modules imported first)."""
    for module in pkgutil.walk_packages(policyd.__path__, "policyd."):
        if module.name != "policyd.__main__":
            importlib.import_module(module.name)
    found: list[type[PolicydError]] = []
    stack: list[type[PolicydError]] = [PolicydError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and a Content-Length body), leaving the connection open."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
    head, body = out.split(b"\r\n\r\n", 1)
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if b"content-length:" in line.lower()]
    length = int(lengths[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
