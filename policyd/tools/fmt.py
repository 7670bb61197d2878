"""`policyd fmt`: one spacing and quoting style for rule files, and never a change of meaning.

Rules are re-spaced token by token, with the tokenizer the parser uses and the parser's own
grouping of lines (`language.source_blocks`), so comments and `\\` continuations stay where they
are. Each formatted rule is tokenized again and must give the same tokens (strings compared by
value); a rule that does not, or does not tokenize at all, is kept as written. Formatting is
idempotent: formatted text formats to itself.

The style: one space between words and around binary operators and top-level `=`; none inside
brackets, before `,` `:` `)` or after unary `-`, nor around `.`, keyword `=` and slice `:`;
`"double quotes"` where the string contains no quote; continuation lines indented by four
spaces; one blank line at most between rules; comments as written, two spaces before a trailing one.
"""

from __future__ import annotations

import ast
import difflib
import io
import keyword
import os
import tempfile
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from policyd.errors import Location, PolicyError
from policyd.policy import RULES_SUFFIX, read_policy_file
from policyd.rules.diagnostics import counted
from policyd.rules.language import hidden_characters, logical_lines, source_blocks

CONTINUATION_INDENT = "    "

_LAYOUT = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 splits f-strings
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)
# Words after which '(' or '[' opens a group (`not (a)`) rather than a call or an index.
_WORDS = (set(keyword.kwlist) - {"True", "False", "None"}) | {"when"}
_OPENERS, _CLOSERS = "([{", ")]}"
_UNARY = {"-", "+", "~"}
_STARS = {"*", "**"}


@dataclass(frozen=True, slots=True)
class _Tok:
    type: int
    string: str
    start: tuple[int, int]
    end: tuple[int, int]


def _tokens(text: str) -> list[_Tok]:
    """Every token but layout, f-strings merged back into one STRING (as Python < 3.12 has them)."""
    rows = text.splitlines()
    out: list[_Tok] = []
    fstring: tuple[int, int] | None = None
    depth = 0
    for t in tokenize.generate_tokens(io.StringIO(text).readline):
        if t.type == _FSTRING_START:
            if depth == 0:
                fstring = t.start
            depth += 1
        elif t.type == _FSTRING_END:
            depth -= 1
            if depth == 0 and fstring is not None:
                row, col = fstring
                out.append(_Tok(tokenize.STRING, rows[row - 1][col : t.end[1]], fstring, t.end))
                fstring = None
        elif depth == 0 and t.type not in _LAYOUT:
            if t.type == tokenize.ERRORTOKEN and not t.string.isspace():
                raise SyntaxError(f"unexpected character {t.string!r}")
            if t.type != tokenize.ERRORTOKEN:
                out.append(_Tok(t.type, t.string, t.start, t.end))
    return out


def _string(raw: str) -> str:
    """A string literal in double quotes, when that changes nothing but the quotes."""
    quote_at = next((i for i, ch in enumerate(raw) if ch in "'\""), len(raw))
    prefix, body = raw[:quote_at], raw[quote_at:]
    if body.startswith(("'''", '"""')) or not body.startswith("'") or "f" in prefix.lower():
        return raw
    inner = body[1:-1]
    if "'" in inner or '"' in inner:
        return raw
    return f'{prefix}"{inner}"'


def _is_unary(tok: _Tok, prev: _Tok | None, prev_is_head: bool) -> bool:
    if tok.type != tokenize.OP or tok.string not in _UNARY | _STARS:
        return False
    if prev is None or prev_is_head:
        return True
    if prev.type == tokenize.OP and prev.string not in _CLOSERS:
        return tok.string in _UNARY or prev.string in ("(", "[", "{", ",")
    return prev.type == tokenize.NAME and prev.string in _WORDS and tok.string in _UNARY


def _space(prev: _Tok, tok: _Tok, stack: list[str], prev_is_head: bool) -> str:
    """The space between two tokens on one line."""
    p = prev.string if prev.type == tokenize.OP else ""
    s = tok.string if tok.type == tokenize.OP else ""
    if tok.type == tokenize.COMMENT:
        return "  "
    if prev_is_head:
        return " "
    if not s and not p:
        return " "  # between words, numbers and strings
    if (s and s in _CLOSERS) or (p and p in _OPENERS):
        return ""
    if s in (",", ":", "."):
        return ""
    if p == ",":
        return " "
    if p == ".":
        return ""
    if s in ("(", "["):
        if prev.type == tokenize.NAME and prev.string not in _WORDS:
            return ""  # a call or an index
        return "" if prev.type == tokenize.STRING or p in (")", "]", "}") else " "
    if p == ":":
        return "" if stack and stack[-1] == "[" else " "
    if "=" in (s, p):
        return "" if stack else " "  # keyword argument inside brackets, assignment outside
    return " "


