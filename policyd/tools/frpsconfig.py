"""`policyd frps-config`: the frps plugin snippet that points frps at this policyd.

By default it lists the ops that have a rule file: an op without one is allowed unchanged anyway,
so frps need not ask, and Ping, NewWorkConn and NewUserConn are hot paths worth not sending.
TOML is for frps >= 0.52; INI for older frps (which has no CloseProxy before 0.40).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from policyd.errors import PolicydError
from policyd.policy import RULES_SUFFIX
from policyd.rules.decision import Op

DEFAULT_NAME = "policyd"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PLAIN = re.compile(r"[^\s#;\"'=\[\]]+")  # survives both formats without quoting surprises


class FrpsConfigError(PolicydError):
    """Raised when there is nothing to print, or a value frps could not read back."""

    code = "frps_config_error"


class ConfigFormat(enum.StrEnum):
    TOML = "toml"  # frps >= 0.52: [[httpPlugins]]
    INI = "ini"  # legacy frps: [plugin.NAME]


def reachable_addr(host: str, port: int, *, tls: bool = False) -> str:
    """frps's `addr` for a policyd bound to host:port; a wildcard bind is reached on loopback."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        shown = host  # a host name
    else:
        if ip.is_unspecified:
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        shown = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{'https://' if tls else ''}{shown}:{port}"


def ops_with_rules(directory: Path) -> list[Op]:
    """The ops that have a rule file in `directory`, in frps's order."""
    present = {p.stem for p in directory.glob(f"*{RULES_SUFFIX}") if p.is_file()}
    return [op for op in Op if op.value in present]


def render(ops: Iterable[Op], *, addr: str, path: str, name: str = DEFAULT_NAME, fmt: ConfigFormat) -> str:
    """The snippet, in README.md's shape; raises FrpsConfigError for a value frps could not read back."""
    wanted = set(ops)
    chosen = [op for op in Op if op in wanted]  # frps's order, no duplicates
    if not chosen:
        raise FrpsConfigError("no ops to send to policyd")
    if not _NAME.fullmatch(name):
        raise FrpsConfigError(f"plugin name {name!r} may use letters, digits, '_', '.', '-' only")
    for what, value in (("addr", addr), ("path", path)):
        if not _PLAIN.fullmatch(value):
            raise FrpsConfigError(
                f"{what} {value!r} must be one word without quotes, '#', ';', '=' or brackets"
            )
    if not path.startswith("/"):
        path = "/" + path
    if fmt is ConfigFormat.TOML:
        return "\n".join(
            [
                "[[httpPlugins]]",
                f"name = {json.dumps(name)}",
                f"addr = {json.dumps(addr)}",
                f"path = {json.dumps(path)}",
                f"ops = [{', '.join(json.dumps(op.value) for op in chosen)}]",
            ]
        )
    return "\n".join(
        [
            f"[plugin.{name}]",
            f"addr = {addr}",
            f"path = {path}",
            f"ops = {','.join(op.value for op in chosen)}",
        ]
    )


def frps_config(
    policies: Path,
    out: TextIO,
    *,
    fmt: ConfigFormat = ConfigFormat.TOML,
    addr: str,
    path: str,
    ops: Iterable[Op] | None = None,
    name: str = DEFAULT_NAME,
) -> str:
    """`policyd frps-config`: write the snippet for `ops` (default: those with a rule file).

    Raises FrpsConfigError when there is nothing to send or a value cannot be written.
    """
    chosen = list(ops) if ops else ops_with_rules(policies)
    if not chosen:
        raise FrpsConfigError(
            f"no rule files in {policies}: frps has nothing to ask policyd; name them with --ops"
        )
    snippet = render(chosen, addr=addr, path=path, name=name, fmt=fmt)
    out.write(snippet + "\n")
    return snippet
