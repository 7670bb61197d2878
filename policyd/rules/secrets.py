"""What counts as a secret in a request, and how policyd masks it wherever it shows content.

One set of rules for every place people read decisions (the decision log, the diagnostic log,
`policyd eval`): fields frps marks secret and map keys named like credentials are shown as
"***", and so is what a reason or warn message renders from them. Their values are also
searched for in what `{...}` parts rendered and in error messages, and masked there.

Two bounds keep that safe from the client, whose request it is:

- **No censorship.** The rule author's own words (the literal text of a reason or warn
  message) are never masked, and only values of at least MIN_MASKED_VALUE_CHARS characters are
  searched for: a client sending `metas = {"token": "6500", "secret": "blue"}` cannot make the
  log hide "6500" or "blue" anywhere.
- **Bounded work.** The request is walked for credentials at most MAX_SCANNED_VALUES values
  deep, at most MAX_SECRETS values of at most MAX_SECRET_CHARS characters are kept, and all of
  them are found in one Aho-Corasick pass over each text (pyahocorasick), so masking costs time
  linear in the text whatever the request holds. A request past those caps gets every `{...}`
  part and error message masked whole instead: less to read in its log line, never more work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ahocorasick

from policyd.rules.decision import Decision, Part
from policyd.rules.sandbox import SEQUENCES  # a tuple: a union in isinstance() is built per call

MASK = "***"
# Fields whose value is a credential: masked wherever policyd shows content to people.
SECRET_FIELDS = frozenset({"privilege_key", "sk", "http_pwd", "group_key"})
# Map keys (metas, headers, ...) whose name says they hold a credential: `metadatas.token = "..."`.
SECRET_KEY_WORDS = ("token", "secret", "passw", "pwd", "key", "credential", "authorization", "cookie")
# Shorter credential values are not searched for: a client could otherwise make the log mask
# any short word ("6500", "blue") by sending it as a token, and a value that short is no secret.
MIN_MASKED_VALUE_CHARS = 8
# Values (map entries and list items, at any depth) walked to find credentials in one request.
MAX_SCANNED_VALUES = 2000
# Credential values searched for in one decision's texts, and the longest searched for.
MAX_SECRETS = 32
MAX_SECRET_CHARS = 1024
# How deep masking walks into nested values (content nests at most three levels).
MAX_MASK_DEPTH = 8

_NESTED = (dict, list, tuple)


@functools.lru_cache(maxsize=4096)  # the same few field and metas names come in every request
def is_secret_key(name: str) -> bool:
    """Whether a field or map key holds a credential, judged by its name; errs towards masking."""
    lowered = name.lower()
    return lowered in SECRET_FIELDS or any(word in lowered for word in SECRET_KEY_WORDS)


@functools.lru_cache(maxsize=1024)  # a policy sets the same few paths, request after request
def is_secret_path(path: str) -> bool:
    """Whether a dotted content path (`metas.token`) ends in a secret field or key."""
    return is_secret_key(path.rsplit(".", 1)[-1])


def mask(value: Any, depth: int = 0, replace: Callable[[Any], Any] | None = None) -> Any:
    """A copy of `value` with the values of credential-named keys replaced by MASK, or by what
    `replace` makes of each (a recording's keyed hash); what nests past MAX_MASK_DEPTH, whole."""
    if depth > MAX_MASK_DEPTH:
        return MASK if replace is None else replace(value)
    if isinstance(value, dict):
        return {
            k: (MASK if replace is None else replace(v))
            if is_secret_key(str(k))
            else mask(v, depth + 1, replace)
            for k, v in value.items()
        }
    if isinstance(value, SEQUENCES):
        return [mask(v, depth + 1, replace) for v in value]
    return value


def mask_change(path: str, before: Any, after: Any) -> tuple[Any, Any]:
    """A change of `content.<path>` as people may see it: both sides masked."""
    if is_secret_path(path):
        return MASK, MASK
    return (
        mask(before) if isinstance(before, _NESTED) else before,
        mask(after) if isinstance(after, _NESTED) else after,
    )


class Secrets:
    """The credential values one decision's texts may repeat, found within the caps.

    `overflow` is set when the request held more than the caps allow: then `{...}` parts and
    error messages are masked whole rather than searched. `scanned` counts the request's values
    walked to find them (at most MAX_SCANNED_VALUES + 1).
    """

    __slots__ = ("_automaton", "overflow", "scanned", "values")

    def __init__(self, values: Iterable[str] = (), *, overflow: bool = False, scanned: int = 0) -> None:
        self.values = tuple(sorted(set(values), key=len, reverse=True))
        self.overflow = overflow
        self.scanned = scanned
        self._automaton: Any = None

    def __bool__(self) -> bool:
        return bool(self.values) or self.overflow

    def mask_in(self, text: str) -> str:
        """`text` with every credential value in it replaced by MASK, in one pass."""
        if self.overflow:
            return MASK if text else text
        values = self.values
        if not values or len(text) < MIN_MASKED_VALUE_CHARS:
            return text
        if len(values) == 1:
            return text.replace(values[0], MASK)
        automaton = self._automaton
        if automaton is None:
            automaton = self._automaton = ahocorasick.Automaton()
            for value in values:
                automaton.add_word(value, len(value))
            automaton.make_automaton()
        out: list[str] = []
        done = 0
        for end, length in automaton.iter_long(text):  # leftmost-longest, non-overlapping
            out.append(text[done : end + 1 - length])
            out.append(MASK)
            done = end + 1
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)