def _emit(tokens: list[_Tok]) -> str:
    pieces: list[str] = []
    stack: list[str] = []
    prev: _Tok | None = None
    glued = False  # the previous token was a unary operator: no space after it
    for i, tok in enumerate(tokens):
        prev_is_head = i == 1  # after the statement keyword (reject, allow, set, warn, let)
        if prev is None:
            sep = ""
        elif tok.start[0] > prev.end[0]:
            sep = " \\\n" + CONTINUATION_INDENT
        elif glued:
            sep = ""
        else:
            sep = _space(prev, tok, stack, prev_is_head)
        text = tok.string
        if tok.type == tokenize.STRING:
            text = _string(text)
        elif tok.type == tokenize.COMMENT:
            text = text.rstrip()
        pieces.append(sep + text)
        glued = _is_unary(tok, prev, prev_is_head)
        if tok.type == tokenize.OP and tok.string in _OPENERS:
            stack.append(tok.string)
        elif tok.type == tokenize.OP and tok.string in _CLOSERS and stack:
            stack.pop()
        prev = tok
    return "".join(pieces) + "\n"


def _literal(raw: str) -> object:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # f-strings: compared as written


def _same_tokens(a: list[_Tok], b: list[_Tok]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.type != y.type:
            return False
        if x.type == tokenize.STRING:
            if x.string != y.string and (type(_literal(x.string)), _literal(x.string)) != (
                type(_literal(y.string)),
                _literal(y.string),
            ):
                return False
        elif x.type == tokenize.COMMENT:
            if x.string.rstrip() != y.string.rstrip():
                return False
        elif x.string != y.string:
            return False
    return True


def _verbatim(text: str) -> str:
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def format_rule(text: str) -> str:
    """One rule (a block of `\\`-continued lines) in the house style, or as written if unsafe."""
    source = text if text.endswith("\n") else text + "\n"
    try:
        tokens = _tokens(source)
        newlines = sum(
            1 for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.NEWLINE
        )
    except (tokenize.TokenError, SyntaxError):
        return _verbatim(text)
    if not tokens or newlines != 1:
        return _verbatim(text)  # not one statement: leave it for `policyd check` to report
    formatted = _emit(tokens)
    try:
        same = _same_tokens(tokens, _tokens(formatted)) and len(list(logical_lines(formatted))) == 1
    except (tokenize.TokenError, SyntaxError):
        same = False
    return formatted if same else _verbatim(text)


def format_source(source: str) -> str:
    """A whole rule file in the house style."""
    lines: list[str] = []
    for block, is_rule in source_blocks(source):
        if is_rule:
            lines.extend(format_rule(block.text).splitlines())
            continue
        text = block.text.strip()
        if text:
            lines.append(text)  # a comment line
        elif lines and lines[-1]:
            lines.append("")  # one blank line at most
    while lines and not lines[-1]:
        lines.pop()
    return "".join(line + "\n" for line in lines)


# -- the verb --------------------------------------------------------------------------------
@dataclass
class FmtReport:
    """What `policyd fmt` did or would do; `ok` when nothing needs (or needed) a change."""

    files: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.changed and not self.errors


def rule_files(paths: list[Path]) -> tuple[list[Path], list[PolicyError]]:
    """The rule files named by `paths`: files as given, directories' top-level `*.rules`."""
    files: list[Path] = []
    errors: list[PolicyError] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.glob(f"*{RULES_SUFFIX}") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            errors.append(PolicyError("no such file or directory", Location(str(path))))
    return files, errors


def write_atomically(path: Path, text: str | bytes, *, suffix: str = ".tmp") -> None:
    """Replace (or create) `path` so that a reader sees the old file or the new one, never a part.

    The service hot-reloads the policy directory: it must never read a half-written file. The
    temporary file sits in the same directory (a rename is atomic only within a file system), its
    name starts with '.' (the loader skips it) and ends in `suffix`; it is flushed to disk before
    the rename, and the rename itself after. An existing file keeps its permission bits.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def fmt(paths: list[Path], out: TextIO, *, check: bool = False, diff: bool = False) -> FmtReport:
    """`policyd fmt`: format rule files in place, or with `check`/`diff` only say what would change."""
    files, errors = rule_files(paths)
    report = FmtReport(files, [], errors)
    for path in files:
        try:
            source = read_policy_file(path, str(path)).decode("utf-8")
        except PolicyError as e:
            report.errors.append(e)
            continue
        except UnicodeDecodeError as e:
            report.errors.append(PolicyError(f"cannot read: {e}", Location(str(path))))
            continue
        hidden = hidden_characters(str(path), source)
        if hidden:  # formatting would have to decide which lines the reader meant
            report.errors.extend(hidden)
            continue
        formatted = format_source(source)
        if formatted == source:
            continue
        report.changed.append(path)
        if diff:
            out.writelines(
                difflib.unified_diff(
                    source.splitlines(keepends=True),
                    formatted.splitlines(keepends=True),
                    str(path),
                    str(path),
                )
            )
        elif check:
            out.write(f"would reformat {path}\n")
        else:
            write_atomically(path, formatted, suffix=".fmt")
            out.write(f"reformatted {path}\n")
    for error in report.errors:
        out.write(f"error: {error}\n")
    n, unchanged = len(report.changed), len(files) - len(report.changed)
    verb = "would be reformatted" if check or diff else "reformatted"
    out.write(f"{counted(n, 'file')} {verb}, {unchanged} already formatted\n")
    return report
