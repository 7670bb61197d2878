"""Errors as data: one base class, each error with a stable code, a message and a location.

Every error policyd shows people is a PolicydError: the policy's own errors (PolicyError: parse,
validation, evaluation, limits), a policy that does not load, a bad setting, a request frps
would never send, a malformed test case. The same fields render as text for people
(`file:line:col: error: message (hint)`) and as JSON for `/status`, the decision log and
`--format json`. docs/errors.md has one entry per code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Errors one policy load reports; the rest are counted ("error limit reached, N more").
MAX_LOAD_ERRORS = 100


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


class PolicydError(Exception):
    """Base of every error policyd reports; `code` is stable and names the kind of error."""

    code = "policyd_error"

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

    def at(self, location: Location) -> PolicydError:
        """Attach a location when the error was raised where none was known."""
        if self.location is None:
            self.location = location
        return self

    def to_dict(self) -> dict[str, Any]:
        return error_fields(self.code, self.message, self.hint, self.location)


class PolicyError(PolicydError):
    """An error about a policy: a file that cannot be read or is misnamed, or one of the below."""

    code = "policy_error"


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


class StateError(EvaluationError):
    """Raised when a state function's backend cannot answer in time (`--state-failure closed`):
    the rule fails, so the op fails closed unless it is a fail-open op."""

    code = "state_error"


class UnsafeFileError(PolicyError):
    """Raised for a policy file the loader will not read: one that resolves outside the policy
    directory (a symlink out of it) or is not a regular file (a FIFO, a device, a directory)."""

    code = "unsafe_file"


class LoadLimitError(PolicyError):
    """Raised when a policy as a whole exceeds a total: data files, their bytes, expression parts."""

    code = "load_limit"


class InternalError(PolicyError):
    """Raised when loading a file failed in a way policyd does not expect (a bug in policyd).

    Still a positioned policy error, counted like any other: the previous policy keeps serving.
    """

    code = "internal_error"


class StartupError(PolicydError):
    """Raised when `policyd serve` cannot start serving, e.g. its port is in use (exit 2)."""

    code = "startup_error"


class PolicyLoadError(PolicydError):
    """Raised when a policy directory does not load; carries every error found, not just one.

    At most `limit` errors are kept; `omitted` counts the others.
    """

    code = "load_failed"

    def __init__(self, errors: Sequence[PolicyError], limit: int = MAX_LOAD_ERRORS) -> None:
        self.errors = list(errors[:limit])
        self.omitted = max(len(errors) - limit, 0)
        super().__init__("\n".join([*(str(e) for e in self.errors), *filter(None, [self.limit_note])]))

    @property
    def count(self) -> int:
        """How many errors the load found, kept and omitted."""
        return len(self.errors) + self.omitted

    @property
    def limit_note(self) -> str:
        return limit_note(self.omitted)

    def __str__(self) -> str:
        return self.message


def error_fields(code: str, message: str, hint: str, location: Location | None) -> dict[str, Any]:
    """The JSON fields of an error or finding: code, message, hint, file, line, column."""
    return {
        "code": code,
        "message": message,
        "hint": hint,
        "file": location.file if location else "",
        "line": location.line if location else 0,
        "column": location.column if location else 0,
    }


def limit_note(omitted: int) -> str:
    """`error limit reached, N more` when a load omitted errors (MAX_LOAD_ERRORS), else ""."""
    return f"error limit reached, {omitted} more" if omitted else ""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A "did you mean 'x'?" hint for a misspelled name, or "" when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
