"""The docs say what the code does: generated tables, rule examples, sessions, codes, the code map.

README.md and docs/*.md are read as they are committed. Every ```rules block must load, the
sessions of docs/cli.md are what the verbs print, the settings and metrics tables are what
`python -m policyd.service.docgen` generates, errors.md has one entry per error code, the code
map names the package's tree, and every local link resolves.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from policyd.cli import main
from policyd.engine import decide
from policyd.errors import PolicydError
from policyd.policy import LoadWarning, load_policy
from policyd.rules.decision import OPS, TraceStep
from policyd.rules.language import Action
from policyd.service.decisionlog import DecisionLog
from policyd.service.docgen import TABLES, regenerate
from policyd.service.metrics import METRICS, SHADOW_METRICS, Metrics
from policyd.service.settings import DEFAULTS, Settings
from policyd.service.shadow import (
    SHADOW_MAX_SHARE,
    SHADOW_QUEUE_MAX,
    SHADOW_QUEUE_MAX_BYTES,
    SHADOW_SLICE_S,
    open_shadow,
)
from policyd.service.store import PolicyStore, ReloadNotice
from policyd.state.memory import MemoryBackend
from policyd.tools.check import Lint
from policyd.tools.history import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VERSIONS,
    MEMORY_MAX_BYTES,
    MEMORY_MAX_VERSIONS,
    render_versions,
)
from policyd.tools.recording import RecordKey, header, record_of
from policyd.tools.rollout import decided_by
from policyd.tools.test import read_case, run_case, run_policy_tests
from tests.helpers import error_classes
from tests.support import ROOT, SHIPPED_POLICIES, fixture, write_policy

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted(DOCS.glob("*.md"))]


def block_after(text: str, marker: str, fence: str = "```") -> str:
    """The fenced block that starts at (or right after) `marker`, without its fences."""
    at = text.index(marker)
    if not marker.startswith(fence):
        at = text.rindex("\n" + fence, 0, at) + 1 if text[:at].rstrip().endswith(fence) else at
    start = text.index("\n", at) + 1 if marker.startswith(fence) else at
    return text[start : text.index(fence, start)]


def session(page: str, command: str) -> list[str]:
    """The lines a docs session shows after `$ <command>`, up to the next `$ ` or the fence."""
    text = (DOCS / page).read_text()
    start = text.index(f"$ {command}\n") + len(command) + 3
    lines = []
    for line in text[start:].splitlines():
        if line.startswith(("$ ", "```")):
            break
        lines.append(line)
    return lines


# -- generated tables ------------------------------------------------------------------------
@pytest.mark.parametrize("page", sorted(TABLES))
def test_generated_tables_are_what_the_code_generates(page: str) -> None:
    text = (ROOT / page).read_text()
    assert regenerate(text, TABLES[page]) == text, f"{page} is stale: run python -m policyd.service.docgen"


def test_the_metric_registry_is_every_metric_policyd_exports(tmp_path: Path) -> None:
    """Every metric but the shadow's from start; the shadow's once a shadow is configured."""
    policies = write_policy(tmp_path, {"Ping.rules": "allow\n"})
    store = PolicyStore(policies)
    metrics = Metrics(store, handler_path="/handler")
    metrics.register_state(MemoryBackend(), lambda: ((0, 0), ""))  # as create_app does

    def exported() -> dict[str, str]:
        return dict(re.findall(r"^# HELP (policyd_\S+) (.*)$", metrics.render().decode(), re.MULTILINE))

    assert exported() == {spec.exported: spec.help for spec in METRICS if spec not in SHADOW_METRICS}
    open_shadow(Settings(policies=policies, shadow_policies=policies), store, DecisionLog(None), metrics)
    assert exported() == {spec.exported: spec.help for spec in METRICS}


# -- rules in the docs -----------------------------------------------------------------------
STATEMENTS = ("reject ", "allow", "set ", "warn ", "let ")
CASES = re.compile(r"\s*<!-- cases[^\n]*\n(.*?)^-->", re.MULTILINE | re.DOTALL)  # right after the block


@dataclass(frozen=True)
class Example:
    """A ```rules block of a page, and the cases of the HTML comment right after it."""

    where: str
    op: str
    rules: str
    cases: str | None


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^```rules\n(.*?)^```\n", text, re.MULTILINE | re.DOTALL):
            where = f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            header = re.match(r"# (\w+)\.rules", match[1])
            cases = CASES.match(text, match.end())
            found.append(Example(where, header[1] if header else "", match[1], cases[1] if cases else None))
    return found


def example_policy(example: Example, directory: Path) -> Path:
    """The example as a policy, with the shipped data and its cases as tests/<Op>.toml."""
    shutil.copytree(SHIPPED_POLICIES / "data", directory / "data")
    write_policy(directory, {f"{example.op}.rules": example.rules})
    (directory / "tests").mkdir()
    (directory / "tests" / f"{example.op}.toml").write_text(f'op = "{example.op}"\n\n{example.cases or ""}')
    return directory


EXAMPLES = examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_every_rule_example_does_what_its_cases_say(example: Example, tmp_path: Path) -> None:
    assert example.op in OPS, f"{example.where}: a rules block starts with '# <Op>.rules'"
    assert example.cases, f"{example.where}: add a <!-- cases ... --> comment after the block"
    policies = example_policy(example, tmp_path)
    policy = load_policy(policies)
    written = [line for line in example.rules.splitlines() if line.strip() and not line.startswith("#")]
    assert len(policy.rules[OPS[example.op]].statements) == len(written)
    report = run_policy_tests(policy, policies)
    assert report.failed == 0 and report.passed >= 2, [(r.name, r.problems) for r in report.results]
    assert not report.coverage.never_fired, f"{example.where}: no case fires {report.coverage.never_fired}"
    # ... and each rule with a condition also stays quiet in some case.
    cases = tomllib.loads(example.cases)["case"]
    quiet: set[int] = set()
    for raw in cases:  # decided as policyd test decides them: on the state each case presets
        case = read_case(raw, OPS[example.op], policies / "tests", "cases", 0, None)
        trace: list[TraceStep] = []
        run_case(policy, case, trace)
        quiet |= {step.rule.line for step in trace if not step.fired}
        reached = {step.rule.line for step in trace}
        quiet |= {s.location.line for s in policy.rules[OPS[example.op]].statements} - reached
    for statement in policy.rules[OPS[example.op]].statements:
        if statement.condition is not None and statement.action is not Action.LET:
            assert statement.location.line in quiet, f"{example.where}: every case fires {statement.source!r}"


def test_no_rule_example_hides_in_another_kind_of_block() -> None:
    """A block of rules must be a ```rules block, so that the test above finds it."""
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            lines = [line for line in match[2].splitlines() if line.strip()]
            if match[1] != "rules" and lines and not lines[0].startswith(("$", "#")):
                hidden = lines[0].startswith(STATEMENTS)
                assert not hidden, f"{page.name}: tag this block ```rules: {lines[0]}"


# -- the sessions of docs/cli.md -------------------------------------------------------------
def test_the_eval_session_is_what_eval_prints() -> None:
    command = (
        "policyd eval --op NewProxy --content "
        """'{"user": {"user": "bob", "metas": {"token": "tk-bob"}}, """
        """"proxy_type": "tcp", "remote_port": 6022}'"""
    )
    content = command.split("--content ", 1)[1].strip("'")
    args = ["eval", "--policies", str(SHIPPED_POLICIES), "--op", "NewProxy", "--content", content]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    def unversioned(lines: list[str]) -> list[str]:
        return [re.sub(r"policy [0-9a-f]{12}\)", "policy VERSION)", line) for line in lines]

    assert unversioned(result.stdout.splitlines()) == unversioned(session("cli.md", command))


