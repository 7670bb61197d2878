"""`policyd check`: load the policy exactly as the service does, then lint what loaded.

Errors come from `load_policy` (every one it found). Warnings come from a lint pass over the
compiled statements: rules that load but cannot do what they say. They never stop a policy from
serving; they are for the operator reading `policyd check`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

from policyd.errors import PolicyError, PolicyLoadError
from policyd.policy import Policy, RuleFile, load_policy
from policyd.rules.decision import Op
from policyd.rules.diagnostics import (
    Diagnostic,
    OutputFormat,
    Severity,
    SourceFiles,
    counted,
    render,
    sort_key,
    to_json,
)
from policyd.rules.language import Action
from policyd.rules.statements import Statement


class LintWarning(PolicyError):
    """Not raised: a finding about a policy that loads, where a rule is likely not what was meant."""

    code = "lint_warning"


class UnreachableRule(LintWarning):
    """A rule below an unconditional reject/allow: evaluation always ends before it."""

    code = "unreachable_rule"


class IgnoredChange(LintWarning):
    """A rule whose effect frps throws away (content it ignores, an answer it ignores)."""

    code = "ignored_change"


# Fields frps reads from the request but not from the answer: setting them changes nothing.
# Login: frps keeps the connection's own address; `client_address` is not part of the login it uses.
IGNORED_FIELDS: Mapping[Op, frozenset[str]] = MappingProxyType({Op.LOGIN: frozenset({"client_address"})})


def _unreachable(rule_file: RuleFile) -> Iterator[LintWarning]:
    ender: Statement | None = None
    for statement in rule_file.statements:
        if ender is not None:
            yield UnreachableRule(
                f"this rule never runs: the '{ender.action.value}' without 'when' "
                f"on line {ender.location.line} always ends evaluation before it",
                statement.location,
            )
        elif statement.action in (Action.REJECT, Action.ALLOW) and statement.condition is None:
            ender = statement


def _ignored(rule_file: RuleFile) -> Iterator[LintWarning]:
    op = rule_file.op
    for statement in rule_file.statements:
        action = statement.action
        if op is Op.CLOSE_PROXY and action in (Action.REJECT, Action.SET):
            yield IgnoredChange(
                f"frps ignores the answer to CloseProxy: this '{action.value}' changes nothing",
                statement.location,
                hint="use 'warn' for an audit line",
            )
        elif op is Op.NEW_USER_CONN and action is Action.SET:
            yield IgnoredChange(
                "frps ignores changed content for NewUserConn (only reject/allow counts): "
                "this 'set' reaches only the rules below it",
                statement.location,
            )
        elif action is Action.SET and statement.path[0] in IGNORED_FIELDS.get(op, ()):
            yield IgnoredChange(
                f"frps does not read content.{statement.path[0]} back from the {op} answer: "
                "this 'set' changes nothing for frps",
                statement.location,
            )


def lint(policy: Policy) -> list[LintWarning]:
    """Every warning for a loaded policy, in file order."""
    warnings: list[LintWarning] = []
    if not policy.rules:
        warnings.append(LintWarning("no rule files here: frps gets 'allow unchanged' for every op"))
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
        }


def check_policy(directory: Path) -> CheckReport:
    """Load `directory` as the service would and lint it; never raises for a bad policy."""
    try:
        policy = load_policy(directory)
    except PolicyLoadError as e:
        return CheckReport(directory, None, [Diagnostic(Severity.ERROR, err) for err in e.errors])
    found = [Diagnostic(Severity.WARNING, w) for w in lint(policy)]
    return CheckReport(directory, policy, sorted(found, key=sort_key))


def summary(report: CheckReport) -> str:
    if report.policy is None:
        return f"{report.directory}: {counted(len(report.errors), 'error')}; the policy does not load"
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
    sources = SourceFiles(directory)
    for diagnostic in report.diagnostics:
        out.write(render(diagnostic, sources) + "\n")
    out.write(summary(report) + "\n")
    return report
