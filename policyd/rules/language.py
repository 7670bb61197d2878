"""The rule language's syntax: one statement per (logical) line, parsed into a tree per expression.

    reject "REASON {expr}" [when EXPR]
    allow [when EXPR]
    set content.PATH = EXPR [when EXPR]
    warn "MESSAGE {expr}" [when EXPR]
    let NAME = EXPR

A trailing backslash continues a rule on the next line; `#` starts a comment. This module stops at
tokens and the AST, as simpleeval separates parsing from evaluation: `parse_rule` turns one line
into a ParsedRule (expressions as `ast` trees, every part with its location), and
policyd.rules.statements validates and compiles it. Every error carries `file:line:col` and what
was expected.
"""

from __future__ import annotations

import ast
import enum
import io
import re
import tokenize
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from policyd.errors import Location, ParseError, did_you_mean
from policyd.rules.sandbox import MAX_RULE_CHARS

# Maps an expression's AST position (line, column) to where it is in the rule file.
Locator = Callable[[int, int], Location]


class Action(enum.Enum):
    REJECT = "reject"
    ALLOW = "allow"
    SET = "set"
    WARN = "warn"
    LET = "let"


_SKIP = {
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.COMMENT,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}
_OPEN, _CLOSE = "([{", ")]}"


@dataclass(frozen=True, slots=True)
class Expression:
    """One expression of a rule, parsed: its tree and where its nodes are in the file."""

    tree: ast.expr
    locate: Locator  # the AST's (line, col) → file location, columns in characters


@dataclass(frozen=True, slots=True)
class Key:
    """A name of a rule with its place: a step of a `set` path, or the name a `let` defines."""

    name: str
    location: Location


@dataclass(frozen=True, slots=True)
class ParsedRule:
    """One rule as written, checked for syntax only: what policyd.rules.statements compiles.

    `target` is the `set` path below `content` (at least one key) or the `let` name; `message`
    is the reject/warn template as literal text and `{expr}` parts.
    """

    action: Action
    location: Location
    source: str
    condition: Expression | None = None
    message: tuple[str | Expression, ...] | None = None
    value: Expression | None = None
    target: tuple[Key, ...] = ()


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    line: int  # 1-based line number of the first physical line


# Characters that break a line for some readers and not for others (Python's str.splitlines()
# and some editors break at \x0b \x0c \x1c-\x1e \x85 \u2028 \u2029 and a lone \r; `git diff`
# and most editors do not), that terminals act on instead of showing (other C0 and C1
# controls, DEL), or that reorder how a line is shown (bidi controls, "Trojan Source"). A rule
# file holding one could run a rule its reviewers see as part of a comment or a string.
_HIDING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\r")
_CONTROL_NAMES = {
    "\x00": "NUL",
    "\x0b": "VERTICAL TAB",
    "\x0c": "FORM FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x1c": "FILE SEPARATOR",
    "\x1d": "GROUP SEPARATOR",
    "\x1e": "RECORD SEPARATOR",
    "\x1f": "UNIT SEPARATOR",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


def hidden_characters(path: str, source: str) -> list[ParseError]:
    """An error for each line of a rule file that holds a character which hides text (_HIDING).

    Tabs and newlines are fine, and so is a carriage return right before a newline (a file
    saved with Windows line ends). Rule files are split on `\n` only, so that the lines the
    loader sees are the lines every editor and `git diff` shows.
    """
    errors: list[ParseError] = []
    for number, row in enumerate(source.split("\n"), 1):
        found = next((m for m in _HIDING.finditer(row) if m.group() != "\r" or m.end() < len(row)), None)
        if found is None:
            continue
        ch = found.group()
        name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "") or "control character"
        what = f"U+{ord(ch):04X} ({name.lower()})"
        if ch in _LINE_BREAKS:
            why = (
                "some readers break the line there and others do not, so the text after it "
                "could be a rule of its own while editors and `git diff` show one line"
            )
        elif ch in "\u061c\u200e\u200f" or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069":
            why = "it changes the order in which the line is shown, so what runs is not what is read"
        else:
            why = "editors do not show it and terminals act on it, so the line is not what is read"
        errors.append(
            ParseError(
                f"character {what} is not allowed in a rule file: {why}",
                Location(path, number, found.start() + 1),
                hint=f"delete it; in a string, write it as the escape '\\u{ord(ch):04x}'",
            )
        )
    return errors


