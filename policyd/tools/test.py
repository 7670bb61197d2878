"""`policyd test`: policy test cases kept next to the policy, in `tests/*.toml`.

Each case decides one request with `engine.decide` (the service's own evaluator) and compares the
decision with what the case expects. The format, in full:

    op = "NewProxy"                            # default op for this file's cases (optional)

    [[case]]
    name = "ports outside the team's range are refused"
    request = "requests/NewProxy-tcp.json"     # frps body or bare content, relative to this file
    override = { remote_port = 7000 }          # merged into the request content (tables key by key)
    remove = ["user.metas.token"]              # dotted paths deleted from the request content
    data = { access = { admins = [] } }        # merged into the policy's data for this case only
    expect = "reject"                          # allow (unchanged) | reject | rewrite
    reason = "tcp/udp ports for team red are 6000-6999 (asked for 7000)"
    # reason_matches = "ports .* are"          # a regex (search) instead of the exact reason
    # rewrite = { metas = { team = "red" } }   # rewrite: merged into the request content, the
    #                                            whole result must equal the answer's content
    warn = []                                  # the warn messages, in order (omit: not checked)
    # content = { ... }                        # inline content instead of `request`
    # reqid = "0123456789abcdef"               # what rules see as `reqid`
    # now = 1700000000                         # what rules see as `now`

A case whose rule fails while deciding always fails, with the error shown.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from policyd.engine import StateBinding, decide
from policyd.errors import Location, PolicydError, did_you_mean
from policyd.policy import Inside, Policy, load_policy, read_policy_file
from policyd.protocol import BadRequest, split_request
from policyd.rules.decision import OPS, Decision, Op, Outcome, TraceStep
from policyd.rules.diagnostics import OutputFormat, to_json
from policyd.rules.language import Action
from policyd.rules.schema import SCHEMAS, Field, Kind, field_of_other_ops
from policyd.state.memory import MemoryBackend
from policyd.state.tracking import Preset, PresetError

TESTS_DIR = "tests"
TEST_SUFFIX = ".toml"

_FILE_KEYS = frozenset({"op", "case"})
_CASE_KEYS = frozenset(
    {
        "name",
        "op",
        "request",
        "content",
        "override",
        "remove",
        "extra_fields",
        "data",
        "expect",
        "reason",
        "reason_matches",
        "rewrite",
        "warn",
        "reqid",
        "now",
        "state",
    }
)
_CASE_HEADER = re.compile(r"^\s*\[\[\s*case\s*\]\]")
_EXPECT = {"allow": Outcome.ALLOW, "reject": Outcome.REJECT, "rewrite": Outcome.REWRITE}


class CaseError(PolicydError):
    """Raised while reading a test case that is malformed; the case then fails with this message."""

    code = "case_error"


@dataclass(frozen=True, slots=True)
class Case:
    """One test case, read and checked: everything needed to decide and compare."""

    file: str
    line: int
    name: str
    op: Op
    content: dict[str, Any]
    expect: Outcome
    data: dict[str, Any] | None = None
    reason: str | None = None
    reason_pattern: re.Pattern[str] | None = None
    rewrite: dict[str, Any] | None = None
    state: Preset | None = None  # sessions, proxies and rate() hits to decide with
    warn: tuple[str, ...] | None = None
    reqid: str = ""
    now: float | None = None


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    problems: list[str] = field(default_factory=list)  # empty when the case passed

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "name": self.name,
            "ok": self.ok,
            "problems": self.problems,
        }


@dataclass
class Coverage:
    """Which rules (reject/allow/set/warn lines, not lets) fired in at least one case."""

    rules: list[tuple[Location, str]]
    fired: set[Location]

    @property
    def never_fired(self) -> list[tuple[Location, str]]:
        return [(loc, source) for loc, source in self.rules if loc not in self.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": len(self.rules),
            "fired": len(self.rules) - len(self.never_fired),
            "never_fired": [{"rule": str(loc), "source": source} for loc, source in self.never_fired],
        }


@dataclass
class TestReport:
    """What `policyd test` found; `ok` when at least one case ran and none failed."""

    __test__ = False  # not a pytest class, despite the name

    results: list[CaseResult]
    coverage: Coverage

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed

    def to_dict(self, with_coverage: bool) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "cases": [r.to_dict() for r in self.results],
            "coverage": self.coverage.to_dict() if with_coverage else None,
        }


# -- reading cases ---------------------------------------------------------------------------
def _json_value(value: Any, where: str) -> Any:
    """TOML values as JSON would carry them; TOML dates and times have no JSON form."""
    if isinstance(value, dict):
        return {k: _json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v, where) for v in value]
    if isinstance(value, str | int | float | bool):
        return value
    raise CaseError(f"{where}: a {type(value).__name__} has no JSON form; write it as a string")


def merged(base: Any, over: Any) -> Any:
    """`over` merged into `base`: tables key by key, any other value replaces."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if key in out else value
    return out


