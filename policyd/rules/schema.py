"""What frps sends for each op: field names, their kinds and zero values.

"Missing means empty": frps omits zero-valued fields (newer versions) or sends `null` (older ones),
so every schema field reads as its kind's zero value when absent or null. Field names come from
frp's `pkg/msg/msg.go` and `pkg/plugin/server/types.go` (see shared/frp-plugin-protocol.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from policyd.rules.decision import Op


class Kind(enum.Enum):
    """The JSON shape of a field, which fixes its zero value and what `set` may assign to it."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    STR_LIST = "list of strings"
    STR_MAP = "map of strings"
    RECORD = "object"


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    # Only for RECORD: the fields of the nested object.
    fields: Mapping[str, Field] = field(default_factory=lambda: MappingProxyType({}))


def _record(**fields: Field) -> Field:
    return Field(Kind.RECORD, MappingProxyType(fields))


S, N, B = Field(Kind.STR), Field(Kind.INT), Field(Kind.BOOL)
SL, SM = Field(Kind.STR_LIST), Field(Kind.STR_MAP)

USER = _record(user=S, metas=SM, run_id=S)

SCHEMAS: Mapping[Op, Field] = MappingProxyType(
    {
        Op.LOGIN: _record(
            version=S,
            hostname=S,
            os=S,
            arch=S,
            user=S,
            privilege_key=S,
            timestamp=N,
            run_id=S,
            client_id=S,
            metas=SM,
            client_spec=_record(type=S, always_auth_pass=B),
            pool_count=N,
            client_address=S,
        ),
        Op.NEW_PROXY: _record(
            user=USER,
            proxy_name=S,
            proxy_type=S,
            use_encryption=B,
            use_compression=B,
            bandwidth_limit=S,
            bandwidth_limit_mode=S,
            group=S,
            group_key=S,
            metas=SM,
            annotations=SM,
            remote_port=N,
            custom_domains=SL,
            subdomain=S,
            locations=SL,
            http_user=S,
            http_pwd=S,
            host_header_rewrite=S,
            headers=SM,
            response_headers=SM,
            route_by_http_user=S,
            sk=S,
            allow_users=SL,
            multiplexer=S,
        ),
        Op.CLOSE_PROXY: _record(user=USER, proxy_name=S),
        Op.PING: _record(user=USER, timestamp=N, privilege_key=S),
        Op.NEW_WORK_CONN: _record(user=USER, run_id=S, timestamp=N, privilege_key=S),
        Op.NEW_USER_CONN: _record(user=USER, proxy_name=S, proxy_type=S, remote_addr=S),
    }
)

# Ops whose rewritten content frps ignores (NewUserConn) or whose whole answer it ignores
# (CloseProxy): a `set` there cannot change anything.
CONTENT_IGNORED_OPS = frozenset({Op.NEW_USER_CONN, Op.CLOSE_PROXY})


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


def zero_value(f: Field) -> Any:
    """The value an absent or null field reads as; a fresh object each call."""
    match f.kind:
        case Kind.STR:
            return ""
        case Kind.INT:
            return 0
        case Kind.BOOL:
            return False
        case Kind.STR_LIST:
            return []
        case Kind.STR_MAP:
            return ZeroMap()
        case Kind.RECORD:
            return Record((name, zero_value(sub)) for name, sub in f.fields.items())


def view(f: Field, value: Any) -> Any:
    """What a rule sees for `value` of field `f`: zero values filled in, maps made ZeroMaps.

    Values of an unexpected type are passed through as they are (a rule comparing them will
    then fail closed or simply not match); fields outside the schema are kept for index access.
    """
    if value is None:
        return zero_value(f)
    if f.kind is Kind.RECORD and isinstance(value, dict):
        out = Record((k, v) for k, v in value.items() if k not in f.fields)
        for name, sub in f.fields.items():
            out[name] = view(sub, value.get(name))
        return out
    if f.kind is Kind.STR_MAP and isinstance(value, dict):
        return ZeroMap(value)
    return value


def field_of_other_ops(name: str) -> str:
    """A "'x' is a field of NewProxy" hint for a field used in the wrong op's rules, or ""."""
    owners = [op.value for op, schema in SCHEMAS.items() if name in schema.fields]
    return f"'{name}' is a field of {', '.join(owners)}" if owners else ""


def type_matches(f: Field, value: Any) -> bool:
    """Whether `value` has the JSON shape frps's decoder expects for field `f`."""
    match f.kind:
        case Kind.STR:
            return isinstance(value, str)
        case Kind.INT:
            return isinstance(value, int) and not isinstance(value, bool)
        case Kind.BOOL:
            return isinstance(value, bool)
        case Kind.STR_LIST:
            return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        case Kind.STR_MAP:
            return isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            )
        case Kind.RECORD:
            return isinstance(value, dict) and all(
                type_matches(sub, value[k]) for k, sub in f.fields.items() if value.get(k) is not None
            )