def visible(text: str) -> str:
    """`text` with every character that hides text (_HIDING) written as its escape, `\\u001c`:
    how diagnostics quote a line, so that a terminal shows what the file holds."""
    return _HIDING.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def physical_lines(source: str) -> list[str]:
    """A rule file's lines, split on `\n` only, each with its `\n` (the last may have none)."""
    rows = source.split("\n")
    lines = [row + "\n" for row in rows[:-1]]
    if rows[-1]:
        lines.append(rows[-1])
    return lines


def source_blocks(source: str) -> Iterator[tuple[Line, bool]]:
    """Every line of a rule file, grouped as the parser groups them, and whether it is a rule.

    Backslash-continued lines form one block; blank and comment-only lines come one by one.
    `policyd fmt` walks these so that it sees exactly the rules the parser sees. Lines end at
    `\n` only (hidden_characters refuses the other line breaks).
    """
    lines = physical_lines(source)
    i = 0
    while i < len(lines):
        start = i
        parts = [lines[i]]
        # Look at the last physical line only: re-stripping the joined text made this quadratic.
        comment = lines[i].lstrip().startswith("#")
        while not comment and parts[-1].rstrip("\r\n").endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        i += 1
        text = "".join(parts)
        stripped = text.strip()
        yield Line(text, start + 1), bool(stripped) and not stripped.startswith("#")


def logical_lines(source: str) -> Iterator[Line]:
    """Join backslash-continued lines; skip blank and comment-only lines."""
    for block, is_rule in source_blocks(source):
        if is_rule:
            text = block.text
            yield Line(text if text.endswith("\n") else text + "\n", block.line)