NO_SECRETS = Secrets()


class _Collector:
    __slots__ = ("found", "overflow", "scanned")

    def __init__(self) -> None:
        self.found: set[str] = set()
        self.scanned = 0
        self.overflow = False

    def add(self, value: str) -> None:
        if len(value) < MIN_MASKED_VALUE_CHARS:
            return
        if len(value) > MAX_SECRET_CHARS or len(self.found) >= MAX_SECRETS:
            self.overflow = True
        else:
            self.found.add(value)

    def walk(self, value: Any, secret: bool, depth: int = 0) -> None:
        """Collect the strings under credential-named keys; stop at the caps."""
        if self.overflow:
            return
        self.scanned += 1
        if self.scanned > MAX_SCANNED_VALUES or depth > MAX_MASK_DEPTH:
            self.overflow = True
        elif isinstance(value, str):
            if secret:
                self.add(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                if self.overflow:
                    return
                self.walk(v, secret or is_secret_key(str(k)), depth + 1)
        elif isinstance(value, SEQUENCES):
            for v in value:
                if self.overflow:
                    return
                self.walk(v, secret, depth + 1)


def secrets_in(decision: Decision, content: Mapping[str, Any]) -> Secrets:
    """The credential values the rendered parts and errors of this decision could repeat.

    Only `{...}` parts and error messages are searched, so this is empty (and free) when the
    decision has neither.
    """
    if decision.error is None and not _renders_values(decision):
        return NO_SECRETS
    collector = _Collector()
    collector.walk(content, False)
    for change in decision.changes:
        collector.walk(change.after, is_secret_path(change.path))
    return Secrets(collector.found, overflow=collector.overflow, scanned=collector.scanned)


def _renders_values(decision: Decision) -> bool:
    if Part.VALUE in decision.reason_kinds:
        return True
    return any(Part.VALUE in w.kinds for w in decision.warnings)


# Characters that would let text from a client forge or disguise log lines: C0 and C1 controls
# (newlines, escape sequences, NEL), the Unicode line and paragraph separators, and the bidi
# controls that make a line display in another order than it reads.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES = (
    {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
    | {c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *_BIDI)}
    | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
)


def escape(text: str) -> str:
    """`text` as one line that displays as it reads: controls, separators and bidi escaped."""
    return text.translate(_ESCAPES)


def scrub(text: str, secrets: Secrets, parts: Sequence[str] = (), kinds: Sequence[Part] = ()) -> str:
    """`text` as one safe line: credential values masked, controls and separators escaped.

    With `parts` and `kinds`, `text` is a reason or warn message as its template rendered it:
    the rule author's words stay as written, what `{...}` parts rendered is searched, and a
    part that reads a credential field is masked whole. Without, all of `text` is searched.
    """
    if not parts or (not secrets and Part.SECRET not in kinds):
        return escape(secrets.mask_in(text)) if secrets else escape(text)
    out: list[str] = []
    values: list[str] = []  # adjacent {...} parts, searched as one text
    for part, kind in zip(parts, kinds, strict=True):
        if kind is Part.VALUE:
            values.append(part)
            continue
        if values:
            out.append(secrets.mask_in("".join(values)) if secrets else "".join(values))
            values.clear()
        out.append(MASK if kind is Part.SECRET and part else part)
    if values:
        out.append(secrets.mask_in("".join(values)) if secrets else "".join(values))
    return escape("".join(out))
