"""`policyd fields`: what each op carries, generated from the schema (policyd/rules/schema.py).

Per field: its JSON kind and Go type, the zero value a rule sees when frps omits it, the frps
versions that send it, and whether a `set` on it changes what frps does. `--versions` prints
which frps release changed what for plugins. docs/fields.md and docs/frps-versions.md hold
the same tables (`--format markdown`); a test keeps them equal.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from policyd.rules.decision import Op
from policyd.rules.schema import (
    FRPS_CHANGES,
    OP_FACTS,
    SCHEMAS,
    AnswerUse,
    Field,
    FrpsVersion,
    Kind,
    set_takes_effect,
)
from policyd.rules.secrets import is_secret_key


class FieldsFormat(enum.StrEnum):
    PRETTY = "pretty"
    JSON = "json"
    MARKDOWN = "markdown"  # docs/fields.md's generated part


_ZERO = {
    Kind.STR: '""',
    Kind.INT: "0",
    Kind.BOOL: "false",
    Kind.STR_LIST: "[]",
    Kind.STR_MAP: "{}",
    Kind.RECORD: "{...}",
}


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One row of the reference: a content field (nested ones as `user.metas`) of one op."""

    op: Op
    path: str
    kind: Kind
    go_type: str
    zero: str
    since: FrpsVersion  # the first frps that sends it (never before the op itself)
    until: FrpsVersion | None
    set_takes_effect: bool
    secret: bool
    doc: str

    @property
    def sent_by(self) -> str:
        """The versions that send it, for people: "all", ">= 0.47.0", "0.31.0 - 0.42.x"."""
        if self.until is not None:
            return f"{self.since} to < {self.until}"
        return "all" if self.since <= OP_FACTS[self.op].since else f">= {self.since}"

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op.value,
            "field": self.path,
            "kind": self.kind.value,
            "go_type": self.go_type,
            "zero": self.zero,
            "since": str(self.since),
            "until": str(self.until) if self.until else None,
            "set_takes_effect": self.set_takes_effect,
            "secret": self.secret,
            "doc": self.doc,
        }


def _rows(op: Op, record: Field, prefix: tuple[str, ...], since: FrpsVersion) -> Iterator[FieldInfo]:
    for name, f in record.fields.items():
        path = (*prefix, name)
        first = max(since, f.since)
        yield FieldInfo(
            op=op,
            path=".".join(path),
            kind=f.kind,
            go_type=f.go_name or f.go_type.value,
            zero=_ZERO[f.kind],
            since=first,
            until=f.until,
            set_takes_effect=set_takes_effect(op, path),
            secret=is_secret_key(name),
            doc=f.doc,
        )
        if f.kind is Kind.RECORD:
            yield from _rows(op, f, path, first)


def field_rows(op: Op | None = None, version: FrpsVersion | None = None) -> list[FieldInfo]:
    """The reference's rows, in schema order; only `op`'s, only what frps `version` sends."""
    rows = []
    for each in [op] if op else list(Op):
        if version is not None and OP_FACTS[each].since > version:
            continue
        for row in _rows(each, SCHEMAS[each], (), OP_FACTS[each].since):
            if version is None or (row.since <= version and (row.until is None or version < row.until)):
                rows.append(row)
    return rows


def _answer_text(op: Op) -> str:
    facts = OP_FACTS[op]
    return {
        AnswerUse.CONTENT: "frps uses a rewritten content",
        AnswerUse.VERDICT_ONLY: "frps uses only reject or allow (rewritten content is ignored)",
        AnswerUse.IGNORED: "frps ignores the answer",
    }[facts.answer]


def _op_heading(op: Op) -> str:
    facts = OP_FACTS[op]
    return f"{op}: {facts.when}; from frps {facts.since}; {_answer_text(op)}"


def _by_op(rows: list[FieldInfo]) -> Iterator[tuple[Op, list[FieldInfo]]]:
    """The rows of each op that has any, in frps's op order."""
    for op in Op:
        mine = [r for r in rows if r.op is op]
        if mine:
            yield op, mine


def _cells(r: FieldInfo) -> tuple[str, ...]:
    return (r.path, r.kind.value, r.go_type, r.zero, r.sent_by, "yes" if r.set_takes_effect else "no", r.doc)