def test_the_fmt_session_is_what_fmt_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    diff = session("cli.md", "policyd fmt --diff policies/Ping.rules")
    hunk = diff[diff.index(next(line for line in diff if line.startswith("@@"))) + 1 : -1]
    shutil.copytree(SHIPPED_POLICIES, tmp_path / "policies")
    (tmp_path / "policies" / "Ping.rules").write_text(
        "".join(line[1:] + "\n" for line in hunk if line[0] in " -")
    )
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["fmt", "--diff", "policies/Ping.rules"]).stdout.splitlines() == diff
    assert CliRunner().invoke(main, ["fmt", "policies"]).stdout.splitlines() == session(
        "cli.md", "policyd fmt policies"
    )


def test_the_frps_config_session_is_what_frps_config_prints() -> None:
    command = "policyd frps-config --ops Login,NewProxy,NewUserConn --addr 10.0.0.2:9000"
    result = CliRunner().invoke(main, [*command.split()[1:], "--policies", str(SHIPPED_POLICIES)])
    assert result.stdout.splitlines() == session("cli.md", command)


def test_the_frps_version_session_is_what_frps_config_prints_with_its_warnings() -> None:
    command = "policyd frps-config --frps-version 0.33.0"
    result = CliRunner().invoke(main, [*command.split()[1:], "--policies", str(SHIPPED_POLICIES)])
    assert result.stdout.splitlines() == session("cli.md", command)
    text = (DOCS / "cli.md").read_text()
    shown = block_after(text, "```\npolicyd: warning: CloseProxy.rules").splitlines()
    assert result.stderr.splitlines() == shown