class _RuleParser:
    """Parses one logical line into a ParsedRule."""

    def __init__(self, path: str, line: Line) -> None:
        self.path = path
        self.line = line
        self.rows = physical_lines(line.text)

    # -- positions -------------------------------------------------------------------------
    def loc(self, row: int, col: int) -> Location:
        """Tokenizer (row, col) → file location (1-based column)."""
        return Location(self.path, self.line.line + row - 1, col + 1)

    def offset(self, row: int, col: int) -> int:
        return sum(len(r) for r in self.rows[: row - 1]) + col

    def error(self, tok: tokenize.TokenInfo | None, message: str, hint: str = "") -> ParseError:
        row, col = tok.start if tok else (1, 0)
        return ParseError(message, self.loc(row, col), hint=hint)

    # -- tokens ----------------------------------------------------------------------------
    def tokens(self) -> list[tokenize.TokenInfo]:
        toks: list[tokenize.TokenInfo] = []
        try:
            for t in tokenize.generate_tokens(io.StringIO(self.line.text).readline):
                if t.type not in _SKIP:
                    toks.append(t)
        except tokenize.TokenError as e:
            msg = str(e.args[0]) if e.args else "cannot read this rule"
            row, col = e.args[1] if len(e.args) > 1 else (1, 0)
            self.check_brackets(toks)  # a stray ')' makes the tokenizer report the end of the rule
            if "unterminated string" in msg:  # Python 3.12+
                raise self.unterminated(row, col) from None
            if "multi-line" in msg:
                msg = "a bracket is opened and never closed"
            raise ParseError(msg, self.loc(min(row, len(self.rows)), col)) from None
        except (SyntaxError, IndentationError) as e:
            raise ParseError(e.msg, self.loc(e.lineno or 1, (e.offset or 1) - 1)) from None
        for t in toks:
            if t.type == tokenize.ERRORTOKEN and t.string in ("'", '"'):
                raise self.unterminated(*t.start)
            if t.type == tokenize.ERRORTOKEN and not t.string.isspace():
                raise self.error(t, f"unexpected character {t.string!r}")
        self.check_brackets(toks)
        return toks

    def unterminated(self, row: int, col: int) -> ParseError:
        quote = self.rows[min(row, len(self.rows)) - 1][col : col + 1] or '"'
        return ParseError(
            f"this string is never closed: it needs a {quote} before the end of the line",
            self.loc(row, col),
            hint=f"add the closing {quote}",
        )

    def check_brackets(self, toks: list[tokenize.TokenInfo]) -> None:
        """A ParseError at the first bracket that closes nothing or the wrong one, or that
        is never closed; nothing when they pair up."""
        stack: list[tokenize.TokenInfo] = []
        for t in toks:
            if t.type != tokenize.OP:
                continue
            if t.string in _OPEN:
                stack.append(t)
            elif t.string in _CLOSE:
                if not stack:
                    raise self.error(
                        t,
                        f"'{t.string}' closes a bracket that was never opened",
                        f"remove it, or add the '{_OPEN[_CLOSE.index(t.string)]}' it closes",
                    )
                opener = stack.pop()
                want = _CLOSE[_OPEN.index(opener.string)]
                if t.string != want:
                    at = self.loc(*opener.start)
                    raise self.error(
                        t,
                        f"'{t.string}' does not close the '{opener.string}' opened at {at.line}:{at.column}",
                        f"close that one with '{want}' first",
                    )
        if stack:
            raise self.error(stack[-1], f"'{stack[-1].string}' is opened and never closed")

    @staticmethod
    def split_when(
        toks: list[tokenize.TokenInfo],
    ) -> tuple[list[tokenize.TokenInfo], list[tokenize.TokenInfo] | None]:
        depth = 0
        for i, t in enumerate(toks):
            if t.type == tokenize.OP and t.string in _OPEN:
                depth += 1
            elif t.type == tokenize.OP and t.string in _CLOSE:
                depth -= 1
            elif depth == 0 and t.type == tokenize.NAME and t.string == "when":
                return toks[:i], toks[i + 1 :]
        return toks, None

    # -- pieces ----------------------------------------------------------------------------
    def expression(self, toks: list[tokenize.TokenInfo], what: str, after: tokenize.TokenInfo) -> Expression:
        if not toks:
            raise ParseError(f"expected {what} after '{after.string}'", self.loc(after.end[0], after.end[1]))
        start, end = toks[0].start, toks[-1].end
        src = self.line.text[self.offset(*start) : self.offset(*end)]
        if any(t.type == tokenize.NAME and t.string == "when" for t in toks):
            bad = next(t for t in toks if t.string == "when")
            raise self.error(bad, "'when' may appear only once per rule, outside brackets")

        def locate(lineno: int, col: int) -> Location:
            row = start[0] + lineno - 1
            return self.loc(row, start[1] + col if lineno == 1 else col)

        try:
            tree = ast.parse(src, mode="eval")
        except SyntaxError as e:
            lineno, col = e.lineno or 1, max((e.offset or 1) - 1, 0)
            if e.msg == "invalid syntax" and _at_end(src, lineno, col):
                msg = f"the expression ends too early, after '{toks[-1].string}'"
                lineno, col = toks[-1].end[0] - start[0] + 1, toks[-1].end[1]
                if lineno == 1:
                    col -= start[1]
            else:
                msg = _syntax_message(e.msg, src, lineno, col)
            raise ParseError(msg, locate(lineno, col)) from None
        return Expression(tree.body, _byte_columns(src, locate))

    def template(self, tok: tokenize.TokenInfo) -> tuple[str | Expression, ...]:
        raw = tok.string
        quote = raw[-1]
        prefix = raw[: raw.index(quote)]
        # A reason is a template with or without the f of an f-string: `reject f"..."` means
        # the same as `reject "..."`. Other prefixes and triple quotes are refused.
        if prefix.lower() not in ("", "f") or raw[len(prefix) :].startswith(quote * 3):
            raise self.error(tok, 'expected a plain "quoted" string (no r/b/u prefixes, no triple quotes)')
        raw = raw[len(prefix) :]
        body = raw[1:-1]
        parts: list[str | Expression] = []
        literal: list[str] = []
        i = 0
        row, col0 = tok.start[0], tok.start[1] + len(prefix) + 1
        while i < len(body):
            ch = body[i]
            if ch in "{}" and body[i : i + 2] == ch * 2:
                literal.append(ch)
                i += 2
                continue
            if ch == "}":
                raise ParseError(
                    "single '}' in a message; write '}}' for a literal brace",
                    self.loc(row, col0 + i),
                )
            if ch != "{":
                j = i
                while j < len(body) and body[j] not in "{}":
                    j += 1
                literal.append(str(_string_literal(quote + body[i:j] + quote, self.loc(row, col0 + i))))
                i = j
                continue
            end = _matching_brace(body, i)
            if end < 0:
                raise ParseError(
                    "'{' in a message is never closed; write '{{' for a literal brace",
                    self.loc(row, col0 + i),
                )
            src = body[i + 1 : end]
            if not src.strip():
                raise ParseError("empty {} in a message", self.loc(row, col0 + i))
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(self._template_expr(src, row, col0 + i + 1))
            i = end + 1
        if literal:
            parts.append("".join(literal))
        return tuple(parts)

    def _template_expr(self, src: str, row: int, col: int) -> Expression:
        lead = len(src) - len(src.lstrip())
        spec = _format_spec_at(src)
        if spec >= 0:
            kind = "conversions (!r, !s, !a)" if src[spec] == "!" else "format specs ({x:>5}, {x:05d})"
            raise ParseError(
                f"in {{...}}: {kind} are not supported in a message",
                self.loc(row, col + spec),
                hint="write the value alone, {x}, or build the text with functions and methods",
            )

        def locate(lineno: int, c: int) -> Location:
            return self.loc(row, col + lead + c)

        try:
            tree = ast.parse(src.strip(), mode="eval")
        except SyntaxError as e:
            lineno, c = e.lineno or 1, max((e.offset or 1) - 1, 0)
            msg = _syntax_message(e.msg, src.strip(), lineno, c)
            raise ParseError(f"in {{...}}: {msg}", locate(lineno, c)) from None
        return Expression(tree.body, _byte_columns(src.strip(), locate))

    def after_message(self, message: tokenize.TokenInfo, after: tokenize.TokenInfo, what: str) -> ParseError:
        """The error for a token after a reason/message: most often a quote inside `{...}`
        that ended the message early (`"x {"a"}"`), which deserves the fix, not the grammar."""
        quote = message.string[-1]
        opened = message.string.count("{") - 2 * message.string.count("{{") > message.string.count("}")
        if quote in "'\"" and (opened or after.start == message.end):
            other = "'" if quote == '"' else '"'
            return self.error(
                after,
                f"the {what} ended at the {quote} before this: a {quote} inside the {what} closes it",
                f"inside {{...}} use the other kind of quote, {other}: "
                f"{quote}... {{x == {other}a{other}}}{quote}",
            )
        return self.error(after, f"expected 'when' or the end of the rule after the {what}")

    def set_path(self, toks: list[tokenize.TokenInfo], keyword: tokenize.TokenInfo) -> tuple[Key, ...]:
        if not toks or toks[0].string != "content":
            raise self.error(toks[0] if toks else keyword, "expected 'content.FIELD' after 'set'")
        path: list[Key] = []
        i = 1
        while i < len(toks):
            t = toks[i]
            if t.string == "." and i + 1 < len(toks) and toks[i + 1].type == tokenize.NAME:
                key_tok, key, i = toks[i + 1], toks[i + 1].string, i + 2
            elif (
                t.string == "["
                and i + 2 < len(toks)
                and toks[i + 1].type == tokenize.STRING
                and toks[i + 2].string == "]"
            ):
                key_tok, i = toks[i + 1], i + 3
                literal = _string_literal(key_tok.string, self.loc(*key_tok.start))
                if not isinstance(literal, str):
                    raise self.error(key_tok, "expected a string key in set path")
                key = literal
            else:
                raise self.error(t, "expected '.field' or '[\"key\"]' in the set path")
            path.append(Key(key, self.loc(*key_tok.start)))
        if not path:
            raise self.error(keyword, "set needs a field: 'set content.FIELD = value'")
        return tuple(path)

    # -- statement -------------------------------------------------------------------------
    def parse(self) -> ParsedRule:
        if len(self.line.text) > MAX_RULE_CHARS:  # before tokenizing: 1 MB took seconds
            raise ParseError(f"rule is longer than {MAX_RULE_CHARS} characters", self.loc(1, 0))
        toks = self.tokens()
        head = toks[0]
        names = [a.value for a in Action]
        if head.type != tokenize.NAME or head.string not in names:
            hint = did_you_mean(head.string, names)
            raise self.error(head, f"expected one of {', '.join(names)}; got {head.string!r}", hint)
        action = Action(head.string)
        location = self.loc(*head.start)
        source = " ".join(self.line.text.replace("\\\n", " ").split())
        body, cond_toks = self.split_when(toks[1:])
        when_tok = toks[len(body) + 1] if cond_toks is not None else None
        if action is Action.LET:
            if cond_toks is not None:
                raise self.error(when_tok, "'let' takes no 'when'; use 'x if cond else y'")
            if len(body) < 2 or body[0].type != tokenize.NAME or body[1].string != "=":
                raise self.error(body[0] if body else head, "expected 'let NAME = value'")
            name = Key(body[0].string, self.loc(*body[0].start))
            value = self.expression(body[2:], "a value", body[1])
            return ParsedRule(action, location, source, value=value, target=(name,))

        def condition() -> Expression | None:
            if cond_toks is None or when_tok is None:
                return None
            return self.expression(cond_toks, "a condition", when_tok)

        if action in (Action.REJECT, Action.WARN):
            what = "reason" if action is Action.REJECT else "message"
            if not body or body[0].type != tokenize.STRING:
                raise self.error(
                    body[0] if body else head,
                    f"expected a \"quoted\" {what} after '{action.value}'",
                )
            if len(body) > 1:
                raise self.after_message(body[0], body[1], what)
            message = self.template(body[0])
            return ParsedRule(action, location, source, condition(), message=message)
        if action is Action.ALLOW:
            if body:
                raise self.error(body[0], "expected 'when' or the end of the rule after 'allow'")
            return ParsedRule(action, location, source, condition())
        eq = next((i for i, t in enumerate(body) if t.type == tokenize.OP and t.string == "="), None)
        if eq is None:
            eqeq = next((t for t in body if t.type == tokenize.OP and t.string == "=="), None)
            if eqeq is not None:
                raise self.error(eqeq, "'==' compares; 'set' assigns with '=': set content.FIELD = value")
            raise self.error(body[-1] if body else head, "expected '=' in 'set content.FIELD = value'")
        path = self.set_path(body[:eq], head)
        value = self.expression(body[eq + 1 :], "a value", body[eq])
        return ParsedRule(action, location, source, condition(), value=value, target=path)


