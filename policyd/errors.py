"""Errors as data: one hierarchy, each with a stable code, a message and a location.

The same fields render as text for people (`file:line:col: error: message`) and as JSON for
`/status` and `policyd check --format json`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a policy file; line and column are 1-based (column 0 means "whole line")."""

    file: str
    line: int = 0
    column: int = 0

    @property
    def rule(self) -> str:
        """`file:line`: names a rule in metrics and the decision log (a rule is one logical line)."""
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        if not self.line:
            return self.file
        if not self.column:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


class PolicyError(Exception):
    """Base of every error policyd reports about a policy; `code` is stable per phase."""

    code = "policy_error"

    def __init__(self, message: str, location: Location | None = None, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return f"{self.location}: {text}" if self.location else text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, location={self.location!s})"
        )

    def at(self, location: Location) -> PolicyError:
        """Attach a location when the error was raised where none was known."""
        if self.location is None:
            self.location = location
        return self

    def to_dict(self) -> dict[str, Any]:
        loc = self.location
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "file": loc.file if loc else "",
            "line": loc.line if loc else 0,
            "column": loc.column if loc else 0,
        }


class ParseError(PolicyError):
    """Raised when a rule or data file is not well-formed (what was expected is in the message)."""

    code = "parse_error"


class ValidationError(PolicyError):
    """Raised at load time for a well-formed rule that uses a name, field or feature it may not."""

    code = "validation_error"


class EvaluationError(PolicyError):
    """Raised while deciding a request, e.g. a type error; the op then fails closed."""

    code = "eval_error"


class LimitError(EvaluationError):
    """Raised when a rule exceeds a sandbox limit (size, steps, time) while deciding a request."""

    code = "limit_error"


class PolicyLoadError(Exception):
    """Raised when a policy directory does not load; carries every error found, not just one."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A "did you mean 'x'?" hint for a misspelled name, or "" when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
