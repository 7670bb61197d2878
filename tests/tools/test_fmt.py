"""`policyd fmt`: one style, idempotent, comments and continuations kept, meaning never changed."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.cli import main
from policyd.engine import decide
from policyd.policy import Policy, load_policy
from policyd.rules.decision import Decision, Op
from policyd.rules.language import source_blocks
from policyd.tools.fmt import format_rule, format_source
from tests.support import SHIPPED_POLICIES, UNTIMED, fixture, fixture_names, write_policy

SHIPPED_RULES = sorted(SHIPPED_POLICIES.glob("*.rules"))
MESSY = (
    "# NewProxy rules   \n\n\n\nreject   'unknown team'   when not user.metas.team   # say why   \n"
    "set content.metas [ 'team' ]=user.metas.team+'' when ( content.proxy_type in ( 'tcp','udp' ) )\n"
    'reject "port {content.remote_port}" \\\n'
    "        when content.remote_port not in range( 6000 , 7000 )and- 1<0\n\n\n"
)


def run_fmt(*args: str) -> Result:
    return CliRunner().invoke(main, ["fmt", *args])


def messed_up(source: str, rng: random.Random) -> str:
    """The same rules with random spacing between tokens and random continuation indents."""
    out: list[str] = []
    for block, is_rule in source_blocks(source):
        if not is_rule:
            out.append(block.text)
            continue
        toks = [
            t
            for t in tokenize.generate_tokens(io.StringIO(block.text).readline)
            if t.type
            not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
        ]
        text = ""
        for prev, tok in zip([None, *toks], toks, strict=False):
            if prev is not None and tok.start[0] > prev.end[0]:
                text += " " * rng.randint(0, 2) + "\\\n" + " " * rng.randint(0, 9)
            elif prev is not None:
                text += " " * rng.randint(1, 3)
            text += tok.string
        out.append(" " * rng.randint(0, 2) + text + " " * rng.randint(0, 2) + "\n")
    return "".join(out)


def decisions(policy: Policy) -> list[tuple[object, ...]]:
    def key(d: Decision) -> tuple[object, ...]:
        return (d.outcome, d.reason, d.content, [w.message for w in d.warnings], d.error is None)

    out = []
    for name in fixture_names():
        body = fixture(name)
        out.append(key(decide(policy, Op(body["op"]), body["content"], reqid="r", now=1, options=UNTIMED)))
    return out


# -- the style -----------------------------------------------------------------------------
def test_spacing_and_quotes_are_normalised() -> None:
    assert format_source(MESSY) == (
        "# NewProxy rules\n"
        "\n"
        'reject "unknown team" when not user.metas.team  # say why\n'
        'set content.metas["team"] = user.metas.team + "" when (content.proxy_type in ("tcp", "udp"))\n'
        'reject "port {content.remote_port}" \\\n'
        "    when content.remote_port not in range(6000, 7000) and -1 < 0\n"
    )


def test_formatting_twice_changes_nothing() -> None:
    once = format_source(MESSY)
    assert format_source(once) == once


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("let x = sorted( a , key = lower )", "let x = sorted(a, key=lower)"),
        ("let x = {'a' : [ 1 , 2 ][ 1 : ] }", 'let x = {"a": [1, 2][1:]}'),
        ("reject 'x' when not( a )or b", 'reject "x" when not (a) or b'),
        ("let x = a - - 1", "let x = a - -1"),
        ("let x = 2**- 1", "let x = 2 ** -1"),
        ("let x = content . proxy_name . upper ( )", "let x = content.proxy_name.upper()"),
        ("reject 'say \"hi\"'", "reject 'say \"hi\"'"),
        ("reject 'it\\'s'", "reject 'it\\'s'"),
        ("let x = f'{a}b'", "let x = f'{a}b'"),
        ("let x = r'a\\.b'", 'let x = r"a\\.b"'),
        ("let x = [ y for y in z if y ]", "let x = [y for y in z if y]"),
    ],
)
def test_style_of_one_rule(rule: str, expected: str) -> None:
    assert format_rule(rule) == expected + "\n"


def test_a_rule_that_does_not_tokenize_is_kept_as_written() -> None:
    assert format_rule('reject   "x" when (a   \n') == 'reject   "x" when (a\n'


def test_a_comment_ending_in_backslash_is_kept_as_written() -> None:
    # The parser joins the next line to this one (and reports an error); fmt must not guess.
    source = 'reject "a"  # note \\\nreject   "b"\n'
    assert format_source(source) == source


def test_comment_lines_inside_a_continued_rule_stay() -> None:
    source = 'reject "x" \\\n  # why\n'
    assert format_source(source) == 'reject "x" \\\n    # why\n'


# -- meaning -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED_RULES, ids=lambda p: p.name)
def test_shipped_rules_are_formatted(path: Path) -> None:
    source = path.read_text()
    assert format_source(source) == source


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_any_spacing_of_the_shipped_rules_formats_back_to_them(seed: int) -> None:
    rng = random.Random(seed)
    for path in SHIPPED_RULES:
        source = path.read_text()
        assert format_source(messed_up(source, rng)) == source, path.name


def test_formatted_policy_decides_every_fixture_as_before(tmp_path: Path) -> None:
    rng = random.Random(7)
    messy_dir = shutil.copytree(SHIPPED_POLICIES, tmp_path / "messy")
    for path in messy_dir.glob("*.rules"):
        path.write_text(messed_up(path.read_text(), rng))
    formatted_dir = shutil.copytree(messy_dir, tmp_path / "formatted")
    assert run_fmt(str(formatted_dir)).exit_code == 0
    original = decisions(load_policy(SHIPPED_POLICIES))
    assert decisions(load_policy(messy_dir)) == original
    assert decisions(load_policy(formatted_dir)) == original


# -- the verb ------------------------------------------------------------------------------
def test_check_on_the_shipped_policy_passes() -> None:
    result = run_fmt("--check", str(SHIPPED_POLICIES))
    assert result.exit_code == 0
    assert (
        result.stdout.splitlines()[-1]
        == f"0 files would be reformatted, {len(SHIPPED_RULES)} already formatted"
    )


def test_check_names_files_that_would_change_and_changes_nothing(tmp_path: Path) -> None:
    write_policy(tmp_path, {"NewProxy.rules": MESSY, "Ping.rules": 'reject "x"\n'})
    result = run_fmt("--check", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"would reformat {tmp_path / 'NewProxy.rules'}",
        "1 file would be reformatted, 1 already formatted",
    ]
    assert (tmp_path / "NewProxy.rules").read_text() == MESSY


def test_diff_shows_the_change(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": "reject 'x'\n"})
    result = run_fmt("--diff", str(tmp_path))
    assert result.exit_code == 1
    assert "-reject 'x'\n+reject \"x\"\n" in result.stdout
    assert (tmp_path / "Ping.rules").read_text() == "reject 'x'\n"


def test_fmt_rewrites_in_place_then_has_nothing_to_do(tmp_path: Path) -> None:
    write_policy(tmp_path, {"NewProxy.rules": MESSY})
    (tmp_path / "NewProxy.rules").chmod(0o640)
    first = run_fmt(str(tmp_path))
    assert first.exit_code == 0
    assert first.stdout.splitlines()[0] == f"reformatted {tmp_path / 'NewProxy.rules'}"
    assert (tmp_path / "NewProxy.rules").read_text() == format_source(MESSY)
    assert (tmp_path / "NewProxy.rules").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NewProxy.rules"], "no temporary files left"
    assert run_fmt("--check", str(tmp_path)).exit_code == 0


def test_fmt_takes_a_single_file(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": "reject 'x'\n", "Login.rules": "reject 'y'\n"})
    assert run_fmt(str(tmp_path / "Ping.rules")).exit_code == 0
    assert (tmp_path / "Ping.rules").read_text() == 'reject "x"\n'
    assert (tmp_path / "Login.rules").read_text() == "reject 'y'\n"


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    result = run_fmt(str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert f"error: {tmp_path / 'nope'}: no such file or directory" in result.stdout


def test_fmt_check_through_python_dash_m(tmp_path: Path) -> None:
    write_policy(tmp_path, {"Ping.rules": "reject 'x'\n"})
    proc = subprocess.run(
        [sys.executable, "-m", "policyd", "fmt", "--check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"would reformat {tmp_path / 'Ping.rules'}" in proc.stdout.splitlines()
