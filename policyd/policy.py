"""A policy: every rule file and data file of a directory, compiled together, with one version.

`load_policy` reads the whole directory, validates everything, and returns a Policy or raises
PolicyLoadError with every error it found (the first errors.MAX_LOAD_ERRORS, and how many
more). A Policy is immutable and shared by concurrent requests. Every policy file is read by
`read_policy_file`, which no file can stall (a FIFO), grow past its limit or lead outside the
policy directory (a symlink out of it).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import re
import stat
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from policyd.errors import (
    InternalError,
    LoadLimitError,
    Location,
    ParseError,
    PolicyError,
    PolicyLoadError,
    UnsafeFileError,
    did_you_mean,
)
from policyd.rules.context import Scope
from policyd.rules.decision import OPS, Op
from policyd.rules.diagnostics import Diagnostic, Severity, SourceFiles
from policyd.rules.language import Action
from policyd.rules.program import Chunk, build_program
from policyd.rules.schema import SCHEMAS, USER
from policyd.rules.statefns import STATE_FUNCTIONS
from policyd.rules.statements import CacheKey, PolicyBudget, Statement, compile_rules

RULES_SUFFIX = ".rules"
DATA_DIR = "data"
DATA_SUFFIXES = (".toml", ".json")
MAX_POLICY_FILE_BYTES = 16 * 1024 * 1024  # one rules or data file
# Data files, all together. The densest data (`[{}, {}, ...]`) takes ~30x its size in memory
# once loaded, so 8 MiB bounds a policy's data at ~250 MB; a table of 80,000 users with their
# token hashes (`"alice" = "<sha256 hex>"`) takes ~7 MiB.
MAX_DATA_FILES = 64  # files in data/
MAX_DATA_BYTES = 8 * 1024 * 1024  # bytes of all data files together
# Of those, TOML: tomllib parses ~1 MB/s in pure Python (orjson ~100x faster) and cannot step
# aside for requests while it does, so large data is JSON; handwritten tables stay far below this.
MAX_TOML_BYTES = 2 * 1024 * 1024  # bytes of all .toml data files together
MAX_LOAD_ATTEMPTS = 5  # reads of a directory that keeps changing while it is read
# State functions that need the op stream tracked (proxies and sessions); rate() and hits() do not.
TRACKING_FUNCTIONS = frozenset(name for name, f in STATE_FUNCTIONS.items() if f.reads_tracking)
MAX_LISTED_ENTRIES = 1_000  # names the loader looks at per directory for near-miss file names

# Names editors and tools give their temporary and backup files while saving (vim's `4913`
# write test, `x~` backups, `.x.swp`, emacs' `#x#` and `.#x`, GNU sed -i's `sedXXXXXX`, ...):
# never policy files, never near misses worth a warning, never "changed files" of a reload.
_EDITOR_TEMP = re.compile(
    r"""^(?:\d+|sed[A-Za-z0-9]{6}|\#.*\#|\.\#.*|.*~|.*\.sw[a-p]x?|.*\.tmp|.*\.kate-swp
    |.*___jb_(?:tmp|old)___|\.goutputstream-.*|\..*\.fmt)$""",
    re.VERBOSE | re.DOTALL,
)


def is_editor_temp(name: str) -> bool:
    """Whether a file name is an editor's or tool's temporary or backup file (see _EDITOR_TEMP)."""
    return _EDITOR_TEMP.match(name) is not None


class LoadWarning(enum.StrEnum):
    """The codes of the warnings a load gives about a policy that loads (shown in /status)."""

    EMPTY_POLICY = "empty_policy"  # no rule files: frps gets "allow unchanged" for every op
    IGNORED_FILE = "ignored_file"  # a file named almost like a policy file, which the loader skips


@dataclass(frozen=True, slots=True)
class RuleFile:
    op: Op
    path: str  # as shown in messages: relative to the policy directory
    sha256: str
    statements: tuple[Statement, ...]
    # The statements as generated functions (policyd.rules.program); None runs them one by one.
    program: tuple[Chunk, ...] | None = field(default=None, repr=False, compare=False)
    # The state functions its rules call, and whether any asks proxies()/sessions() about
    # someone other than the request's user (the engine's lock then covers every user).
    state_functions: frozenset[str] = frozenset()
    reads_other_users: bool = False

    @property
    def rule_count(self) -> int:
        return sum(1 for s in self.statements if s.action is not Action.LET)


@dataclass(frozen=True, slots=True)
class DataFile:
    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Policy:
    """One validated version of the whole policy directory."""

    version: str
    directory: str
    rules: Mapping[Op, RuleFile]
    # A plain dict, as rules see it: the sandbox offers no mutating method, so it stays as loaded.
    data: dict[str, Any]
    data_files: tuple[DataFile, ...] = ()
    # What the directory holds that looks wrong but does not stop it from loading (LoadWarning).
    warnings: tuple[Diagnostic, ...] = ()
    loaded_at: float = field(default_factory=time.time)
    # Every compiled rule by what it depends on: the next load reuses the unchanged ones.
    compiled: Mapping[CacheKey, Statement] = field(default_factory=dict, repr=False, compare=False)
    # Each file's bytes as loaded, by its shown path, in the order the version hashes them: what
    # the version history keeps, so a version can always be turned back into its rules.
    sources: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def rule_count(self) -> int:
        return sum(f.rule_count for f in self.rules.values())

    @functools.cached_property
    def state_functions(self) -> frozenset[str]:
        """Every state function the policy calls (empty: it keeps no state at all)."""
        return frozenset().union(*(f.state_functions for f in self.rules.values()))

    @functools.cached_property
    def reads_other_users(self) -> bool:
        """Whether a rule asks proxies()/sessions() about someone else than the request's user."""
        return any(f.reads_other_users for f in self.rules.values())

    @functools.cached_property
    def tracks_sessions(self) -> bool:
        """Whether a rule reads proxies() or sessions(): then every op's effect is recorded."""
        return bool(self.state_functions & TRACKING_FUNCTIONS)


