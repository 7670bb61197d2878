"""`policyd frps-config`: the frps plugin snippet that points frps at this policyd.

By default it lists the ops that have a rule file: an op without one is allowed unchanged anyway,
so frps need not ask, and Ping, NewWorkConn and NewUserConn are hot paths worth not sending.
With `--frps-version` it writes for that frps, from the schema's version facts: only the ops it
sends (no CloseProxy before 0.40; no NewWorkConn before 0.46.1, which sends work connections as
op=Ping to Ping plugins, so listing it only doubles the Ping calls), in the format it reads
(TOML from 0.52, INI before), with warnings for the traps (no heartbeats by default from 0.58;
NewUserConn not fired for http, udp or xtcp visitors). Without it, TOML is written for the
newest tested frps and INI for the oldest.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from policyd.errors import PolicydError
from policyd.policy import RULES_SUFFIX
from policyd.rules.decision import Op
from policyd.rules.schema import (
    HEARTBEATS_OFF_BY_DEFAULT_SINCE,
    HTTPS_PLUGIN_ADDR_SINCE,
    NEW_WORK_CONN_OWN_OP_SINCE,
    OP_FACTS,
    PLUGINS_SINCE,
    TESTED_VERSIONS,
    TOML_CONFIG_SINCE,
    FrpsVersion,
    op_sent_by,
)

DEFAULT_NAME = "policyd"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PLAIN = re.compile(r"[^\s#;\"'=\[\]]+")  # survives both formats without quoting surprises


class FrpsConfigError(PolicydError):
    """Raised when there is nothing to print, a value frps could not read back, or one the
    frps version asked for cannot take."""

    code = "frps_config_error"


class ConfigFormat(enum.StrEnum):
    TOML = "toml"  # frps >= 0.52: [[httpPlugins]]
    INI = "ini"  # legacy frps: [plugin.NAME]


# Without --frps-version: TOML is for the newest tested frps, INI for the oldest.
ASSUMED_VERSION = {ConfigFormat.TOML: TESTED_VERSIONS[-1], ConfigFormat.INI: TESTED_VERSIONS[0]}


@dataclass(frozen=True, slots=True)
class Snippet:
    """What `frps-config` wrote, for which frps, and what the operator must know about it."""

    text: str
    ops: tuple[Op, ...]
    version: FrpsVersion
    warnings: tuple[str, ...]


_VERSION_IN_OUTPUT = re.compile(r"\bv?(\d+\.\d+\.\d+)\b")


def version_in_output(output: str) -> FrpsVersion:
    """The release `frps --version` / `frpc --version` printed ("0.33.0", "frps version v0.70.0");
    ValueError when there is none."""
    match = _VERSION_IN_OUTPUT.search(output)
    if match is None:
        raise ValueError(f"no frp version in {output.strip()[:200]!r}")
    return FrpsVersion.parse(match.group(1))


def default_format(version: FrpsVersion) -> ConfigFormat:
    return ConfigFormat.TOML if version >= TOML_CONFIG_SINCE else ConfigFormat.INI


def ops_for_version(
    requested: Iterable[Op], version: FrpsVersion, *, explicit: bool
) -> tuple[list[Op], list[str]]:
    """The ops to list for frps `version`, and the warnings that go with them.

    `explicit` ops (named by --ops) that `version` does not know are an error (FrpsConfigError);
    ops that only have a rule file are left out, with a warning.
    """
    if version < PLUGINS_SINCE:
        raise FrpsConfigError(f"frps {version} has no server plugins (they came in {PLUGINS_SINCE})")
    chosen: list[Op] = []
    warnings: list[str] = []
    for op in sorted(set(requested), key=list(Op).index):
        if not op_sent_by(op, version):
            since = OP_FACTS[op].since
            if explicit:
                raise FrpsConfigError(f"frps {version} does not know the op {op} (it came in {since})")
            warnings.append(f"{op}.rules never run on frps {version}: {op} came in {since}; left out")
            continue
        if op is Op.NEW_WORK_CONN and version < NEW_WORK_CONN_OWN_OP_SINCE:
            trap = (
                f"frps {version} sends work connections as op=Ping, and only to Ping plugins "
                f"(op=NewWorkConn from {NEW_WORK_CONN_OWN_OP_SINCE}): NewWorkConn.rules never run, "
                "and NewWorkConn in ops only makes frps ask twice per heartbeat"
            )
            if not explicit:
                warnings.append(f"{trap}; left out")
                continue
            warnings.append(trap)
        chosen.append(op)
    if Op.PING in chosen and version >= HEARTBEATS_OFF_BY_DEFAULT_SINCE:
        warnings.append(
            f"frpc sends no heartbeats by default from {HEARTBEATS_OFF_BY_DEFAULT_SINCE} (tcpMux is on): "
            "Ping rules run only for clients that set transport.heartbeatInterval"
        )
    if Op.NEW_USER_CONN in chosen:
        warnings.append(
            "frps asks NewUserConn for tcp and stcp visitors, not for http, udp or xtcp ones: "
            "NewUserConn rules (blocked networks) do not protect those proxies"
        )
    return chosen, warnings


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


# -- frp config files: frps's and frpc's, in either format (also for the e2e suite and benchmarks) --

Options = Mapping[str, object]
_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_lines(options: Options) -> list[str]:
    lines = []
    for key, value in options.items():
        if not _TOML_KEY.fullmatch(key):
            raise ValueError(f"not a bare or dotted TOML key: {key!r}")
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def render_toml(top: Options, tables: Mapping[str, Sequence[Options]] | None = None) -> str:
    """frp's TOML (v0.52+): top-level keys (dotted ones as `auth.token`), then arrays of tables
    (`[[proxies]]`, `[[httpPlugins]]`).

    Every top-level key comes first: TOML reads a key after `[[x]]` as part of that table.
    """
    lines = _toml_lines(top)
    for name, entries in (tables or {}).items():
        for entry in entries:
            lines += [*([""] if lines else []), f"[[{name}]]", *_toml_lines(entry)]
    return "\n".join(lines) + "\n"


def render_ini(sections: Mapping[str, Options]) -> str:
    """frp's legacy INI: `[section]` and `key = value`; booleans as frp's true/false, lists
    comma-joined."""
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        for key, value in options.items():
            if isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, list | tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


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
    names = [op.value for op in chosen]
    if fmt is ConfigFormat.TOML:
        plugin = {"name": name, "addr": addr, "path": path, "ops": names}
        return render_toml({}, {"httpPlugins": [plugin]}).rstrip("\n")
    return render_ini({f"plugin.{name}": {"addr": addr, "path": path, "ops": names}}).rstrip("\n")


def _format_warnings(fmt: ConfigFormat, version: FrpsVersion, addr: str) -> list[str]:
    """Errors (FrpsConfigError) and warnings about the format and address for frps `version`."""
    warnings = []
    if fmt is ConfigFormat.TOML and version < TOML_CONFIG_SINCE:
        raise FrpsConfigError(f"frps {version} reads INI only (TOML from {TOML_CONFIG_SINCE}): use --ini")
    if fmt is ConfigFormat.INI and version >= TOML_CONFIG_SINCE:
        warnings.append(
            f"frps {version} still reads INI but deprecates it (a warning at start); --toml is its format"
        )
    if addr.startswith("https://"):
        if version < HTTPS_PLUGIN_ADDR_SINCE:
            raise FrpsConfigError(
                f"frps {version} cannot call https:// plugins (from {HTTPS_PLUGIN_ADDR_SINCE})"
            )
        verify = "tlsVerify = true" if fmt is ConfigFormat.TOML else "tls_verify = true"
        warnings.append(f"frps does not verify policyd's certificate unless the plugin sets {verify}")
    return warnings


def frps_config(
    policies: Path,
    out: TextIO,
    *,
    fmt: ConfigFormat | None = None,
    addr: str,
    path: str,
    ops: Iterable[Op] | None = None,
    name: str = DEFAULT_NAME,
    version: FrpsVersion | None = None,
) -> Snippet:
    """`policyd frps-config`: write the snippet for `ops` (default: those with a rule file).

    `fmt` defaults to what frps `version` reads; `version` defaults to ASSUMED_VERSION of the
    format (TOML without either). Raises FrpsConfigError when there is nothing to send, a value
    cannot be written, or frps `version` cannot take it.
    """
    if fmt is None:
        fmt = default_format(version) if version is not None else ConfigFormat.TOML
    assumed = version is None
    if version is None:
        version = ASSUMED_VERSION[fmt]
    explicit = list(ops) if ops else []
    requested = explicit or ops_with_rules(policies)
    if not requested:
        raise FrpsConfigError(
            f"no rule files in {policies}: frps has nothing to ask policyd; name them with --ops"
        )
    warnings = _format_warnings(fmt, version, addr)
    chosen, op_warnings = ops_for_version(requested, version, explicit=bool(explicit))
    if not chosen:
        raise FrpsConfigError(
            f"frps {version} sends none of the ops with rule files here; name them with --ops"
        )
    if assumed and fmt is ConfigFormat.INI:
        warnings.insert(
            0, f"--ini without --frps-version: written for frps {version}; pass --frps-version for yours"
        )
    snippet = render(chosen, addr=addr, path=path, name=name, fmt=fmt)
    out.write(snippet + "\n")
    return Snippet(snippet, tuple(chosen), version, tuple(warnings + op_warnings))