def test_the_fields_session_is_what_fields_prints() -> None:
    command = "policyd fields CloseProxy"
    assert CliRunner().invoke(main, command.split()[1:]).stdout.splitlines() == session("cli.md", command)


def test_the_test_session_shows_lines_test_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = session("cli.md", "policyd test policies --coverage")
    policies = shutil.copytree(SHIPPED_POLICIES, tmp_path / "policies")
    cases = policies / "tests" / "NewProxy.toml"
    cases.write_text(cases.read_text().replace("6000-6999 (asked for 7000)", "6000-6999 (asked for 7001)"))
    monkeypatch.chdir(tmp_path)
    printed = iter(CliRunner().invoke(main, ["test", "policies", "--coverage"]).stdout.splitlines())
    for line in shown:
        if line != "...":
            assert line in printed, f"{line!r} is not printed (in this order)"


def test_the_test_case_example_passes_on_the_shipped_policy(tmp_path: Path) -> None:
    example = block_after((DOCS / "cli.md").read_text(), "```toml\n# policies/tests/NewProxy.toml")
    policies = shutil.copytree(SHIPPED_POLICIES, tmp_path / "policies")
    for path in (policies / "tests").glob("*.toml"):
        path.unlink()
    (policies / "tests" / "NewProxy.toml").write_text(example)
    report = run_policy_tests(load_policy(policies), policies)
    assert (report.passed, report.failed) == (2, 0), [r.problems for r in report.results]


# -- codes, the code map, links --------------------------------------------------------------
def test_errors_md_has_one_entry_per_code() -> None:
    documented = re.findall(r"^### (\w+)$", (DOCS / "errors.md").read_text(), re.MULTILINE)
    codes = {cls.code for cls in error_classes() if cls is not PolicydError}
    codes |= {code.value for enum in (Lint, LoadWarning, ReloadNotice) for code in enum}
    assert sorted(documented) == sorted(codes)


def test_readmes_code_map_names_the_tree() -> None:
    text = (ROOT / "README.md").read_text()
    mapped = set(re.findall(r"^\| `(policyd/[^`]*)` \|", text, re.MULTILINE))
    tree = {
        f"policyd/{p.name}/" if p.is_dir() else f"policyd/{p.name}"
        for p in (ROOT / "policyd").iterdir()
        if p.name not in ("__init__.py", "__main__.py", "py.typed", "__pycache__")
    }
    assert mapped == tree


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", page.read_text()):
        path, anchor = target
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"{page.name} links to {path}#{anchor}"