def parse_rule(path: str, line: Line) -> ParsedRule:
    """Parse one logical line of the rule file `path`; raise ParseError saying what was expected.

    Python's own parser gives up on deep nesting (`1+1+...` 3,000 times) with RecursionError,
    which is reported as an error of the rule too.
    """
    try:
        return _RuleParser(path, line).parse()
    except RecursionError:
        raise ParseError("expression nests too deeply", Location(path, line.line)) from None


def _format_spec_at(src: str) -> int:
    """Where a `:` or `!` at the top level of a `{...}` part starts a format spec or a
    conversion, as in an f-string (`{x:05d}`, `{x!r}`); -1 when there is none."""
    for i, ch, depth in _unquoted(src):
        if depth == 0 and (ch == ":" or (ch == "!" and src[i + 1 : i + 2] != "=")):
            return i
    return -1


def _unquoted(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, brackets open after it) of each character of `text` outside quotes."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        else:
            depth += (ch in "([{") - (ch in ")]}")
            yield i, ch, depth


def _syntax_message(msg: str, src: str, lineno: int, col: int) -> str:
    """CPython's message, made specific where it is vague about what went wrong."""
    if _is_lone_equals(src, lineno, col) or "Maybe you meant '==' or ':='" in msg:
        return "'=' assigns; to compare, write '=='"
    if msg == "invalid syntax":
        rows = src.splitlines() or [""]
        found = re.match(r"\w+|\S", rows[min(lineno, len(rows)) - 1][col:])
        if found:
            return f"invalid syntax: unexpected {found.group()!r}"
    return msg


