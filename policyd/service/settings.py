"""One flat, typed settings object: CLI flags, POLICYD_* environment variables and a TOML config
file all map onto its field names.

The field `decision_log_sample` is the flag `--decision-log-sample`, the variable
`POLICYD_DECISION_LOG_SAMPLE` and the config key `decision_log_sample`. Precedence: flag, then
environment, then config file, then the default written here (the only place defaults live).
Values arrive as strings (flags, environment) or as TOML values; one parser per field type turns
either into the typed value, so every source accepts the same spellings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from policyd.console.errors import ConsoleError
from policyd.console.tokens import read_tokens
from policyd.engine import EvalOptions
from policyd.errors import PolicydError, did_you_mean
from policyd.rules.decision import OPS, Op
from policyd.rules.sandbox import DEFAULT_EVAL_SECONDS, MAX_STEPS
from policyd.service.access import Network
from policyd.state.factory import check_spec, masked_url
from policyd.tools.history import DEFAULT_MAX_BYTES, DEFAULT_MAX_VERSIONS, MEMORY_MAX_VERSIONS
from policyd.tools.recording import KEY_MIN_BYTES, RecordingError, RecordKey

ENV_PREFIX = "POLICYD_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
CONSOLE_MODES = ("off", "read", "edit")
STATE_FAILURES = ("closed", "open")


class SettingsError(PolicydError):
    """Raised for a setting that does not parse or validate; the message names where it came from."""

    code = "settings_error"


def _doc(help: str, *, choices: tuple[str, ...] = (), metavar: str = "") -> Any:
    return {"help": help, "choices": choices, "metavar": metavar}


@dataclass(frozen=True)
class Settings:
    """Everything `policyd serve` can be told; defaults are the safe choice."""

    policies: Path = field(
        default=Path("policies"), metadata=_doc("Policy directory (rule files and data/).", metavar="DIR")
    )
    host: str = field(
        # Loopback: frps runs beside policyd and sends no credentials.
        default="127.0.0.1",
        metadata=_doc("Address to bind; keep loopback unless TLS and an allowlist protect it."),
    )
    port: int = field(default=9000, metadata=_doc("TCP port."))
    handler_path: str = field(default="/handler", metadata=_doc("Path frps POSTs to (frps `path`)."))
    fail_open_ops: frozenset[Op] = field(
        default=frozenset(),
        metadata=_doc("Ops that allow instead of reject when a rule errors, e.g. 'Ping,NewWorkConn'."),
    )
    # frps's largest messages (NewProxy with domains, headers, metas) are a few KiB. The edge's
    # defaults bound memory at max_connections x (max_body_bytes + max_header_bytes) = 68 MiB,
    # which fits a 256 Mi pod with room for a policy's data (SECURITY.md, benchmarks/edge.py).
    max_body_bytes: int = field(default=256 * 1024, metadata=_doc("Largest request body accepted (413)."))
    max_header_bytes: int = field(
        default=16 * 1024, metadata=_doc("Largest request line and headers accepted (431).")
    )
    max_connections: int = field(
        default=256,
        metadata=_doc("Connections served at once, per worker; one more is answered 503 and closed."),
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata=_doc("Seconds a client has to send a request's line and headers (408 and closed)."),
    )
    body_timeout_s: float = field(
        default=10.0, metadata=_doc("Seconds a client has to send a request's body (408 and closed).")
    )
    keep_alive_timeout_s: float = field(
        default=5.0, metadata=_doc("Seconds an idle kept-alive connection stays open.")
    )
    eval_budget_ms: float = field(
        default=DEFAULT_EVAL_SECONDS * 1000,
        metadata=_doc("Wall-clock budget for one decision, in milliseconds."),
    )
    max_steps: int = field(default=MAX_STEPS, metadata=_doc("Evaluation steps allowed for one decision."))
    log_level: str = field(default="info", metadata=_doc("Diagnostic log level.", choices=LOG_LEVELS))
    log_format: str = field(
        default="text", metadata=_doc("Diagnostic log format (on stderr).", choices=LOG_FORMATS)
    )
    decision_log: str = field(
        default="stdout",
        metadata=_doc("Where decision lines go: stdout, stderr, off, or a file path.", metavar="TARGET"),
    )
    decision_log_sample: Mapping[Op, float] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=_doc(
            "Fraction of plain allows logged per op, e.g. 'Ping=0.01,NewWorkConn=0.1' "
            "(rejects, rewrites, errors and warns are always logged); unset: every allow is logged.",
            metavar="OP=RATE,...",
        ),
    )
    tls_cert: Path | None = field(
        default=None, metadata=_doc("PEM certificate: serve HTTPS (frps addr https://...).", metavar="FILE")
    )
    tls_key: Path | None = field(
        default=None, metadata=_doc("PEM private key for --tls-cert.", metavar="FILE")
    )
    handler_allow: tuple[Network, ...] = field(
        default=(),
        metadata=_doc(
            "Addresses/CIDRs allowed to call the handler (403 otherwise); empty: any.", metavar="CIDRS"
        ),
    )
    admin_allow: tuple[Network, ...] = field(
        default=(),
        metadata=_doc(
            "Addresses/CIDRs allowed to read /status and /metrics and to use the console; empty: any.",
            metavar="CIDRS",
        ),
    )
    workers: int = field(default=1, metadata=_doc("Worker processes; each hot-reloads on its own."))
    shutdown_timeout_s: float = field(
        default=10.0, metadata=_doc("On SIGTERM, how long in-flight requests may take to finish, in seconds.")
    )
    reload_debounce_s: float = field(
        default=0.2, metadata=_doc("Quiet time after a change before reloading, in seconds.")
    )
    reload_max_wait_s: float = field(
        default=2.0,
        metadata=_doc(
            "Longest wait for a quiet time while changes keep coming: reload at least this often "
            "during a burst, in seconds."
        ),
    )
    reload_poll_s: float = field(
        default=5.0, metadata=_doc("Seconds between fingerprint polls backing up file events.")
    )
    console: str = field(
        default="off",
        metadata=_doc(
            "The web console at /ui (behind admin_allow): off, read, or edit (needs console_token_file).",
            choices=CONSOLE_MODES,
        ),
    )
    console_token_file: Path | None = field(
        default=None,
        metadata=_doc(
            "File of name:token lines: the bearer tokens that may save edits in the console.", metavar="FILE"
        ),
    )
    shadow_policies: Path | None = field(
        default=None,
        metadata=_doc(
            "A second policy directory that decides every request too, after the answer, loaded and "
            "hot-reloaded like --policies; disagreements go to the decision log and metrics, never "
            "to frps (docs/rollout.md).",
            metavar="DIR",
        ),
    )
    shadow_eval_budget_ms: float = field(
        default=5.0,
        metadata=_doc(
            "Wall-clock budget for one shadow decision, in milliseconds: the most it can hold up the "
            "serving thread; a shadow decision over it counts as agreement=error."
        ),
    )
    record_requests: Path | None = field(
        default=None,
        metadata=_doc(
            "Append every request and its answer to this JSON-lines file, for `policyd replay`; "
            "secrets replaced by a keyed hash (needs record_key_file). Off by default.",
            metavar="FILE",
        ),
    )
    record_key_file: Path | None = field(
        default=None,
        metadata=_doc(
            f"File holding the key (at least {KEY_MIN_BYTES} bytes) record_requests hashes secrets with.",
            metavar="FILE",
        ),
    )
    record_max_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=_doc("Bytes a recording file may reach before it is rotated (FILE.1, FILE.2, ...)."),
    )
    record_keep: int = field(
        default=3, metadata=_doc("Rotated recording files kept; the oldest beyond are deleted.")
    )
    history_dir: Path | None = field(
        default=None,
        metadata=_doc(
            "Keep every policy version that served here (files by sha256, an append-only index), "
            f"read by GET /versions and `policyd history`; unset: the last {MEMORY_MAX_VERSIONS} "
            "versions, in memory.",
            metavar="DIR",
        ),
    )
    history_max_versions: int = field(
        default=DEFAULT_MAX_VERSIONS,
        metadata=_doc("Versions history_dir keeps; the ones served least recently are pruned first."),
    )
    history_max_bytes: int = field(
        default=DEFAULT_MAX_BYTES,
        metadata=_doc("Bytes history_dir may hold (files and index); pruned as history_max_versions."),
    )
    state: str = field(
        default="memory",
        metadata=_doc(
            "Where state lives (proxies(), sessions(), rate()): 'memory' (this process) or "
            "'redis://[:password@]host:port/db' / 'unix:///path.sock' (shared by replicas).",
            metavar="SPEC",
        ),
    )
    state_failure: str = field(
        default="closed",
        metadata=_doc(
            "When the state backend cannot answer: 'closed' (a rule calling a state function "
            "errors, the op fails closed) or 'open' (it answers empty / under the limit).",
            choices=STATE_FAILURES,
        ),
    )
    state_timeout_ms: float = field(
        default=250.0, metadata=_doc("Timeout of every state backend call (and lock wait), in milliseconds.")
    )
    state_idle_s: float = field(
        default=120.0,
        metadata=_doc("A session with no live proxy ends after this long without an op of it, in seconds."),
    )
    state_pending_s: float = field(
        default=10.0,
        metadata=_doc("A Login's session ends after this long if frps never confirms it, in seconds."),
    )
    state_proxy_idle_s: float = field(
        default=0.0,
        metadata=_doc(
            "For frps < 0.40 (no CloseProxy): a proxy ends after its session sent no op for this "
            "long, in seconds; 0: proxies live until CloseProxy."
        ),
    )
    state_replica: str = field(
        default="",
        metadata=_doc(
            "This replica's id in shared state (keep it across restarts); empty: host name and port."
        ),
    )
    frps_api_url: str = field(
        default="",
        metadata=_doc(
            "frps's API (webServer), e.g. http://127.0.0.1:7500: state is reconciled with it; "
            "empty: state is best effort.",
            metavar="URL",
        ),
    )
    frps_api_user: str = field(default="", metadata=_doc("User for frps's API (basic auth)."))
    frps_api_password_file: Path | None = field(
        default=None, metadata=_doc("File holding the password for frps's API.", metavar="FILE")
    )
    frps_api_sync_s: float = field(
        default=60.0, metadata=_doc("Seconds between reconciliations with frps's API.")
    )

    def __post_init__(self) -> None:
        if not self.handler_path.startswith("/"):
            object.__setattr__(self, "handler_path", "/" + self.handler_path)

    @property
    def eval_options(self) -> EvalOptions:
        return EvalOptions(
            fail_open_ops=self.fail_open_ops,
            max_steps=self.max_steps,
            eval_seconds=self.eval_budget_ms / 1000,
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values in the spelling every source accepts: for /status and the workers.

        Secrets are given by file paths (TLS, frps's API), except a password in the `state`
        URL, which is masked: workers read the real one from `unmasked` (serve.py).
        """
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["state"] = masked_url(self.state)
        return out

    def unmasked(self) -> dict[str, Any]:
        """to_dict() with the state URL as given: for the worker processes only."""
        return {**self.to_dict(), "state": self.state}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(str(v) for v in value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): v for k, v in sorted(value.items())}
    return value