# -- docs/rollout.md -------------------------------------------------------------------------
def rollout_scenario(root: Path) -> None:
    """The recording and the candidate of docs/rollout.md's replay session, under `root`: the
    shipped policy, and a candidate with the page's two rules added."""
    shutil.copytree(SHIPPED_POLICIES, root / "policies")
    candidate = shutil.copytree(SHIPPED_POLICIES, root / "candidate")
    text = (DOCS / "rollout.md").read_text()
    encryption = block_after(text, "# NewProxy.rules (in the shipped").splitlines()[-1]
    rules = (candidate / "NewProxy.rules").read_text()
    last_set = "\nset content.metas.team"
    (candidate / "NewProxy.rules").write_text(rules.replace(last_set, f"\n{encryption}{last_set}"))
    with (candidate / "NewUserConn.rules").open("a") as visitors:
        visitors.write(block_after(text, "# NewUserConn.rules (added").splitlines()[-1] + "\n")
    http = fixture("NewProxy-http")
    del http["content"]["custom_domains"]
    key = b"an example key, 32 bytes long.."
    (root / "record.key").write_bytes(key + b"\n")
    record_key, policy = RecordKey(key), load_policy(root / "policies")
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    lines = [header(record_key, start)]
    requests = [fixture("Login-basic"), http, fixture("NewUserConn-https"), fixture("Ping-basic")]
    for n, body in enumerate(requests):
        op, at, reqid = OPS[body["op"]], start + timedelta(seconds=n), f"5f0c2b1e9d8a7c{n:02x}"
        decision = decide(policy, op, body["content"], reqid=reqid, now=at.timestamp())
        by = decided_by(policy, op)
        lines.append(record_of(op, "0.1.0", body["content"], reqid, decision, at, record_key, by))
    (root / "requests.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def test_the_replay_session_is_what_replay_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rollout_scenario(tmp_path)
    monkeypatch.chdir(tmp_path)
    command = "policyd replay requests.jsonl --policies candidate --key record.key"
    result = CliRunner().invoke(main, command.split()[1:])
    assert result.exit_code == 1

    def shipped_independent(lines: list[str]) -> list[str]:
        """Versions and line numbers move with every edit of the shipped policy; the rest may not."""
        return [
            re.sub(r"\.rules:\d+", ".rules:N", re.sub(r"policy [0-9a-f]{12}", "policy V", x)) for x in lines
        ]

    assert shipped_independent(result.output.splitlines()) == shipped_independent(
        session("rollout.md", command)
    )


def test_the_history_listing_is_what_history_prints() -> None:
    lines = session("rollout.md", "policyd history --history-dir /var/lib/policyd/history")
    rows = [line.split("  ") for line in lines[1:-1]]
    doc = {
        "persistent": True,
        "max_versions": DEFAULT_MAX_VERSIONS,
        "max_bytes": DEFAULT_MAX_BYTES,
        "stored_bytes": int(9.8 * 1024),
        "versions": [
            {
                "version": row[0],
                "first_served": row[1],
                "last_served": None if "serving" in lines[i + 1] else lines[i + 1].split()[2],
                "changed": {"added": [], "modified": ["NewProxy.rules"] if i == 0 else [], "removed": []},
            }
            for i, row in enumerate(rows)
        ],
    }
    assert render_versions(doc, "/var/lib/policyd/history").splitlines() == lines


def test_the_shadow_bounds_in_the_docs_are_the_code_s() -> None:
    text = " ".join((DOCS / "rollout.md").read_text().split())
    assert f"`shadow_eval_budget_ms` ({DEFAULTS.shadow_eval_budget_ms:g} ms;" in text
    assert f"at most {SHADOW_SLICE_S * 1000:g} ms before requests run again" in text
    assert f"at most {SHADOW_MAX_SHARE:.0%} of the serving thread's time" in text
    assert f"at most {SHADOW_QUEUE_MAX:,} requests ({SHADOW_QUEUE_MAX_BYTES // 2**20} MiB of bodies)" in text
    assert f"the last {MEMORY_MAX_VERSIONS} versions (at most {MEMORY_MAX_BYTES // 2**20} MiB" in text
