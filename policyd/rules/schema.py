"""What frps sends for each op: field names, kinds, zero values, Go types and frps versions.

"Missing means empty": frps omits zero-valued fields (newer versions) or sends `null` (older ones),
so every schema field reads as its kind's zero value when absent or null. Field names come from
frp's `pkg/msg/msg.go` and `pkg/plugin/server/types.go` (see shared/frp-plugin-protocol.md).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from policyd.rules.decision import Op


class Kind(enum.Enum):
    """The JSON shape of a field, which fixes its zero value and what `set` may assign to it."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    STR_LIST = "list of strings"
    STR_MAP = "map of strings"
    RECORD = "object"

    @property
    def phrase(self) -> str:
        """The kind with its article, for messages: "an integer", "a string"."""
        return ("an " if self.value[0] in "aeiou" else "a ") + self.value


class GoType(enum.Enum):
    """The Go type frps decodes a field into (`encoding/json`): what a rewritten value must fit."""

    STRING = "string"
    BOOL = "bool"
    INT = "int"  # the platform's int: 64 bits on the 64-bit builds frps ships for servers
    INT64 = "int64"
    STRING_SLICE = "[]string"
    STRING_MAP = "map[string]string"
    STRUCT = "struct"


_GO_OF_KIND = {
    Kind.STR: GoType.STRING,
    Kind.INT: GoType.INT,
    Kind.BOOL: GoType.BOOL,
    Kind.STR_LIST: GoType.STRING_SLICE,
    Kind.STR_MAP: GoType.STRING_MAP,
    Kind.RECORD: GoType.STRUCT,
}


class FrpsVersion(NamedTuple):
    """A frps release, compared as numbers: FrpsVersion.parse("v0.52.1") < FrpsVersion(0, 58, 0)."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> FrpsVersion:
        """ "0.33.0", "v0.70.0" or "0.52" (patch 0); ValueError for anything else."""
        match = _VERSION.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a frps version: {text!r} (expected e.g. 0.52.0)")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


_VERSION = re.compile(r"v?(\d{1,4})\.(\d{1,4})(?:\.(\d{1,4}))?")


def _v(text: str) -> FrpsVersion:
    return FrpsVersion.parse(text)


# frps's server plugins (Login and NewProxy) appeared in v0.31.0: nothing older asks a plugin.
PLUGINS_SINCE = _v("0.31.0")
# The versions the end-to-end suite is run against before a release; test helpers check every
# answer policyd gives against frps's decoder of each (policyd/frpsdecoder.py).
TESTED_VERSIONS = (_v("0.33.0"), _v("0.70.0"))


@dataclass(frozen=True, slots=True)
class Field:
    """One content field: its JSON shape, its Go type in frps, and which frps versions send it.

    `since` is the first version that sends the field, `until` the first that no longer does.
    `read_back` is False where frps ignores a rewritten value (the field is sent, not used).
    """

    kind: Kind
    # Only for RECORD: the fields of the nested object.
    fields: Mapping[str, Field] = field(default_factory=lambda: MappingProxyType({}))
    go: GoType | None = None  # None: the kind's usual Go type (filled in by __post_init__)
    since: FrpsVersion = PLUGINS_SINCE
    until: FrpsVersion | None = None
    read_back: bool = True
    doc: str = ""
    go_name: str = ""  # RECORD: frps's struct type, e.g. "UserInfo"

    def __post_init__(self) -> None:
        if self.go is None:
            object.__setattr__(self, "go", _GO_OF_KIND[self.kind])

    @property
    def go_type(self) -> GoType:
        assert self.go is not None  # set by __post_init__
        return self.go

    def sent_by(self, version: FrpsVersion) -> bool:
        """Whether frps `version` has this field in the op's Go struct (and so sends it)."""
        return self.since <= version and (self.until is None or version < self.until)


def _f(kind: Kind, doc: str, *, since: str = "", read_back: bool = True, go: GoType | None = None) -> Field:
    return Field(kind, go=go, since=_v(since) if since else PLUGINS_SINCE, read_back=read_back, doc=doc)


def _record(
    doc: str = "", *, go_name: str = "", since: str = "", read_back: bool = True, **fields: Field
) -> Field:
    return Field(
        Kind.RECORD,
        MappingProxyType(fields),
        since=_v(since) if since else PLUGINS_SINCE,
        read_back=read_back,
        doc=doc,
        go_name=go_name,
    )


def _str(doc: str, **kw: Any) -> Field:
    return _f(Kind.STR, doc, **kw)


def _int(doc: str, **kw: Any) -> Field:
    return _f(Kind.INT, doc, **kw)