FIELDS: Mapping[str, dataclasses.Field[Any]] = MappingProxyType(
    {f.name: f for f in dataclasses.fields(Settings)}
)
DEFAULTS = Settings()


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- one parser per field type: each takes a string (flag, environment) or a TOML value -----------


def _items(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.replace(",", " ").split() if v.strip()]
    if isinstance(value, list | tuple):
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return [v.strip() for v in value if v.strip()]
    raise ValueError(f"expected a comma-separated string or a list, got {value!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _path(value: Any) -> Path:
    return Path(_str(value))


def _optional_path(value: Any) -> Path | None:
    return None if value is None or _str(value) == "" else Path(value)


def _op(name: str) -> Op:
    op = OPS.get(name)
    if op is None:
        hint = did_you_mean(name, OPS)
        raise ValueError(
            f"unknown op {name!r}{' (' + hint + ')' if hint else ''}; choose from {', '.join(OPS)}"
        )
    return op


def _ops(value: Any) -> frozenset[Op]:
    return frozenset(_op(n) for n in _items(value))


def _networks(value: Any) -> tuple[Network, ...]:
    out = []
    for item in _items(value):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _sampling(value: Any) -> Mapping[Op, float]:
    pairs: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        for item in _items(value):
            name, sep, rate = item.partition("=")
            if not sep:
                raise ValueError(f"expected OP=RATE, got {item!r}")
            pairs.append((name.strip(), rate.strip()))
    out: dict[Op, float] = {}
    for name, raw in pairs:
        number = _float(raw)
        if not 0 <= number <= 1:
            raise ValueError(f"rate for {name} must be between 0 and 1, got {number}")
        out[_op(name)] = number
    return MappingProxyType(out)


# The annotation (a string under `from __future__ import annotations`) picks the parser.
PARSERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "str": _str,
        "int": _int,
        "float": _float,
        "Path": _path,
        "Path | None": _optional_path,
        "frozenset[Op]": _ops,
        "tuple[Network, ...]": _networks,
        "Mapping[Op, float]": _sampling,
    }
)
PATH_FIELDS = frozenset(name for name, f in FIELDS.items() if str(f.type).startswith("Path"))