def _is_lone_equals(src: str, lineno: int, col: int) -> bool:
    """Whether a syntax error points at a single '=' (not '==', '<=', '!=', ...)."""
    rows = src.splitlines() or [""]
    text = rows[min(lineno, len(rows)) - 1]
    if col >= len(text) or text[col] != "=":
        return False
    return text[col - 1 : col] not in ("=", "<", ">", "!", ":") and text[col + 1 : col + 2] != "="


def _at_end(src: str, lineno: int, col: int) -> bool:
    """Whether a syntax error is reported at (or past) the end of the expression."""
    rows = src.splitlines() or [""]
    if col == 0 and lineno == 1 and src.strip():
        return True  # CPython reports "unexpected end" at offset 0
    return lineno >= len(rows) and col >= len(rows[-1].rstrip())


def _byte_columns(src: str, locate: Callable[[int, int], Location]) -> Callable[[int, int], Location]:
    """The AST's columns count UTF-8 bytes; locations count characters."""
    rows = src.splitlines() or [""]

    def by_char(lineno: int, col: int) -> Location:
        text = rows[min(max(lineno, 1), len(rows)) - 1]
        return locate(lineno, len(text.encode()[:col].decode("utf-8", "ignore")))

    return by_char


def _string_literal(text: str, at: Location) -> object:
    """Decode one string literal; a bad escape or a NUL byte is a parse error, not a crash.

    ast.parse rather than ast.literal_eval, which leaves reference cycles behind on every call:
    garbage that would outlive the load (service/store.py freezes what a load leaves). Anything but a
    plain literal (an f-string) reads as None.
    """
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError) as e:
        raise ParseError(f"invalid string: {e.msg if isinstance(e, SyntaxError) else e}", at) from None
    return node.value if isinstance(node, ast.Constant) else None


def _matching_brace(body: str, start: int) -> int:
    for j, ch, depth in _unquoted(body, start):
        if depth == 0 and ch in "}])":
            return j if ch == "}" else -1
    return -1