def _int64(doc: str, **kw: Any) -> Field:
    return _f(Kind.INT, doc, go=GoType.INT64, **kw)


def _bool(doc: str, **kw: Any) -> Field:
    return _f(Kind.BOOL, doc, **kw)


def _list(doc: str, **kw: Any) -> Field:
    return _f(Kind.STR_LIST, doc, **kw)


def _map(doc: str, **kw: Any) -> Field:
    return _f(Kind.STR_MAP, doc, **kw)


def _user(*, read_back: bool) -> Field:
    """frps's UserInfo: the client's login as every op but Login carries it (never omitted)."""
    return _record(
        "the client's login: user, metas, run_id",
        go_name="UserInfo",
        read_back=read_back,
        user=_str("frpc's `user` (may be empty)"),
        metas=_map("frpc's client-wide metadatas"),
        run_id=_str("the session's run id", since="0.32.1"),
    )


# The `user` view rules see, for every op (Login builds it from its own fields).
USER = _user(read_back=True)
# In the content of the other ops, frps uses only the op's own fields from a rewrite: the
# returned `user` object is dropped (server/control.go: `m = &retContent.NewProxy`, ...).
_OP_USER = _user(read_back=False)

SCHEMAS: Mapping[Op, Field] = MappingProxyType(
    {
        Op.LOGIN: _record(
            version=_str("frpc's version"),
            hostname=_str("frpc's host name (often empty)"),
            os=_str("frpc's operating system (GOOS)"),
            arch=_str("frpc's architecture (GOARCH)"),
            user=_str("frpc's `user`; prefixes its proxy names"),
            privilege_key=_str("the token hash frps checks on the returned login (token auth)"),
            timestamp=_int64("when frpc made privilege_key (unix seconds)"),
            run_id=_str("the previous session's run id on a reconnect; empty on a first login"),
            client_id=_str("frpc's clientID setting", since="0.67.0"),
            metas=_map("frpc's client-wide metadatas"),
            client_spec=_record(
                "virtual clients (ssh tunnel gateway); {} for frpc",
                go_name="ClientSpec",
                since="0.53.0",
                type=_str("the virtual client's type (ssh-tunnel)", since="0.53.0"),
                always_auth_pass=_bool("skip token auth for this client", since="0.53.0"),
            ),
            pool_count=_int("work connections frpc keeps ready"),
            client_address=_str(
                "frpc's ip:port as frps sees it; frps keeps the connection's own",
                since="0.39.0",
                read_back=False,
            ),
        ),
        Op.NEW_PROXY: _record(
            user=_OP_USER,
            proxy_name=_str("the proxy's name (`<user>.<name>` when the client sets user)"),
            proxy_type=_str("tcp, udp, http, https, tcpmux, stcp, sudp or xtcp"),
            use_encryption=_bool("encrypt frps-frpc traffic of this proxy"),
            use_compression=_bool("compress frps-frpc traffic of this proxy"),
            bandwidth_limit=_str('a limit such as "1MB" or "100KB"', since="0.47.0"),
            bandwidth_limit_mode=_str('where it is enforced: "client" or "server"', since="0.47.0"),
            group=_str("load-balancing group"),
            group_key=_str("the group's shared secret"),
            metas=_map("the proxy's metadatas"),
            annotations=_map("the proxy's annotations (shown on frps's dashboard)", since="0.55.0"),
            remote_port=_int("tcp/udp: the port frps listens on; 0 lets frps pick"),
            custom_domains=_list("http/https/tcpmux: the domains routed to the proxy"),
            subdomain=_str("http/https/tcpmux: the name under frps's subDomainHost"),
            locations=_list("http: URL path prefixes routed to the proxy"),
            http_user=_str("http: basic-auth user"),
            http_pwd=_str("http: basic-auth password"),
            host_header_rewrite=_str("http: the Host header sent to the local service"),
            headers=_map("http: request headers set on the way in"),
            response_headers=_map("http: response headers set on the way out", since="0.58.0"),
            route_by_http_user=_str("http/tcpmux: route by basic-auth user", since="0.43.0"),
            sk=_str("stcp/sudp/xtcp: the visitors' secret key"),
            allow_users=_list('stcp/sudp/xtcp: users whose visitors may connect ("*": all)', since="0.50.0"),
            multiplexer=_str("tcpmux: the multiplexer (httpconnect)"),
        ),
        Op.CLOSE_PROXY: _record(user=_OP_USER, proxy_name=_str("the closed proxy's name")),
        Op.PING: _record(
            user=_OP_USER,
            timestamp=_int64("when privilege_key was made; 0 unless heartbeats are authenticated"),
            privilege_key=_str("the token hash, when heartbeats are authenticated"),
        ),
        Op.NEW_WORK_CONN: _record(
            user=_OP_USER,
            run_id=_str("the session's run id"),
            timestamp=_int64("when privilege_key was made; 0 unless work connections are authenticated"),
            privilege_key=_str("the token hash, when work connections are authenticated"),
        ),
        Op.NEW_USER_CONN: _record(
            user=_OP_USER,
            proxy_name=_str("the proxy being visited"),
            proxy_type=_str("its type"),
            remote_addr=_str("the visitor's ip:port (stcp: the visitor frpc's connection)"),
        ),
    }
)