@dataclass(frozen=True, slots=True)
class Layer:
    """Raw values from one source; `where(name)` says how an operator would spell that setting."""

    source: str  # "config" | "env" | "flag"
    values: Mapping[str, Any]
    origin: str = ""  # the config file's path

    def where(self, name: str) -> str:
        if self.source == "env":
            return f"environment variable {env_name(name)}"
        if self.source == "flag":
            return f"option {flag_name(name)}"
        return f"{self.origin}: {name}"


def parse_value(name: str, raw: Any) -> Any:
    """Parse one raw value for field `name`; raise ValueError saying what was expected."""
    f = FIELDS[name]
    value = PARSERS[str(f.type)](raw)
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def read_config_file(path: Path) -> Layer:
    """A TOML file of `name = value` lines; relative paths in it are relative to the file."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"config file {path}: cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"config file {path}: invalid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in FIELDS:
            hint = did_you_mean(key, FIELDS)
            raise SettingsError(f"{path}: unknown setting {key!r}{' (' + hint + ')' if hint else ''}")
        if key in PATH_FIELDS and isinstance(value, str) and value:
            value = str(path.parent / value)
        values[key] = value
    return Layer("config", values, str(path))


def build_settings(layers: Iterable[Layer]) -> Settings:
    """Settings from the defaults overlaid by each layer in turn (later layers win)."""
    chosen: dict[str, Any] = {}
    for layer in layers:
        for name, raw in layer.values.items():
            try:
                chosen[name] = parse_value(name, raw)
            except ValueError as e:
                raise SettingsError(f"{layer.where(name)}: {e}") from None
    settings = Settings(**chosen)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    problems = []
    if not 0 <= s.port <= 65535:
        problems.append(f"port {s.port} is outside 0-65535")
    if (s.tls_cert is None) != (s.tls_key is None):
        problems.append("tls_cert and tls_key go together: give both or neither")
    if s.workers < 1:
        problems.append(f"workers must be at least 1, got {s.workers}")
    for name in ("max_body_bytes", "max_header_bytes", "max_connections"):
        if getattr(s, name) < 1:
            problems.append(f"{name} must be positive, got {getattr(s, name)}")
    for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
        if getattr(s, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(s, name)}")
    if s.reload_max_wait_s < s.reload_debounce_s:
        problems.append(
            f"reload_max_wait_s ({s.reload_max_wait_s}) must be at least reload_debounce_s "
            f"({s.reload_debounce_s})"
        )
    if s.eval_budget_ms <= 0:
        problems.append(f"eval_budget_ms must be positive, got {s.eval_budget_ms}")
    if s.shadow_eval_budget_ms <= 0:
        problems.append(f"shadow_eval_budget_ms must be positive, got {s.shadow_eval_budget_ms}")
    if s.shadow_policies is not None and not s.shadow_policies.is_dir():
        problems.append(f"shadow_policies {s.shadow_policies} is not a directory")
    if s.record_requests is not None:
        if s.record_key_file is None:
            problems.append("record_requests needs record_key_file: secrets are hashed with its key")
        else:
            try:
                RecordKey.from_file(s.record_key_file)
            except RecordingError as e:
                problems.append(f"record_key_file: {e}")
    if s.record_max_bytes < MIN_RECORD_BYTES:
        problems.append(f"record_max_bytes must be at least {MIN_RECORD_BYTES}, got {s.record_max_bytes}")
    if s.record_keep < 0:
        problems.append(f"record_keep must be 0 or more, got {s.record_keep}")
    if s.history_max_versions < 1:
        problems.append(f"history_max_versions must be at least 1, got {s.history_max_versions}")
    if s.history_max_bytes < 1:
        problems.append(f"history_max_bytes must be positive, got {s.history_max_bytes}")
    try:
        check_spec(s.state)
    except ValueError as e:
        problems.append(f"state: {e}")
    if s.state_timeout_ms <= 0:
        problems.append(f"state_timeout_ms must be positive, got {s.state_timeout_ms}")
    if s.state_idle_s <= 0 or s.state_pending_s <= 0 or s.state_proxy_idle_s < 0:
        problems.append("state_idle_s and state_pending_s must be positive, state_proxy_idle_s at least 0")
    if s.frps_api_sync_s <= 0:
        problems.append(f"frps_api_sync_s must be positive, got {s.frps_api_sync_s}")
    if s.frps_api_url and not s.frps_api_url.startswith(("http://", "https://")):
        problems.append(f"frps_api_url must start with http:// or https://, got {s.frps_api_url!r}")
    if s.handler_path in RESERVED_PATHS or s.handler_path.startswith((CONSOLE_PATH + "/", "/versions/")):
        problems.append(f"handler_path {s.handler_path} is one of policyd's own endpoints")
    if s.console == "edit" and s.console_token_file is None:
        problems.append("console = edit needs console_token_file (a file of name:token lines)")
    if s.console == "edit" and s.console_token_file is not None:
        try:
            read_tokens(s.console_token_file)
        except ConsoleError as e:
            problems.append(f"console_token_file {e}")
    if problems:
        raise SettingsError("; ".join(problems))


MIN_RECORD_BYTES = 8192  # the smallest record_max_bytes
CONSOLE_PATH = "/ui"
RESERVED_PATHS = frozenset(
    {"/healthz", "/readyz", "/status", "/metrics", "/state", "/versions", CONSOLE_PATH}
)
