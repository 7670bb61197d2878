"""`policyd check`: load the policy exactly as the service does, then lint what loaded.

Errors come from `load_policy` (every one it found). Warnings come from a lint pass over the
compiled statements: rules that load but cannot do what they say. They never stop a policy from
serving; they are for the operator reading `policyd check`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from policyd.errors import Location, PolicyLoadError, limit_note
from policyd.policy import Policy, RuleFile, load_policy, policy_sources
from policyd.rules.decision import Op
from policyd.rules.diagnostics import (
    Diagnostic,
    OutputFormat,
    Severity,
    counted,
    render,
    sort_key,
    to_json,
)
from policyd.rules.language import Action
from policyd.rules.schema import set_takes_effect
from policyd.rules.statements import Statement


class Lint(enum.StrEnum):
    """The codes of lint findings: warnings about a policy that loads."""

    UNREACHABLE_RULE = "unreachable_rule"  # below an unconditional reject/allow: never runs
    IGNORED_CHANGE = "ignored_change"  # an effect frps throws away (content or answer it ignores)


def _warning(code: Lint, message: str, location: Location | None = None, hint: str = "") -> Diagnostic:
    return Diagnostic(Severity.WARNING, code.value, message, location, hint)


def _unreachable(rule_file: RuleFile) -> Iterator[Diagnostic]:
    ender: Statement | None = None
    for statement in rule_file.statements:
        if ender is not None:
            yield _warning(
                Lint.UNREACHABLE_RULE,
                f"this rule never runs: the '{ender.action.value}' without 'when' "
                f"on line {ender.location.line} always ends evaluation before it",
                statement.location,
            )
        elif statement.action in (Action.REJECT, Action.ALLOW) and statement.condition is None:
            ender = statement


def _ignored(rule_file: RuleFile) -> Iterator[Diagnostic]:
    op = rule_file.op
    for statement in rule_file.statements:
        action = statement.action
        if op is Op.CLOSE_PROXY and action in (Action.REJECT, Action.SET):
            yield _warning(
                Lint.IGNORED_CHANGE,
                f"frps ignores the answer to CloseProxy: this '{action.value}' changes nothing",
                statement.location,
                hint="use 'warn' for an audit line",
            )
        elif op is Op.NEW_USER_CONN and action is Action.SET:
            yield _warning(
                Lint.IGNORED_CHANGE,
                "frps ignores changed content for NewUserConn (only reject/allow counts): "
                "this 'set' reaches only the rules below it",
                statement.location,
            )
        elif action is Action.SET and not set_takes_effect(op, statement.path):
            # A field frps sends but does not read back (schema.Field.read_back).
            yield _warning(
                Lint.IGNORED_CHANGE,
                f"frps does not read content.{'.'.join(statement.path)} back from the {op} answer: "
                "this 'set' changes nothing for frps",
                statement.location,
            )


def lint(policy: Policy) -> list[Diagnostic]:
    """Every warning for a loaded policy: the loader's own (policy.LoadWarning: no rule files,
    near-miss file names), then the lint findings, in file order."""
    warnings: list[Diagnostic] = list(policy.warnings)
    for rule_file in policy.rules.values():
        warnings.extend(_unreachable(rule_file))
        warnings.extend(_ignored(rule_file))
    return warnings


@dataclass
class CheckReport:
    """What `policyd check` found; `ok` when the policy loads (warnings allowed)."""

    directory: Path
    policy: Policy | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    errors_omitted: int = 0  # errors found beyond the load's limit (errors.MAX_LOAD_ERRORS)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "version": self.policy.version if self.policy else None,
            "errors": [d.to_dict() for d in self.errors],
            "warnings": [d.to_dict() for d in self.warnings],
            "errors_omitted": self.errors_omitted,
        }


def check_policy(directory: Path) -> CheckReport:
    """Load `directory` as the service would and lint it; never raises for a bad policy."""
    try:
        policy = load_policy(directory)
    except PolicyLoadError as e:
        return CheckReport(directory, None, [Diagnostic.of(err) for err in e.errors], e.omitted)
    return CheckReport(directory, policy, sorted(lint(policy), key=sort_key))


def summary(report: CheckReport) -> str:
    if report.policy is None:
        found = len(report.errors) + report.errors_omitted
        return f"{report.directory}: {counted(found, 'error')}; the policy does not load"
    warnings = counted(len(report.warnings), "warning")
    p = report.policy
    return (
        f"{report.directory}: policy {p.version} loads: {p.rule_count} rules in {len(p.rules)} files, "
        f"{len(p.data_files)} data files; {warnings}"
    )


def check(directory: Path, out: TextIO, *, output: OutputFormat = OutputFormat.PRETTY) -> CheckReport:
    """`policyd check DIR`: write every error and warning to `out` and return the report."""
    report = check_policy(directory)
    if output is OutputFormat.JSON:
        out.write(to_json(report.to_dict()) + "\n")
        return report
    sources = policy_sources(directory)
    for diagnostic in report.diagnostics:
        out.write(render(diagnostic, sources) + "\n")
    if report.errors_omitted:
        out.write(limit_note(report.errors_omitted) + "\n")
    out.write(summary(report) + "\n")
    return report