def _policy_files(directory: Path) -> tuple[list[Path], list[Path]]:
    rule_files = sorted(
        p for p in directory.glob(f"*{RULES_SUFFIX}") if p.is_file() and not p.name.startswith(".")
    )
    data_dir = directory / DATA_DIR
    data_files = (
        sorted(
            p
            for p in data_dir.iterdir()
            if p.suffix in DATA_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if data_dir.is_dir()
        else []
    )
    return rule_files, data_files


# The directories a policy file may resolve into: the policy directory, and for a console
# candidate (a directory of links to the serving one) the serving directory too.
Inside = Path | tuple[Path, ...]


def read_policy_file(
    path: Path, shown: str, root: Inside | None = None, *, limit: int = MAX_POLICY_FILE_BYTES
) -> bytes:
    """The bytes of one policy file; every file of a policy is read through here.

    - With `root`, a path that resolves outside it (a symlink out of the policy directory) is
      refused before it is opened, and again by the opened file's own path where the system
      tells it (/proc): a ConfigMap's `..data` links resolve inside the directory. `root` may
      name several directories (the first is the one messages name).
    - Opened with O_NONBLOCK: a FIFO swapped in between listing and reading cannot block.
    - fstat of the opened file: anything but a regular file is refused.
    - At most `limit` + 1 bytes are read: a file that grows while it is read cannot pass it.

    Raises PolicyError (UnsafeFileError, ParseError for the size) located at `shown`.
    """
    where = Location(shown)
    if root is not None:
        _inside(os.path.realpath(path), root, where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise PolicyError(f"cannot read: {e.strerror}", where) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(
                f"is {_file_kind(st.st_mode)}, not a regular file; policy files must be regular files",
                where,
            )
        if root is not None:
            opened = _opened_path(fd)
            if opened is not None:
                _inside(opened, root, where)
        if st.st_size > limit:
            raise ParseError(f"file is {st.st_size} bytes; the limit is {limit}", where)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise PolicyError(f"cannot read: {e.strerror}", where) from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > limit:
        raise ParseError(f"file grew past the limit of {limit} bytes while it was read", where)
    return raw


def _inside(real: str, root: Inside, where: Location) -> None:
    bases = [os.path.realpath(r) for r in (root if isinstance(root, tuple) else (root,))]
    if not any(real == b or real.startswith(b.rstrip(os.sep) + os.sep) for b in bases):
        base = bases[0]
        raise UnsafeFileError(
            f"resolves to {real}, outside the policy directory {base}",
            where,
            hint="the loader reads only files inside the policy directory: copy the file in",
        )


def _opened_path(fd: int) -> str | None:
    """The real path of an open file, where the system says it (Linux /proc); else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def policy_sources(directory: Path, links_into: tuple[Path, ...] = ()) -> SourceFiles:
    """The source lines diagnostics quote, read as the loader reads them (read_policy_file)."""
    roots = (Path(directory), *links_into)
    return SourceFiles(Path(directory), lambda path, shown: read_policy_file(path, shown, roots))


def _utf8(raw: bytes, shown: str) -> str:
    """Decode a policy file; a byte that is not UTF-8 is a parse error at its line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - raw.rfind(b"\n", 0, e.start)
        raise ParseError(
            f"not UTF-8: byte {raw[e.start]:#04x} ({e.reason})", Location(shown, line, column)
        ) from None


def _parse_data(raw: bytes, shown: str) -> Any:
    try:
        return _decode_data(raw, shown)
    except RecursionError:
        # tomllib (and json, which reports orjson's errors) recurse once per nesting level.
        raise ParseError("data nests too deeply", Location(shown)) from None


def _decode_data(raw: bytes, shown: str) -> Any:
    if shown.endswith(".json"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            # orjson reports position in characters; json's stdlib error has line/col.
            try:
                json.loads(raw)
            except json.JSONDecodeError as je:
                raise ParseError(f"invalid JSON: {je.msg}", Location(shown, je.lineno, je.colno)) from None
            raise ParseError(f"invalid JSON: {e}", Location(shown)) from None
    text = _utf8(raw, shown)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(str(e), text, shown) from None


def _toml_error(message: str, text: str, shown: str) -> ParseError:
    """tomllib's error with its line and column; an array or table left open is named as such.

    tomllib reports where it gave up (often the end of the document, or the next key), not the
    bracket that was never closed.
    """
    what, _, where = message.rpartition(" (at ")
    what = what or message
    line, col = _toml_position(where.rstrip(")"), text)
    opener = _unclosed_toml_bracket(text)
    if opener is not None and (opener[0], opener[1]) <= (line or opener[0], col or opener[1]):
        o_line, o_col, bracket = opener
        kind = "array" if bracket == "[" else "inline table"
        return ParseError(
            f"invalid TOML: the {kind} opened here with '{bracket}' is never closed",
            Location(shown, o_line, o_col),
            hint=f"close it with '{']' if bracket == '[' else '}'}'; tomllib stopped at line {line}: {what}",
        )
    return ParseError(f"invalid TOML: {what}", Location(shown, line, col))


def _toml_position(where: str, text: str) -> tuple[int, int]:
    # tomllib puts the position in the message: "... (at line 3, column 7)" or "(at end of document)".
    if where == "end of document":
        rows = text.split("\n")
        if len(rows) > 1 and rows[-1] == "":
            rows.pop()
        return len(rows), len(rows[-1]) + 1
    if where.startswith("line "):
        line, _, col = where[len("line ") :].partition(", column ")
        if line.isdigit() and col.isdigit():
            return int(line), int(col)
    return 0, 0


def _unclosed_toml_bracket(text: str) -> tuple[int, int, str] | None:
    """(line, column, bracket) of the innermost '[' or '{' a TOML document never closes.

    Skips strings (all four kinds) and comments, so brackets inside them do not count.
    """
    stack: list[tuple[int, int, str]] = []
    line, line_start, i, n = 1, 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line, line_start = line + 1, i + 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                if text[j] == "\n":
                    if len(quote) == 1:
                        break  # a one-line string left open: tomllib reports it itself
                    line, line_start = line + 1, j + 1
                j += 2 if ch == '"' and text[j] == "\\" else 1
            i = j + len(quote)
            continue
        elif ch in "[{":
            stack.append((line, i - line_start + 1, ch))
        elif ch in "]}" and stack:
            stack.pop()
        i += 1
    return stack[-1] if stack else None


def load_policy(
    directory: str | Path,
    *,
    pause: Callable[[], None] | None = None,
    previous: Policy | None = None,
    links_into: tuple[Path, ...] = (),
) -> Policy:
    """Load and validate the whole policy directory; raise PolicyLoadError with every error.

    Files are read one by one, so an edit landing mid-load (a ConfigMap's `..data` swap between
    reading data/ and the rules) would mix two versions into one that never existed. The files'
    identities are compared before and after; a load that saw the directory change is retried.
    `pause` is called between rules (see `compile_rules`); the rules of `previous` that did not
    change are reused instead of compiled again. Files must resolve inside the directory, or
    inside one of `links_into` (the console's candidates link to the serving directory).
    """
    root = Path(directory)
    roots = (root, *links_into)
    for _ in range(MAX_LOAD_ATTEMPTS - 1):
        before = _identity(root)
        try:
            policy = _load(root, roots, pause, previous)
        except PolicyLoadError:
            if _identity(root) == before:
                raise
            continue
        if _identity(root) == before:
            return policy
    return _load(root, roots, pause, previous)


def _identity(root: Path) -> tuple[tuple[str, int, int, int], ...]:
    """Which files the directory holds and what each is (symlinks followed), cheaply."""
    try:
        rule_paths, data_paths = _policy_files(root)
    except OSError:  # gone, or being replaced: compares unequal to any directory that reads
        return (("", -1, -1, -1),)
    out = []
    for path in (*rule_paths, *data_paths):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


VERSION_CHARS = 12  # hex digits of a version: the start of the sha256 of the directory's files


def policy_version(sources: Mapping[str, bytes]) -> str:
    """The version of a policy made of these files (shown path -> bytes, in load order: data
    files, then rule files, each sorted): a content hash, the same wherever they are loaded."""
    digest = hashlib.sha256()
    for shown, raw in sources.items():
        digest.update(shown.encode() + b"\0" + raw + b"\0")
    return digest.hexdigest()[:VERSION_CHARS]


def _load(
    root: Path, roots: tuple[Path, ...], pause: Callable[[], None] | None, previous: Policy | None
) -> Policy:
    if not root.is_dir():
        raise PolicyLoadError(
            [PolicyError(f"policy directory {str(root)!r} does not exist or is not a directory")]
        )
    errors: list[PolicyError] = []
    sources: dict[str, bytes] = {}
    rule_paths, data_paths = _policy_files(root)

    data: dict[str, Any] = {}
    data_files: list[DataFile] = []
    data_bytes = toml_bytes = 0
    if len(data_paths) > MAX_DATA_FILES:
        errors.append(
            LoadLimitError(
                f"{len(data_paths)} data files; a policy may have at most {MAX_DATA_FILES}",
                Location(f"{DATA_DIR}/"),
                hint="merge small tables into one file (a file holds many tables)",
            )
        )
    for p in data_paths[:MAX_DATA_FILES]:
        shown = f"{DATA_DIR}/{p.name}"
        try:
            raw = read_policy_file(p, shown, roots)
            data_bytes += len(raw)
            if data_bytes > MAX_DATA_BYTES:
                raise LoadLimitError(
                    f"the data files come to {data_bytes} bytes with this one; "
                    f"all data files together may hold at most {MAX_DATA_BYTES} bytes "
                    f"({MAX_DATA_BYTES >> 20} MiB)",
                    Location(shown),
                )
            if p.suffix == ".toml":
                toml_bytes += len(raw)
                if toml_bytes > MAX_TOML_BYTES:
                    raise LoadLimitError(
                        f"the TOML data files come to {toml_bytes} bytes with this one; they may "
                        f"hold at most {MAX_TOML_BYTES} bytes ({MAX_TOML_BYTES >> 20} MiB) together",
                        Location(shown),
                        hint="write large data as JSON: it loads about 100 times faster",
                    )
            if p.stem in data:
                raise ParseError(f"two data files are named '{p.stem}'; keep one", Location(shown))
            data[p.stem] = _parse_data(raw, shown)
        except PolicyError as e:
            errors.append(e)
            if isinstance(e, LoadLimitError):
                break  # the files after it would only repeat the same error
            continue
        except Exception as e:  # a bug in a parser must not crash the load: it is an error here
            errors.append(_internal(e, Location(shown)))
            continue
        sources[shown] = raw
        data_files.append(DataFile(p.stem, shown, hashlib.sha256(raw).hexdigest()))
    # Rules see every data file's name, also of one that failed: a broken data file is one
    # error, not one more "no data file named ..." for every rule that reads it.
    data_names = frozenset(p.stem for p in data_paths)

    compiled: dict[CacheKey, Statement] = {}
    rules: dict[Op, RuleFile] = {}
    budget = PolicyBudget()
    for p in rule_paths:
        shown = p.name
        op = OPS.get(p.stem)
        if op is None:
            hint = did_you_mean(p.stem, OPS)
            errors.append(
                PolicyError(
                    f"'{p.name}' is not named after an op ({', '.join(OPS)})",
                    Location(shown),
                    hint=hint,
                )
            )
            continue
        try:
            raw = read_policy_file(p, shown, roots)
            source = _utf8(raw, shown)
        except PolicyError as e:
            errors.append(e)
            continue
        sources[shown] = raw
        scope = Scope(op_schema=SCHEMAS[op], user_schema=USER, data_names=data_names, op=op.value)
        try:
            statements = compile_rules(
                shown,
                source,
                scope,
                errors,
                pause=pause,
                reuse=previous.compiled if previous is not None else None,
                keep=compiled,
                budget=budget,
            )
            program = build_program(statements, pause) if not errors else None
        except Exception as e:  # compile_rules locates its own errors; this is a bug in policyd
            errors.append(_internal(e, Location(shown)))
            continue
        rules[op] = RuleFile(
            op,
            shown,
            hashlib.sha256(raw).hexdigest(),
            tuple(statements),
            program,
            frozenset().union(*(s.state_functions for s in statements)),
            any(s.reads_other_users for s in statements),
        )

    if errors:
        raise PolicyLoadError(errors)
    return Policy(
        version=policy_version(sources),
        directory=str(root),
        rules=MappingProxyType(rules),
        data=data,
        data_files=tuple(data_files),
        warnings=tuple(_warnings(root, rules)),
        compiled=compiled,
        sources=MappingProxyType(sources),
    )


def _internal(error: Exception, where: Location) -> InternalError:
    return InternalError(
        f"policyd failed to load this file: {type(error).__name__}: {error}",
        where,
        hint="a bug in policyd; please report it with this file",
    )


# -- warnings: what loads, but is likely not what the operator meant ------------------------------
def _warning(code: LoadWarning, message: str, where: str | None, hint: str = "") -> Diagnostic:
    return Diagnostic(Severity.WARNING, code.value, message, Location(where) if where else None, hint)


def _warnings(root: Path, rules: Mapping[Op, RuleFile]) -> Iterator[Diagnostic]:
    """Files named almost like policy files, which the loader skips; a policy with no rules."""
    yield from _near_misses(root)
    if not rules:
        elsewhere = _rule_files_below(root)
        hint = (
            f"rule files are in {elsewhere}/: is the directory mounted one level off? "
            f"point --policies at {root / elsewhere}"
            if elsewhere
            else "add <Op>.rules files (Login.rules, NewProxy.rules, ...)"
        )
        yield _warning(
            LoadWarning.EMPTY_POLICY,
            f"no rule files in {root}: frps gets 'allow unchanged' for every op",
            None,
            hint,
        )


def _names(directory: Path) -> list[os.DirEntry[str]]:
    """Up to MAX_LISTED_ENTRIES entries of a directory, without hidden and editor temp files."""
    out: list[os.DirEntry[str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if len(out) >= MAX_LISTED_ENTRIES:
                    break
                if not entry.name.startswith(".") and not is_editor_temp(entry.name):
                    out.append(entry)
    except OSError:
        pass
    return sorted(out, key=lambda e: e.name)


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _near_misses(root: Path) -> Iterator[Diagnostic]:
    ops_lower = {name.lower(): name for name in OPS}
    for entry in _names(root):
        name = entry.name
        if _is_dir(entry):
            if name != DATA_DIR and name.lower() == DATA_DIR:
                yield _warning(
                    LoadWarning.IGNORED_FILE,
                    f"directory '{name}' is ignored: data files go in '{DATA_DIR}/'",
                    f"{name}/",
                    hint=f"rename it to '{DATA_DIR}'",
                )
            continue
        if name.endswith(RULES_SUFFIX) and not _is_file(entry):
            yield _not_regular(entry, name)
            continue
        if name.endswith(RULES_SUFFIX) or not _is_file(entry):
            continue
        head = name.split(".", 1)[0]
        op = ops_lower.get(head.lower())
        if op is None and ".rule" not in name.lower():
            continue
        target = f"{op or head}{RULES_SUFFIX}"
        yield _warning(
            LoadWarning.IGNORED_FILE,
            f"'{name}' is ignored: only files named <Op>{RULES_SUFFIX} are rule files",
            name,
            hint=f"rename it to '{target}' to load it, or move it out of the policy directory",
        )
    for entry in _names(root / DATA_DIR):
        name = entry.name
        if _is_dir(entry):
            yield _warning(
                LoadWarning.IGNORED_FILE,
                f"directory '{DATA_DIR}/{name}' is ignored: data files go directly in {DATA_DIR}/",
                f"{DATA_DIR}/{name}/",
            )
        elif name.endswith(DATA_SUFFIXES) and not _is_file(entry):
            yield _not_regular(entry, f"{DATA_DIR}/{name}")
        elif _is_file(entry) and not name.endswith(DATA_SUFFIXES):
            yield _warning(
                LoadWarning.IGNORED_FILE,
                f"'{DATA_DIR}/{name}' is ignored: data files end in {' or '.join(DATA_SUFFIXES)}",
                f"{DATA_DIR}/{name}",
                hint="convert it to TOML or JSON, or move it out of data/",
            )


def _not_regular(entry: os.DirEntry[str], shown: str) -> Diagnostic:
    """A policy file's name on something the loader does not read: a FIFO, a device, a link
    that leads nowhere."""
    try:
        what = _file_kind(entry.stat().st_mode)
    except OSError:
        what = "a link that leads nowhere"
    return _warning(
        LoadWarning.IGNORED_FILE,
        f"'{shown}' is ignored: it is {what}, not a regular file",
        shown,
        hint="policy files must be regular files (or links to them inside the directory)",
    )


def _rule_files_below(root: Path) -> str:
    """A subdirectory (one level down) that holds rule files, or "": the tell of a volume
    mounted one level off (`policies/policies/*.rules`)."""
    for entry in _names(root):
        if (
            _is_dir(entry)
            and entry.name != DATA_DIR
            and any(e.name.endswith(RULES_SUFFIX) for e in _names(Path(entry.path)))
        ):
            return entry.name
    return ""
