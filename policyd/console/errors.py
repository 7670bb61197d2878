"""The console's refusals as data: one PolicydError class, with the HTTP status and a stable kind.

The JSON APIs answer `{"error": message, "code": kind}` with `status`; docs/console.md lists the
kinds (`bad_path`, `conflict`, `does_not_load`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policyd.errors import PolicydError


class ConsoleError(PolicydError):
    """Raised when the console refuses a call: a bad path or body, a conflict, an edit that would
    not load, a token file that does not parse. `status` is the HTTP status it is answered with,
    `kind` the stable code it names (docs/console.md)."""

    code = "console_error"

    def __init__(
        self,
        message: str,
        status: int = 400,
        kind: str = "bad_request",
        report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.report = report  # what a refused save found (EditReport.to_dict()), when there is one
