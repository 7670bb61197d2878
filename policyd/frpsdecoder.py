"""How frps reads policyd's answer: Go's `encoding/json` into frps's structs, modelled exactly.

frps decodes the answer body with `json.Unmarshal(body, &res)` into

    type Response struct {
        Reject       bool   `json:"reject"`
        RejectReason string `json:"reject_reason"`
        Unchange     bool   `json:"unchange"`
        Content      any    `json:"content"` // preset to new(XContent), the op's content type
    }

and then: any decode error fails the op ("send <Op> request to plugin error"); `reject` refuses
it with the reason; otherwise, unless `unchange`, the decoded content *replaces* the op's
content (`content = res.Content.(*XContent)`, which panics when the answer said
`"content": null`). The rules of Go's decoder that matter here:

- a value of the wrong JSON type for its Go field is an error (`"false"` for a bool, `"80"` for
  an int, `1` for a string), so is a number that is not an integer literal of the field's width
  (`1.0`, `1e3`, 2**63 for an int64); `null` leaves a field as it was (nil for slices and maps);
- the content struct starts zeroed: a field the answer omits becomes "", 0, false or nil;
- keys match struct fields exactly, else case-insensitively; unknown keys are dropped;
- a repeated key is decoded again over the first (maps and structs merge, the rest: last wins).

`decode_answer()` applies exactly these rules for one frps version, taking each op's fields and
Go types from `schema.SCHEMAS` (their `since`/`until`), and reports what frps would do
(`Verdict`) with findings: errors (frps fails the op or crashes, or the content is not the
whole content frps sent) and notes (fields frps drops). The field types come from frp's own
source (github.com/fatedier/frp): v0.70.0 `pkg/msg/msg.go` (Login, NewProxy, CloseProxy,
Ping, NewWorkConn) and `pkg/plugin/server/types.go` (Response, UserInfo, LoginContent with
client_address, NewUserConnContent), decoding in `pkg/plugin/server/http.go` and
`manager.go`; v0.33.0 `models/msg/msg.go` and `models/plugin/server/types.go` (the same
files before they moved to `pkg/`).
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from policyd.rules.decision import Op
from policyd.rules.schema import (
    GO_INT_BITS,
    NEW_WORK_CONN_OWN_OP_SINCE,
    OP_FACTS,
    SCHEMAS,
    AnswerUse,
    Field,
    FrpsVersion,
    GoType,
    Kind,
    op_sent_by,
)


class Verdict(enum.Enum):
    """What frps does with an answer."""

    REJECT = "reject"  # refuses the op with reject_reason
    ALLOW = "allow"  # goes on with the content it sent
    REPLACE = "replace"  # goes on with the decoded content in place of what it sent
    OP_FAILED = "op failed"  # the answer did not decode: frps refuses the op
    CRASH = "crash"  # unchange false and content null: frps's type assertion panics
    IGNORED = "ignored"  # CloseProxy: frps ignores the answer (decode errors are only logged)


class Severity(enum.Enum):
    ERROR = "error"  # frps fails, crashes, or gets other content than the rules made
    NOTE = "note"  # worth knowing, harmless: a field frps drops, a key matched case-insensitively


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with (error) or worth knowing about (note) an answer, at a JSON path."""

    code: str  # stable: type_mismatch, not_integer, int_overflow, invalid_json, flag_missing, ...
    path: str  # "unchange", "content.remote_port", "content.metas.team"
    message: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.severity.value} {self.path or '(body)'} [{self.code}]: {self.message}"


@dataclass(frozen=True, slots=True)
class FrpsAnswer:
    """What frps `version` makes of one answer to `op`."""

    op: Op
    version: FrpsVersion
    go_struct: str  # the content type frps decodes into, e.g. "NewProxyContent"
    verdict: Verdict
    reject_reason: str
    content: dict[str, Any] | None  # REPLACE: the decoded struct frps goes on with (nil as None)
    changed: tuple[str, ...]  # REPLACE: paths whose value differs from the request's
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def notes(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.NOTE)

    @property
    def ok(self) -> bool:
        """No errors: frps takes the answer as meant. (Failing or crashing frps is an error,
        except where the request itself could not have come from frps: then it is a note.)"""
        return not self.errors

    def explain(self) -> str:
        """A report for people: the verdict, then every finding."""
        head = f"frps {self.version} ({self.op} answer decoded into {self.go_struct}): {self.verdict.value}"
        if self.verdict is Verdict.REJECT:
            head += f" ({self.reject_reason!r})"
        if self.changed:
            head += f"; changed: {', '.join(self.changed)}"
        return "\n".join([head, *(f"  {finding}" for finding in self.findings)])


