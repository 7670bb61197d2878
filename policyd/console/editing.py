"""Trying an edit and saving it: the candidate policy is loaded and tested before anything is written.

`check_edit` loads the whole candidate (the serving directory with the one file replaced) exactly as
the service would, lints it, and runs `policyd test`'s cases when the directory has `tests/`.
`save_edit` writes the file only when that candidate loads (and its cases pass, unless the caller
accepts failing cases), atomically, after making sure the file on disk is still the one the editor
opened; the service's hot reload then picks it up as it picks up any edit. Since the candidate held
exactly what the directory holds after the write, the reload loads: a save is never the broken edit
that last-good protects against.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyd.console.errors import ConsoleError
from policyd.console.files import (
    candidate_directory,
    current_sha256,
    file_kind,
    read_file,
    sha256,
)
from policyd.errors import PolicyLoadError
from policyd.policy import Policy, load_policy, policy_sources
from policyd.rules.diagnostics import Diagnostic, SourceFiles, render
from policyd.tools.check import lint
from policyd.tools.fmt import write_atomically
from policyd.tools.test import TESTS_DIR, run_policy_tests

log = logging.getLogger("policyd.console")

Pause = Callable[[], None]


def diagnostics(found: Iterable[Diagnostic], sources: SourceFiles) -> list[dict[str, Any]]:
    """Errors and findings as the console shows them: the JSON fields plus `policyd check`'s text
    (the line, and a caret under the column)."""
    return [{**d.to_dict(), "text": render(d, sources)} for d in found]


def load_candidate(
    directory: Path, previous: Policy | None, pause: Pause | None, links_into: tuple[Path, ...] = ()
) -> tuple[Policy | None, list[dict[str, Any]]]:
    """Load a directory as the service would: the policy, or None and its errors (with carets).

    A candidate's files are links into the serving directory, `links_into`.
    """
    try:
        return load_policy(directory, pause=pause, previous=previous, links_into=links_into), []
    except PolicyLoadError as e:
        return None, diagnostics(map(Diagnostic.of, e.errors), policy_sources(directory, links_into))


@dataclass
class EditReport:
    """What an edit would do: the candidate's load errors or version, lint, test cases, the diff."""

    path: str
    version_before: str
    version_after: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    tests: dict[str, Any] | None = None  # policyd test's report; None without tests/
    diff: str = ""
    unchanged: bool = False
    saved: bool = False

    @property
    def loads(self) -> bool:
        return self.version_after is not None

    @property
    def tests_fail(self) -> bool:
        return self.tests is not None and (self.tests["failed"] > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "loads": self.loads,
            "version_before": self.version_before,
            "version_after": self.version_after,
            "errors": self.errors,
            "warnings": self.warnings,
            "tests": self.tests,
            "diff": self.diff,
            "unchanged": self.unchanged,
            "saved": self.saved,
        }


def _diff(rel: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{rel}", f"b/{rel}"
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def check_edit(root: Path, rel: str, text: str, serving: Policy, *, pause: Pause | None = None) -> EditReport:
    """Load and test the candidate `root` with `rel` holding `text`; never writes to `root`."""
    file_kind(rel)
    try:
        old, _ = read_file(root, rel)
    except ConsoleError as e:
        if e.status != 404:
            raise
        old = ""
    report = EditReport(rel, serving.version, diff=_diff(rel, old, text), unchanged=old == text)
    with candidate_directory(root, rel, text) as candidate:
        serving_dir = (root.resolve(),)
        policy, report.errors = load_candidate(candidate, serving, pause, serving_dir)
        if policy is None:
            return report
        report.version_after = policy.version
        report.warnings = diagnostics(lint(policy), policy_sources(candidate, serving_dir))
        if (candidate / TESTS_DIR).is_dir():
            tests = run_policy_tests(policy, candidate, links_into=serving_dir)
            report.tests = tests.to_dict(with_coverage=False)
    return report


def save_edit(
    root: Path,
    rel: str,
    text: str,
    *,
    base_sha256: str | None,
    serving: Policy,
    who: str,
    allow_failing_tests: bool = False,
    pause: Pause | None = None,
) -> EditReport:
    """Check the edit, then write it atomically; otherwise raise ConsoleError, with the report
    attached, having written nothing.

    `base_sha256` is the hash of the file the editor opened (None: it means to create the file);
    a file changed on disk since then is a conflict, not overwritten.
    """
    path = root / rel
    if path.is_symlink():
        raise ConsoleError(
            f"{rel} is a symbolic link (managed by a deployment tool?): edit where it points", 409, "symlink"
        )
    if current_sha256(root, rel) != base_sha256:
        raise ConsoleError(
            f"{rel} changed on disk since it was opened: reload it and edit again", 409, "conflict"
        )
    report = check_edit(root, rel, text, serving, pause=pause)
    if not report.loads:
        raise ConsoleError(
            f"{rel}: the policy would not load; nothing was written", 422, "does_not_load", report.to_dict()
        )
    if report.tests_fail and not allow_failing_tests:
        assert report.tests is not None
        raise ConsoleError(
            f"{rel}: {report.tests['failed']} test case(s) would fail; nothing was written",
            422,
            "tests_fail",
            report.to_dict(),
        )
    if report.unchanged:
        return report
    if current_sha256(root, rel) != base_sha256:  # changed while the candidate was checked
        raise ConsoleError(f"{rel} changed on disk while the edit was checked: reload it", 409, "conflict")
    path.parent.mkdir(exist_ok=True)
    write_atomically(path, text, suffix=".console")
    report.saved = True
    log.info(
        "console save by %s: %s (sha256 %s -> %s), policy %s -> %s",
        who,
        rel,
        (base_sha256 or "new")[:12],
        sha256(text.encode())[:12],
        report.version_before,
        report.version_after,
    )
    return report
