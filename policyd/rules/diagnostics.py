"""Showing policy errors and warnings to people (text with a caret) and to machines (JSON).

Text takes the shape compilers use, so editors and CI annotate it without configuration:

    NewProxy.rules:3:25: error: 'content' has no field 'remote_prot' in NewProxy (did you mean ...?)
        reject "x" when content.remote_prot > 0
                                ^

A Diagnostic is data: a load error (any PolicydError, through `Diagnostic.of`) or a lint
finding, with a severity. JSON is its code, message, hint, file, line, column and severity: the
fields `/status` shows for an error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from policyd.errors import Location, PolicydError, error_fields
from policyd.rules.language import visible

SOURCE_INDENT = "    "


class Severity(enum.StrEnum):
    ERROR = "error"  # the policy does not load
    WARNING = "warning"  # the policy loads, but a rule is likely not what was meant
    INFO = "info"  # nothing is wrong: a recovery, or what a change did


class OutputFormat(enum.StrEnum):
    """`--format` of the operator verbs."""

    PRETTY = "pretty"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about a policy: what is wrong (a stable code and a message), where, and how bad."""

    severity: Severity
    code: str
    message: str
    location: Location | None = None
    hint: str = ""

    @classmethod
    def of(cls, error: PolicydError, severity: Severity = Severity.ERROR) -> Diagnostic:
        return cls(severity, error.code, error.message, error.location, error.hint)

    def to_dict(self) -> dict[str, Any]:
        fields = error_fields(self.code, self.message, self.hint, self.location)
        return {**fields, "severity": self.severity.value}


# Reads one policy file: (path, the name shown in messages) -> its bytes. The loader's own
# reader (policy.read_policy_file), so that quoting a line is as safe as loading it.
FileReader = Callable[[Path, str], bytes]


@dataclass
class SourceFiles:
    """Reads policy files on demand (once each) to quote the line a diagnostic points at.

    Lines are split on `\n` only, as the loader splits them, so line numbers agree.
    """

    directory: Path
    read: FileReader
    _lines: dict[str, list[str] | None] = field(default_factory=dict)

    def line(self, location: Location) -> str | None:
        if location.file not in self._lines:
            path = self.directory / location.file
            try:
                text = self.read(path, location.file).decode("utf-8")
                self._lines[location.file] = [row.removesuffix("\r") for row in text.split("\n")]
            except (PolicydError, OSError, UnicodeDecodeError):
                self._lines[location.file] = None
        lines = self._lines[location.file]
        if lines is None or not 1 <= location.line <= len(lines):
            return None
        return lines[location.line - 1]


def caret_line(source_line: str, column: int) -> str:
    """Spaces up to `column` (1-based), keeping tabs so the caret lines up, then '^'."""
    prefix = source_line[: max(column - 1, 0)]
    return "".join(ch if ch == "\t" else " " for ch in prefix) + "^"


def render(diagnostic: Diagnostic, sources: SourceFiles | None = None) -> str:
    """`file:line:col: severity: message (hint)`, then the source line and a caret under the column."""
    text = diagnostic.message if not diagnostic.hint else f"{diagnostic.message} ({diagnostic.hint})"
    loc = diagnostic.location
    head = f"{loc}: {diagnostic.severity}: {text}" if loc else f"{diagnostic.severity}: {text}"
    if loc is None or sources is None or not loc.line:
        return head
    source_line = sources.line(loc)
    if source_line is None:
        return head
    lines = [head, SOURCE_INDENT + visible(source_line.rstrip())]
    if loc.column:
        prefix = visible(source_line[: max(loc.column - 1, 0)])
        lines.append(SOURCE_INDENT + caret_line(prefix, len(prefix) + 1))
    return "\n".join(lines)


def sort_key(diagnostic: Diagnostic) -> tuple[str, int, int]:
    loc = diagnostic.location
    return (loc.file, loc.line, loc.column) if loc else ("", 0, 0)


def counted(n: int, noun: str) -> str:
    """`1 error`, `2 errors`: the counts the verbs print."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def to_json(document: Any) -> str:
    """JSON for `--format json`: indented, keys in the order given, non-JSON values as text."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2, default=jsonable).decode()


def jsonable(value: Any) -> Any:
    """What a rule value looks like in JSON: sets as sorted lists, anything else as its text."""
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    return str(value)