def _removed(content: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(content)
    for path in paths:
        *parents, last = path.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise CaseError(f"remove: the request has no field '{path}'")
        del node[last]
    return out


def _string(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise CaseError(f"'{key}' must be a string")
    return value


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CaseError(f"'{key}' must be a table, e.g. {key} = {{ field = value }}")
    return dict(_json_value(value, key))


def _op(name: Any, where: str) -> Op:
    op = OPS.get(name) if isinstance(name, str) else None
    if op is None:
        hint = did_you_mean(str(name), OPS)
        raise CaseError(f"{where}: unknown op {name!r}" + (f" ({hint})" if hint else ""))
    return op


def _check_fields(value: Any, schema: Field, op: Op, where: str, extra: frozenset[str] = frozenset()) -> None:
    """Every key of a case's own content (inline `content`, `override`, `rewrite`) must be a
    field the op has: a misspelled field would otherwise test a request frps never sends.
    Maps like `metas` take any key; `extra` names top-level fields the case sends on purpose (a
    field a later frps adds). Request files are frps's own bodies and are not checked."""
    if schema.kind is not Kind.RECORD or not isinstance(value, dict):
        return
    for key, sub in value.items():
        if key in extra and "." not in where:
            continue
        if key not in schema.fields:
            hint = did_you_mean(key, schema.fields) or (field_of_other_ops(key) if "." not in where else "")
            raise CaseError(f"{where}: {op} has no field '{key}'" + (f" ({hint})" if hint else ""))
        _check_fields(sub, schema.fields[key], op, f"{where}.{key}")


def _check_path(path: str, schema: Field, op: Op) -> None:
    node = schema
    for key in path.split("."):
        if node.kind is not Kind.RECORD:
            return
        if key not in node.fields:
            hint = did_you_mean(key, node.fields)
            raise CaseError(f"remove: {op} has no field '{path}'" + (f" ({hint})" if hint else ""))
        node = node.fields[key]


def _request(raw: Mapping[str, Any], base: Path, root: Inside | None) -> tuple[dict[str, Any], Op | None]:
    """The case's request content, and the op its frps body names (if it is a body).

    A request file is read as the loader reads policy files (inside `root`, regular files only).
    """
    path, inline = _string(raw, "request"), _table(raw, "content")
    if (path is None) == (inline is None):
        raise CaseError("give exactly one of 'request' (a file) or 'content' (inline)")
    if inline is not None:
        return inline, None
    assert path is not None
    try:
        op, content = split_request(read_policy_file(base / path, path, root))
    except PolicydError as e:
        raise CaseError(f"request file {path}: {e.message}") from None
    except BadRequest as e:
        raise CaseError(f"request file {path}: {e.message}") from None
    return content, op


def read_case(
    raw: Mapping[str, Any], file_op: Op | None, base: Path, file: str, line: int, root: Inside | None = None
) -> Case:
    """Check one `[[case]]` table and resolve its request; raise CaseError saying what is wrong.

    Request files are relative to `base` and must stay inside `root` (the policy directory).
    """
    unknown = sorted(set(raw) - _CASE_KEYS)
    if unknown:
        hint = did_you_mean(unknown[0], _CASE_KEYS)
        raise CaseError(f"unknown key '{unknown[0]}'" + (f" ({hint})" if hint else ""))
    name = _string(raw, "name")
    if not name:
        raise CaseError("every case needs a 'name'")
    content, body_op = _request(raw, base, root)
    named = {op for op in (_op(raw["op"], "op") if "op" in raw else None, body_op, file_op) if op}
    if len(named) != 1:
        raise CaseError(
            "the op is given differently: " + ", ".join(sorted(named))
            if named
            else "no op: set 'op' in the case or the file, or use a request body that names it"
        )
    op = named.pop()
    schema = SCHEMAS[op]
    extra_list = raw.get("extra_fields", [])
    if not isinstance(extra_list, list) or not all(isinstance(f, str) for f in extra_list):
        raise CaseError("'extra_fields' must be a list of field names")
    extra = frozenset(extra_list)
    known = sorted(extra & set(schema.fields))
    if known:
        raise CaseError(f"extra_fields: '{known[0]}' is a field of {op}; list only fields it lacks")
    if "content" in raw:
        _check_fields(content, schema, op, "content", extra)
    override = _table(raw, "override")
    if override is not None:
        _check_fields(override, schema, op, "override", extra)
        content = merged(content, override)
    remove = raw.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(p, str) for p in remove):
        raise CaseError("'remove' must be a list of dotted field paths")
    for path in remove:
        _check_path(path, schema, op)
    content = _removed(content, remove)

    expect_name = _string(raw, "expect")
    if expect_name not in _EXPECT:
        raise CaseError(f"'expect' must be one of {', '.join(_EXPECT)}; got {expect_name!r}")
    expect = _EXPECT[expect_name]
    reason, pattern_text = _string(raw, "reason"), _string(raw, "reason_matches")
    if (reason is not None or pattern_text is not None) and expect is not Outcome.REJECT:
        raise CaseError("'reason' and 'reason_matches' go with expect = \"reject\"")
    if reason is not None and pattern_text is not None:
        raise CaseError("give 'reason' or 'reason_matches', not both")
    try:
        pattern = re.compile(pattern_text) if pattern_text is not None else None
    except re.error as e:
        raise CaseError(f"reason_matches: invalid regex: {e}") from None
    rewrite = _table(raw, "rewrite")
    if rewrite is not None and expect is not Outcome.REWRITE:
        raise CaseError("'rewrite' goes with expect = \"rewrite\"")
    if rewrite is not None:
        _check_fields(rewrite, schema, op, "rewrite", extra)
    warn = raw.get("warn")
    if warn is not None and not (isinstance(warn, list) and all(isinstance(w, str) for w in warn)):
        raise CaseError("'warn' must be a list of messages")
    now = raw.get("now")
    if now is not None and (not isinstance(now, int | float) or isinstance(now, bool)):
        raise CaseError("'now' must be a number (unix seconds)")
    try:
        state = (
            Preset.parse(raw["state"], now if now is not None else time.time()) if "state" in raw else None
        )
    except PresetError as e:
        raise CaseError(str(e)) from None
    return Case(
        file=file,
        line=line,
        name=name,
        op=op,
        content=content,
        expect=expect,
        data=_table(raw, "data"),
        reason=reason,
        reason_pattern=pattern,
        rewrite=merged(content, rewrite) if rewrite is not None else None,
        warn=tuple(warn) if warn is not None else None,
        reqid=_string(raw, "reqid") or "",
        now=now,
        state=state,
    )


def read_test_file(path: Path, shown: str, root: Inside | None = None) -> list[Case | CaseResult]:
    """Every case of one test file; a malformed case comes back as a failed CaseResult."""
    try:
        text = read_policy_file(path, shown, root).decode("utf-8")
        doc = tomllib.loads(text)
    except PolicydError as e:
        return [CaseResult(shown, 0, "(file)", [e.message])]
    except UnicodeDecodeError as e:
        return [CaseResult(shown, 0, "(file)", [f"cannot read: {e}"])]
    except tomllib.TOMLDecodeError as e:
        return [CaseResult(shown, 0, "(file)", [f"invalid TOML: {e}"])]
    unknown = sorted(set(doc) - _FILE_KEYS)
    if unknown:
        return [
            CaseResult(shown, 0, "(file)", [f"unknown top-level key '{unknown[0]}' (cases go in [[case]])"])
        ]
    raw_cases = doc.get("case", [])
    if not isinstance(raw_cases, list) or not all(isinstance(c, dict) for c in raw_cases):
        return [CaseResult(shown, 0, "(file)", ["'case' must be an array of tables: [[case]]"])]
    headers = [i + 1 for i, line in enumerate(text.splitlines()) if _CASE_HEADER.match(line)]
    lines = headers if len(headers) == len(raw_cases) else [0] * len(raw_cases)
    try:
        file_op = _op(doc["op"], "op") if "op" in doc else None
    except CaseError as e:
        return [CaseResult(shown, 0, "(file)", [str(e)])]
    out: list[Case | CaseResult] = []
    for raw, line in zip(raw_cases, lines, strict=True):
        try:
            out.append(read_case(raw, file_op, path.parent, shown, line, root))
        except CaseError as e:
            name = raw.get("name") if isinstance(raw.get("name"), str) else "(unnamed)"
            out.append(CaseResult(shown, line, name, [f"invalid test case: {e}"]))
    return out


def test_files(directory: Path) -> list[Path]:
    """The test files of a policy directory: `tests/*.toml`, in name order."""
    tests = directory / TESTS_DIR
    if not tests.is_dir():
        return []
    return sorted(p for p in tests.glob(f"*{TEST_SUFFIX}") if p.is_file() and not p.name.startswith("."))


# -- running and comparing -------------------------------------------------------------------
def _pretty(value: Any) -> list[str]:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()


def _diff(expected: list[str], got: list[str]) -> list[str]:
    return [
        line.rstrip("\n") for line in difflib.unified_diff(expected, got, "expected", "got", lineterm="", n=2)
    ]


def _describe(decision: Decision) -> str:
    by = f" by {decision.rule}" if decision.rule else ""
    if decision.outcome is Outcome.REJECT:
        return f"reject{by}: {decision.reason!r}"
    if decision.outcome is Outcome.REWRITE:
        changed = ", ".join(c.path for c in decision.changes)
        return f"rewrite{by} (changed: {changed})"
    return f"allow{by} (unchanged)"


def compare(case: Case, decision: Decision) -> list[str]:
    """What differs between the case's expectation and the decision; empty when it passes."""
    if decision.error is not None:
        return [f"a rule failed while deciding: {decision.error}"]
    problems: list[str] = []
    if decision.outcome is not case.expect:
        problems.append(f"expected {case.expect.value}, got {_describe(decision)}")
        if decision.outcome is Outcome.REWRITE and decision.content is not None:
            problems.extend(_diff(_pretty(case.content), _pretty(decision.content)))
    elif case.reason is not None and decision.reason != case.reason:
        problems.append("reject reason differs:")
        problems.extend([f"- {case.reason}", f"+ {decision.reason}"])
    elif case.reason_pattern is not None and not case.reason_pattern.search(decision.reason):
        problems.append(f"reject reason does not match /{case.reason_pattern.pattern}/: {decision.reason!r}")
    elif case.rewrite is not None and _pretty(decision.content) != _pretty(case.rewrite):
        # Compared as JSON: 1 and true, or 1 and 1.0, are different answers for frps.
        problems.append("rewritten content differs:")
        problems.extend(_diff(_pretty(case.rewrite), _pretty(decision.content)))
    got_warns = [w.message for w in decision.warnings]
    if case.warn is not None and list(case.warn) != got_warns:
        problems.append("warnings differ:")
        problems.extend(_diff(list(case.warn), got_warns))
    return problems


def run_case(policy: Policy, case: Case, trace: list[TraceStep] | None = None) -> list[str]:
    """Decide the case's request with `policy` (its data overridden if asked); the problems found."""
    if case.data is not None:
        unknown = sorted(set(case.data) - set(policy.data))
        if unknown:
            hint = did_you_mean(unknown[0], policy.data)
            return [
                f"invalid test case: data: no data file named '{unknown[0]}'" + (f" ({hint})" if hint else "")
            ]
        policy = dataclasses.replace(policy, data=merged(policy.data, case.data))
    # Every case decides with a state of its own: empty, or what it presets (nothing records).
    backend = MemoryBackend()
    if case.state is not None:
        backend.preset(case.state, case.now if case.now is not None else time.time())
    binding = StateBinding(backend, recording=False)
    decision = decide(
        policy, case.op, case.content, reqid=case.reqid, now=case.now, trace=trace, state=binding
    )
    return compare(case, decision)


def run_policy_tests(
    policy: Policy,
    directory: Path,
    pattern: re.Pattern[str] | None = None,
    links_into: tuple[Path, ...] = (),
) -> TestReport:
    """Run every case under `directory/tests/` against `policy`; never raises for a bad case.

    Test and request files must resolve inside `directory` or one of `links_into`.
    """
    rules = [
        (s.location, s.source)
        for rule_file in policy.rules.values()
        for s in rule_file.statements
        if s.action is not Action.LET
    ]
    coverage = Coverage(rules, set())
    results: list[CaseResult] = []
    for path in test_files(directory):
        shown = f"{TESTS_DIR}/{path.name}"
        for item in read_test_file(path, shown, (directory, *links_into)):
            if isinstance(item, CaseResult):
                results.append(item)  # a broken case or file is reported whatever the filter
                continue
            if pattern is not None and not pattern.search(item.name):
                continue
            trace: list[TraceStep] = []
            problems = run_case(policy, item, trace)
            coverage.fired.update(s.rule for s in trace if s.fired and s.action != Action.LET.value)
            results.append(CaseResult(item.file, item.line, item.name, problems))
    return TestReport(results, coverage)


def render_text(report: TestReport, directory: Path, with_coverage: bool) -> str:
    lines: list[str] = []
    for r in report.results:
        lines.append(f"{'PASS' if r.ok else 'FAIL'} {r.where}: {r.name}")
        lines.extend(f"    {p}" for p in r.problems)
    if not report.results:
        lines.append(f"no test cases found in {directory / TESTS_DIR}/*{TEST_SUFFIX}")
    if with_coverage:
        cov = report.coverage
        missing = cov.never_fired
        head = f"coverage: {len(cov.rules) - len(missing)} of {len(cov.rules)} rules fired"
        lines.append(head + ("; never fired:" if missing else ""))
        lines.extend(f"    {loc}: {source}" for loc, source in missing)
    lines.append(f"{report.passed} passed, {report.failed} failed")
    return "\n".join(lines)


def run_tests(
    directory: Path,
    out: TextIO,
    *,
    coverage: bool = False,
    output: OutputFormat = OutputFormat.PRETTY,
    run: str | None = None,
) -> TestReport:
    """`policyd test DIR`: load the policy, run its test cases, write a line per case and a summary.

    Raises PolicyLoadError when the policy does not load, re.error for a bad `run` pattern.
    """
    policy = load_policy(directory)
    report = run_policy_tests(policy, directory, re.compile(run) if run else None)
    if output is OutputFormat.JSON:
        out.write(to_json(report.to_dict(coverage)) + "\n")
    else:
        out.write(render_text(report, directory, coverage) + "\n")
    return report