def render_pretty(rows: list[FieldInfo]) -> str:
    lines: list[str] = []
    for op, mine in _by_op(rows):
        if lines:
            lines.append("")
        lines.append(_op_heading(op))
        table: list[tuple[str, ...]] = [("field", "type", "Go type", "zero", "frps", "set", "meaning")]
        table += [_cells(r) for r in mine]
        widths = [max(len(row[i]) for row in table) for i in range(6)]
        for row in table:
            cells = [cell.ljust(width) for cell, width in zip(row[:6], widths, strict=True)]
            lines.append(("  " + "  ".join(cells) + "  " + row[6]).rstrip())
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(rows: list[FieldInfo]) -> str:
    """One table per op: docs/fields.md's generated part."""
    out: list[str] = []
    for op, mine in _by_op(rows):
        facts = OP_FACTS[op]
        out += [
            f"### {op}",
            "",
            f"{facts.when[0].upper()}{facts.when[1:]}; from frps {facts.since}; {_answer_text(op)}.",
            "",
            "| field | type | Go type | zero | sent by frps | `set` takes effect | meaning |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mine:
            path, kind, go_type, zero, sent_by, effect, doc = _cells(r)
            out.append(f"| `{path}` | {kind} | `{go_type}` | `{zero}` | {sent_by} | {effect} | {_md(doc)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One frps release in the version table: the ops, fields and behaviour it changed."""

    version: FrpsVersion
    ops: tuple[str, ...]
    fields: tuple[str, ...]
    changes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": str(self.version), "ops": self.ops, "fields": self.fields, "changes": self.changes}


def _added_fields(
    op: Op, record: Field, prefix: str, since: FrpsVersion
) -> Iterator[tuple[FrpsVersion, str]]:
    """(version, path) of the fields added after their op or parent object came to be."""
    for name, f in record.fields.items():
        if f.since > since:
            yield f.since, f"{prefix}{name}"
        if f.kind is Kind.RECORD:
            yield from _added_fields(op, f, f"{prefix}{name}.", max(since, f.since))


def version_rows() -> list[VersionRow]:
    """Which frps release added which op and field, and changed what else, oldest first."""
    ops: dict[FrpsVersion, list[str]] = {}
    fields: dict[FrpsVersion, dict[str, list[str]]] = {}
    changes: dict[FrpsVersion, list[str]] = {}
    for op, facts in OP_FACTS.items():
        ops.setdefault(facts.since, []).append(op.value)
        for version, path in _added_fields(op, SCHEMAS[op], "", facts.since):
            fields.setdefault(version, {}).setdefault(op.value, []).append(f"`{path}`")
    for change in FRPS_CHANGES:
        changes.setdefault(change.version, []).append(change.change)
    versions = sorted(set(ops) | set(fields) | set(changes))
    return [
        VersionRow(
            v,
            tuple(ops.get(v, ())),
            tuple(f"{op} {', '.join(paths)}" for op, paths in fields.get(v, {}).items()),
            tuple(changes.get(v, ())),
        )
        for v in versions
    ]


def render_versions_markdown(rows: list[VersionRow]) -> str:
    lines = ["| frps | ops added | fields added | other changes for plugins |", "|---|---|---|---|"]
    for row in rows:
        cells = [str(row.version), ", ".join(row.ops), "; ".join(row.fields), _md("; ".join(row.changes))]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def render_versions_pretty(rows: list[VersionRow]) -> str:
    lines = []
    for row in rows:
        lines.append(f"frps {row.version}")
        lines += [f"  op {op}" for op in row.ops]
        lines += [f"  field {f.replace('`', '')}" for f in row.fields]
        lines += [f"  {change.replace('`', '')}" for change in row.changes]
    return "\n".join(lines)


def fields(
    out: TextIO,
    *,
    op: Op | None = None,
    version: FrpsVersion | None = None,
    output: FieldsFormat = FieldsFormat.PRETTY,
    versions: bool = False,
) -> None:
    """`policyd fields`: the field reference (or with `versions`, the version table) to `out`."""
    if versions:
        table = version_rows()
        if output is FieldsFormat.JSON:
            text = json.dumps([row.to_json() for row in table], indent=2)
        elif output is FieldsFormat.MARKDOWN:
            text = render_versions_markdown(table).rstrip("\n")
        else:
            text = render_versions_pretty(table)
    else:
        rows = field_rows(op, version)
        if output is FieldsFormat.JSON:
            text = json.dumps([row.to_json() for row in rows], indent=2)
        elif output is FieldsFormat.MARKDOWN:
            text = render_markdown(rows).rstrip("\n")
        else:
            text = render_pretty(rows)
    out.write(text + "\n")