class AnswerUse(enum.Enum):
    """What frps does with an allow that carries changed content."""

    CONTENT = "uses the returned content"
    VERDICT_ONLY = "uses only reject or allow; changed content is ignored"
    IGNORED = "ignores the answer"


@dataclass(frozen=True, slots=True)
class OpFacts:
    """When frps sends an op, from which version, and what it does with the answer."""

    since: FrpsVersion
    when: str
    answer: AnswerUse
    go_struct: str  # frps's content type in pkg/plugin/server/types.go


OP_FACTS: Mapping[Op, OpFacts] = MappingProxyType(
    {
        Op.LOGIN: OpFacts(PLUGINS_SINCE, "a frpc logs in (or reconnects)", AnswerUse.CONTENT, "LoginContent"),
        Op.NEW_PROXY: OpFacts(PLUGINS_SINCE, "a proxy is registered", AnswerUse.CONTENT, "NewProxyContent"),
        Op.CLOSE_PROXY: OpFacts(
            _v("0.40.0"), "a proxy is closed (after the fact)", AnswerUse.IGNORED, "CloseProxyContent"
        ),
        Op.PING: OpFacts(
            _v("0.32.1"), "a frpc heartbeat (heartbeatInterval)", AnswerUse.CONTENT, "PingContent"
        ),
        Op.NEW_WORK_CONN: OpFacts(
            _v("0.32.1"),
            "frpc opens a work connection (one per user connection)",
            AnswerUse.CONTENT,
            "NewWorkConnContent",
        ),
        Op.NEW_USER_CONN: OpFacts(
            _v("0.33.0"),
            "a visitor connects to a tcp or stcp proxy",
            AnswerUse.VERDICT_ONLY,
            "NewUserConnContent",
        ),
    }
)

# Ops whose rewritten content frps ignores (NewUserConn) or whose whole answer it ignores
# (CloseProxy): a `set` there cannot change anything.
CONTENT_IGNORED_OPS = frozenset(op for op, facts in OP_FACTS.items() if facts.answer is not AnswerUse.CONTENT)

# frps behaviour that is not a field: what `policyd frps-config --frps-version` warns about and
# docs/frps-versions.md tabulates (with the fields' and ops' own `since`).
EMPTY_FIELDS_OMITTED_SINCE = _v("0.43.0")  # before: every field sent, empty ones as "", 0, null
# Before this, frps sends work connections as op=Ping, and only to Ping plugins; NewWorkConn in
# `ops` only makes it ask twice per heartbeat.
NEW_WORK_CONN_OWN_OP_SINCE = _v("0.46.1")
HTTPS_PLUGIN_ADDR_SINCE = _v("0.35.0")
TOML_CONFIG_SINCE = _v("0.52.0")  # [[httpPlugins]]; older frps reads INI only
# frpc sends no heartbeats by default when tcpMux is on (the default): no Pings unless
# transport.heartbeatInterval is set.
HEARTBEATS_OFF_BY_DEFAULT_SINCE = _v("0.58.0")


@dataclass(frozen=True, slots=True)
class FrpsChange:
    """A behaviour change for plugins in one frps release (fields and ops carry their own)."""

    version: FrpsVersion
    change: str


FRPS_CHANGES: tuple[FrpsChange, ...] = (
    FrpsChange(
        PLUGINS_SINCE, "server plugins: frps asks an HTTP plugin (INI `[plugin.NAME]`) before these ops"
    ),
    FrpsChange(
        HTTPS_PLUGIN_ADDR_SINCE,
        "`https://` plugin addresses (the certificate is verified only with tls_verify / tlsVerify = true)",
    ),
    FrpsChange(
        EMPTY_FIELDS_OMITTED_SINCE,
        'empty fields are omitted instead of sent as "", 0 or null (the `user` object stays complete)',
    ),
    FrpsChange(
        NEW_WORK_CONN_OWN_OP_SINCE,
        "work connections arrive as op=NewWorkConn; before, as op=Ping and only to Ping plugins "
        "(with NewWorkConn in `ops`, every heartbeat was asked twice)",
    ),
    FrpsChange(TOML_CONFIG_SINCE, "TOML config: `[[httpPlugins]]` (`tlsVerify` from 0.52.1); INI still read"),
    FrpsChange(
        HEARTBEATS_OFF_BY_DEFAULT_SINCE,
        "frpc sends no heartbeats by default (tcpMux on): Ping only with `transport.heartbeatInterval` set",
    ),
)