class _Num(str):
    """A JSON number as its literal text: Go parses it for the field it lands in."""

    __slots__ = ()


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in document order, repeated keys kept."""

    __slots__ = ()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character: {name} is not JSON")


def parse_json(body: bytes | str) -> Any:
    """Parse like Go's decoder sees JSON: numbers as text, objects as ordered pairs.

    Raises ValueError for what Go refuses (bad syntax, NaN/Infinity, trailing data).
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    return json.loads(
        text, object_pairs_hook=_Obj, parse_int=_Num, parse_float=_Num, parse_constant=_reject_constant
    )


def from_python(value: Any) -> Any:
    """A decoded Python JSON value (a request's content) in parse_json()'s shape."""
    if isinstance(value, dict):
        return _Obj((str(k), from_python(v)) for k, v in value.items())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return _Num(str(value))
    if isinstance(value, float):
        return _Num(repr(value))
    if isinstance(value, list | tuple):
        return [from_python(v) for v in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _to_python(value: Any) -> Any:
    """parse_json()'s shape back to plain JSON values (last key wins), for raw comparisons."""
    if isinstance(value, _Obj):
        return {k: _to_python(v) for k, v in value}
    if isinstance(value, _Num):
        return float(value) if not _INTEGER.fullmatch(value) else int(value)
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_DECODE_ERRORS = frozenset({"invalid_json", "type_mismatch", "not_integer", "int_overflow"})


def _json_type(raw: Any) -> str:
    """Go's name for a JSON value's type in UnmarshalTypeError ("string", "number 1.5", ...)."""
    if isinstance(raw, _Num):
        return f"number {raw}"
    if isinstance(raw, bool):
        return "bool"
    if isinstance(raw, str):
        return "string"
    if isinstance(raw, _Obj):
        return "object"
    if isinstance(raw, list):
        return "array"
    return "null"


@functools.lru_cache(maxsize=4096)  # the same few dozen keys come in every answer
def _fold(name: str) -> str:
    """Go's case folding for field names: upper-casing then lower-casing each rune."""
    if name.isascii():
        return name.lower()
    out = []
    for ch in name:
        upper = ch.upper()
        upper = upper if len(upper) == 1 else ch
        lower = upper.lower()
        out.append(lower if len(lower) == 1 else upper)
    return "".join(out)


# Per (record, version): its struct fields and their folded names. Records are the schema's
# module-level constants, so their ids are stable keys.
_STRUCTS: dict[tuple[int, FrpsVersion], tuple[dict[str, Field], dict[str, str]]] = {}


def _struct(record: Field, version: FrpsVersion) -> tuple[dict[str, Field], dict[str, str]]:
    key = (id(record), version)
    cached = _STRUCTS.get(key)
    if cached is None:
        fields = {name: f for name, f in record.fields.items() if f.sent_by(version)}
        cached = _STRUCTS[key] = (fields, {_fold(name): name for name in fields})
    return cached


def struct_fields(record: Field, version: FrpsVersion) -> dict[str, Field]:
    """The fields of a content struct (or nested struct) in frps `version`."""
    return _struct(record, version)[0]


def zero_struct(record: Field, version: FrpsVersion) -> dict[str, Any]:
    """A zeroed Go struct: "" / 0 / false, nil (None) slices and maps, zeroed nested structs."""
    return {name: _zero(f, version) for name, f in struct_fields(record, version).items()}


def _zero(f: Field, version: FrpsVersion) -> Any:
    match f.go_type:
        case GoType.STRING:
            return ""
        case GoType.BOOL:
            return False
        case GoType.INT | GoType.INT64:
            return 0
        case GoType.STRUCT:
            return zero_struct(f, version)
        case _:
            return None  # nil slice or map


class _Decoder:
    """One Unmarshal call: Go's decoding rules, collecting findings instead of stopping."""

    def __init__(self, version: FrpsVersion, int_bits: int) -> None:
        self.version = version
        self.int_bits = int_bits
        self.findings: list[Finding] = []

    def error(self, code: str, path: str, message: str) -> None:
        self.findings.append(Finding(code, path, message, Severity.ERROR))

    def note(self, code: str, path: str, message: str) -> None:
        self.findings.append(Finding(code, path, message, Severity.NOTE))

    def mismatch(self, raw: Any, go: str, path: str) -> None:
        self.error("type_mismatch", path, f"cannot unmarshal {_json_type(raw)} into Go value of type {go}")

    def value(self, f: Field, raw: Any, current: Any, path: str) -> Any:
        """Decode `raw` into a field holding `current`; returns the field's new value."""
        go = f.go_type
        if raw is None:
            # null: a no-op, except that it sets slices and maps to nil.
            return None if go in (GoType.STRING_SLICE, GoType.STRING_MAP) else current
        if go is GoType.STRING:
            return self.string(raw, current, path)
        if go is GoType.BOOL:
            if isinstance(raw, bool):
                return raw
            self.mismatch(raw, "bool", path)
            return current
        if go in (GoType.INT, GoType.INT64):
            return self.integer(raw, 64 if go is GoType.INT64 else self.int_bits, go.value, current, path)
        if go is GoType.STRING_SLICE:
            if isinstance(raw, list) and not isinstance(raw, _Obj):
                return [self.string(item, "", f"{path}[{i}]") for i, item in enumerate(raw)]
            self.mismatch(raw, "[]string", path)
            return current
        if go is GoType.STRING_MAP:
            if isinstance(raw, _Obj):
                merged = dict(current or {})  # Go decodes into the map that is there
                for key, item in raw:
                    merged[key] = self.string(item, "", f"{path}.{key}")
                return merged
            self.mismatch(raw, "map[string]string", path)
            return current
        return self.struct(f, raw, current, path)

    def string(self, raw: Any, current: Any, path: str) -> Any:
        if raw is None:
            return current
        if isinstance(raw, str) and not isinstance(raw, _Num):
            return raw
        self.mismatch(raw, "string", path)
        return current

    def integer(self, raw: Any, bits: int, go: str, current: Any, path: str) -> Any:
        if not isinstance(raw, _Num):
            self.mismatch(raw, go, path)
            return current
        if not _INTEGER.fullmatch(raw):
            self.error("not_integer", path, f"cannot unmarshal number {raw} into Go value of type {go}")
            return current
        number = int(raw)
        if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
            self.error("int_overflow", path, f"number {raw} overflows Go {go} ({bits} bits)")
            return current
        return number

    def struct(self, record: Field, raw: Any, current: dict[str, Any], path: str) -> dict[str, Any]:
        if not isinstance(raw, _Obj):
            self.mismatch(raw, "struct", path)
            return current
        fields, folded = _struct(record, self.version)
        out = dict(current)
        seen: set[str] = set()
        prefix = f"{path}." if path else ""
        for key, item in raw:
            name = key if key in fields else folded.get(_fold(key))
            where = f"{prefix}{key}"
            if name is None:
                if record.fields.get(key) is not None:
                    reason = f"frps {self.version} does not know it yet (or any more); it drops it"
                else:
                    reason = f"not a field frps {self.version} knows; it drops it"
                self.note("unknown_field", where, reason)
                continue
            if name != key:
                self.note("key_case", where, f"matched to {name!r} case-insensitively")
            if name in seen:
                self.error("duplicate_key", where, "the key is repeated; Go decodes it again over the first")
            seen.add(name)
            out[name] = self.value(fields[name], item, out[name], f"{prefix}{name}")
        return out


# The answer's own struct (pkg/plugin/server/types.go: Response).
_ANSWER_FLAGS = ("reject", "unchange")
_ANSWER_KEYS = ("reject", "reject_reason", "unchange", "content")


def content_struct(op: Op, version: FrpsVersion, request: Mapping[str, Any] | None) -> tuple[str, Field]:
    """The Go type frps decodes `op`'s answer content into, and its schema record.

    frps before NEW_WORK_CONN_OWN_OP_SINCE sends work connections with op=Ping, and decodes the
    answer into their own type (NewWorkConnContent, told apart by its top-level run_id).
    """
    if op is Op.PING and version < NEW_WORK_CONN_OWN_OP_SINCE and request is not None and "run_id" in request:
        op = Op.NEW_WORK_CONN
    return OP_FACTS[op].go_struct, SCHEMAS[op]


def decode_answer(
    op: Op,
    body: bytes | str,
    *,
    version: FrpsVersion,
    request: Mapping[str, Any] | None = None,
    changes: Collection[str] | None = None,
    int_bits: int = GO_INT_BITS,
) -> FrpsAnswer:
    """What frps `version` does with `body` as the answer to `op`.

    With `request` (the content frps sent) a replacing answer must hold every field frps sent;
    `changed` lists the paths whose value differs. With `changes` (the paths the rules set,
    e.g. "metas.team"), any other difference is an error. Raises ValueError for an op that
    frps `version` never sends.
    """
    if not op_sent_by(op, version):
        raise ValueError(f"frps {version} never sends {op} (from {OP_FACTS[op].since})")
    go_struct, record = content_struct(op, version, request)
    decoder = _Decoder(version, int_bits)
    try:
        doc = parse_json(body)
    except ValueError as e:
        decoder.error("invalid_json", "", f"the body is not JSON: {e}")
        return _answer(op, version, go_struct, decoder, Verdict.OP_FAILED)

    flags: dict[str, Any] = {"reject": False, "reject_reason": "", "unchange": False}
    present: dict[str, Any] = {}
    content: dict[str, Any] | None = zero_struct(record, version)
    content_raw: Any = None
    if isinstance(doc, _Obj):
        folded = {_fold(k): k for k in _ANSWER_KEYS}
        for key, raw in doc:
            name = key if key in _ANSWER_KEYS else folded.get(_fold(key))
            if name is None:
                decoder.note("unknown_answer_key", key, "not part of frps's Response; frps ignores it")
                continue
            if name != key:
                decoder.note("key_case", key, f"matched to {name!r} case-insensitively")
            if name in present:
                decoder.error("duplicate_key", key, "the key is repeated; Go decodes it again over the first")
            present[name] = raw
            if name == "content":
                content_raw = raw
                if raw is None:
                    content = None  # null into the `any` field: the preset pointer is dropped
                elif content is None:
                    content = decoder.struct(record, raw, zero_struct(record, version), "content")
                else:
                    content = decoder.struct(record, raw, content, "content")
            elif name == "reject_reason":
                flags[name] = decoder.string(raw, flags[name], name)
            else:
                flags[name] = decoder.value(_BOOL, raw, flags[name], name)
    elif doc is not None:
        decoder.mismatch(doc, "server.Response", "")
    # A null body decodes into nothing: every flag false, the zeroed content.

    for flag in _ANSWER_FLAGS:
        if flag == "unchange" and flags["reject"]:
            continue
        if present.get(flag) is None:
            decoder.error(
                "flag_missing",
                flag,
                f"'{flag}' is missing or null: frps reads false; send a JSON boolean",
            )
    failed = any(f.code in _DECODE_ERRORS for f in decoder.findings)
    sent: dict[str, Any] | None = None
    if request is not None and (failed or not (flags["reject"] or flags["unchange"])):
        sent = _excuse_impossible_request(decoder, record, version, request)
    if failed:
        verdict = Verdict.OP_FAILED
    elif flags["reject"]:
        verdict = Verdict.REJECT
    elif flags["unchange"]:
        verdict = Verdict.ALLOW
    elif content is None:
        verdict = Verdict.CRASH
        decoder.error(
            "null_content",
            "content",
            "unchange is false and content is null: frps's type assertion on the nil content panics",
        )
    else:
        verdict = Verdict.REPLACE
    if OP_FACTS[op].answer is AnswerUse.IGNORED:
        verdict = Verdict.IGNORED
    if "content" in present and (flags["unchange"] or flags["reject"]):
        decoder.note(
            "content_ignored", "content", "decoded (a type error would still fail the op), then ignored"
        )

    changed: tuple[str, ...] = ()
    if verdict is Verdict.REPLACE:
        assert content is not None
        if "content" not in present:
            decoder.error(
                "content_missing",
                "content",
                "unchange is false but there is no content: frps goes on with a zeroed struct",
            )
        if request is not None and sent is not None:
            changed = _compare(decoder, record, version, request, sent, content, content_raw, changes)
            if OP_FACTS[op].answer is AnswerUse.VERDICT_ONLY and changed:
                decoder.note("content_unused", "content", f"frps does not use changed {op} content")
    return _answer(
        op,
        version,
        go_struct,
        decoder,
        verdict,
        reason=flags["reject_reason"] if verdict is Verdict.REJECT else "",
        content=content if verdict is Verdict.REPLACE else None,
        changed=changed,
    )


_BOOL = Field(Kind.BOOL)


def _answer(
    op: Op,
    version: FrpsVersion,
    go_struct: str,
    decoder: _Decoder,
    verdict: Verdict,
    *,
    reason: str = "",
    content: dict[str, Any] | None = None,
    changed: tuple[str, ...] = (),
) -> FrpsAnswer:
    return FrpsAnswer(op, version, go_struct, verdict, reason, content, changed, tuple(decoder.findings))


def _excuse_impossible_request(
    decoder: _Decoder, record: Field, version: FrpsVersion, request: Mapping[str, Any]
) -> dict[str, Any]:
    """The request as frps's struct. Where the request itself does not decode (frps could not
    have sent it: a test's hand-made body), the answer's same failure becomes a note."""
    request_decoder = _Decoder(version, decoder.int_bits)
    sent = request_decoder.struct(record, from_python(dict(request)), zero_struct(record, version), "content")
    impossible = {f.path for f in request_decoder.findings if f.code in _DECODE_ERRORS}
    for i, f in enumerate(decoder.findings):
        if f.code in _DECODE_ERRORS and f.path in impossible:
            message = f"{f.message} (so does the request's: not a request frps sends)"
            decoder.findings[i] = Finding(f.code, f.path, message, Severity.NOTE)
    return sent


def _compare(
    decoder: _Decoder,
    record: Field,
    version: FrpsVersion,
    request: Mapping[str, Any],
    sent: dict[str, Any],
    content: dict[str, Any],
    content_raw: Any,
    changes: Collection[str] | None,
) -> tuple[str, ...]:
    """Completeness and changes of a replacing answer against the request frps sent."""
    answered = _to_python(content_raw) if isinstance(content_raw, _Obj) else {}
    for path in _dropped(dict(request), answered, "content"):
        decoder.error("dropped_field", path, "frps sent it and the answer leaves it out: frps would zero it")
    changed = sorted(
        set(_differences(record, version, sent, content, ""))
        | _raw_differences(record, version, request, answered)
    )
    if changes is not None:
        declared = tuple(changes)
        for path in changed:
            if not any(_related(path, d) for d in declared):
                decoder.error("undeclared_change", f"content.{path}", "changed, but no rule set it")
        for d in declared:
            if not any(_related(path, d) for path in changed):
                decoder.note(
                    "change_lost", f"content.{d}", f"a rule set it, but frps {version} gets no change"
                )
    return tuple(changed)


def _related(path: str, declared: str) -> bool:
    return path == declared or path.startswith(declared + ".") or declared.startswith(path + ".")


def _dropped(sent: Mapping[str, Any], answered: Mapping[str, Any], path: str) -> Iterator[str]:
    for key, value in sent.items():
        if key not in answered:
            yield f"{path}.{key}"
        elif isinstance(value, dict) and isinstance(answered[key], dict):
            yield from _dropped(value, answered[key], f"{path}.{key}")


def _differences(record: Field, version: FrpsVersion, before: Any, after: Any, prefix: str) -> Iterator[str]:
    for name, f in struct_fields(record, version).items():
        old, new = before.get(name), after.get(name)
        path = f"{prefix}{name}"
        if f.go_type is GoType.STRUCT:
            yield from _differences(f, version, old, new, path + ".")
        elif f.go_type is GoType.STRING_MAP:
            old, new = old or {}, new or {}
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    yield f"{path}.{key}"
        elif f.go_type is GoType.STRING_SLICE:
            if (old or []) != (new or []):
                yield path
        elif old != new:
            yield path


def _raw_differences(
    record: Field, version: FrpsVersion, sent: Mapping[str, Any], answered: Mapping[str, Any]
) -> set[str]:
    """Fields frps `version` has no struct field for: kept as sent, compared as JSON."""
    known = {_fold(name) for name in struct_fields(record, version)}
    out = set()
    for key, value in sent.items():
        if _fold(key) in known or key not in answered:
            continue
        if json.dumps(value, sort_keys=True) != json.dumps(answered[key], sort_keys=True):
            out.add(key)
    return out