def op_sent_by(op: Op, version: FrpsVersion) -> bool:
    """Whether frps `version` sends `op` at all (NewWorkConn: see NEW_WORK_CONN_OWN_OP_SINCE)."""
    return OP_FACTS[op].since <= version


def set_takes_effect(op: Op, path: tuple[str, ...]) -> bool:
    """Whether frps uses a `set content.<path>` in its answer to `op`."""
    if OP_FACTS[op].answer is not AnswerUse.CONTENT:
        return False
    f = SCHEMAS[op]
    for key in path:
        if f.kind is not Kind.RECORD or key not in f.fields:
            return True  # a map key, or a field frps added after this schema: frps decides
        f = f.fields[key]
        if not f.read_back:
            return False
    return True


class Record(dict[str, Any]):
    """A content/user object as rules see it: schema fields filled in; other keys read as None.

    Index access with a key outside the schema (`content["future_option"]`) is how a rule reaches
    a field frps added after this schema was written.
    """

    __slots__ = ()

    def __missing__(self, key: str) -> None:
        return None


class ZeroMap(dict[str, Any]):
    """A metas/headers/annotations map: a key that is not there reads as ""."""

    __slots__ = ()

    def __missing__(self, key: str) -> str:
        return ""


# The zero values of the scalar kinds (a fresh object each call for the others: zero_value()).
SCALAR_ZERO: Mapping[Kind, Any] = MappingProxyType({Kind.STR: "", Kind.INT: 0, Kind.BOOL: False})


# The kinds as globals for the functions below, which requests run: Python 3.11 looks an enum
# member up through EnumType.__getattr__ (~100 ns; a `case Kind.X:` pattern does it too).
_STR, _INT, _BOOL = Kind.STR, Kind.INT, Kind.BOOL
_STR_LIST, _STR_MAP, _RECORD = Kind.STR_LIST, Kind.STR_MAP, Kind.RECORD


def zero_value(f: Field) -> Any:
    """The value an absent or null field reads as; a fresh object each call."""
    kind = f.kind
    if kind is _STR:
        return ""
    if kind is _INT:
        return 0
    if kind is _BOOL:
        return False
    if kind is _STR_LIST:
        return []
    if kind is _STR_MAP:
        return ZeroMap()
    return Record((name, zero_value(sub)) for name, sub in f.fields.items())


def view(f: Field, value: Any) -> Any:
    """What a rule sees for `value` of field `f`: zero values filled in, maps made ZeroMaps.

    Values of an unexpected type are passed through as they are (a rule comparing them will
    then fail closed or simply not match); fields outside the schema are kept for index access.
    """
    if value is None:
        return zero_value(f)
    kind = f.kind
    if kind is _RECORD and isinstance(value, dict):
        out = Record((k, v) for k, v in value.items() if k not in f.fields)
        for name, sub in f.fields.items():
            out[name] = view(sub, value.get(name))
        return out
    if kind is _STR_MAP and isinstance(value, dict):
        return ZeroMap(value)
    return value


def field_of_other_ops(name: str) -> str:
    """A "'x' is a field of NewProxy" hint for a field used in the wrong op's rules, or ""."""
    owners = [op.value for op, schema in SCHEMAS.items() if name in schema.fields]
    return f"'{name}' is a field of {', '.join(owners)}" if owners else ""


# The range of frps's Go integers: `int` is 64 bits on the builds frps runs on, like int64.
GO_INT_BITS = 64
GO_INT_MIN, GO_INT_MAX = -(2 ** (GO_INT_BITS - 1)), 2 ** (GO_INT_BITS - 1) - 1


def type_matches(f: Field, value: Any) -> bool:
    """Whether `value` has the JSON shape frps's decoder expects for field `f` (and, for an
    integer, fits its Go type: frps fails the op on an overflow)."""
    kind = f.kind
    if kind is _STR:
        return isinstance(value, str)
    if kind is _INT:
        return isinstance(value, int) and not isinstance(value, bool) and GO_INT_MIN <= value <= GO_INT_MAX
    if kind is _BOOL:
        return isinstance(value, bool)
    if kind is _STR_LIST:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if kind is _STR_MAP:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    return isinstance(value, dict) and all(
        type_matches(sub, value[k]) for k, sub in f.fields.items() if value.get(k) is not None
    )
