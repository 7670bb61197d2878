"""A policy: every rule file and data file of a directory, compiled together, with one version.

`load_policy` reads the whole directory, validates everything, and returns a Policy or raises
PolicyLoadError with every error it found (the first errors.MAX_LOAD_ERRORS, and how many
more). A Policy is immutable and shared by concurrent requests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from policyd.errors import Location, ParseError, PolicyError, PolicyLoadError, did_you_mean
from policyd.rules.context import Scope
from policyd.rules.decision import OPS, Op
from policyd.rules.language import Action
from policyd.rules.program import Chunk, build_program
from policyd.rules.schema import SCHEMAS, USER
from policyd.rules.statefns import STATE_FUNCTIONS
from policyd.rules.statements import CacheKey, Statement, compile_rules

RULES_SUFFIX = ".rules"
DATA_DIR = "data"
DATA_SUFFIXES = (".toml", ".json")
MAX_POLICY_FILE_BYTES = 16 * 1024 * 1024  # one rules or data file
MAX_LOAD_ATTEMPTS = 5  # reads of a directory that keeps changing while it is read
# State functions that need the op stream tracked (proxies and sessions); rate() and hits() do not.
TRACKING_FUNCTIONS = frozenset(name for name, f in STATE_FUNCTIONS.items() if f.reads_tracking)


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


def _read(path: Path, shown: str) -> bytes:
    size = path.stat().st_size
    if size > MAX_POLICY_FILE_BYTES:
        raise ParseError(f"file is {size} bytes; the limit is {MAX_POLICY_FILE_BYTES}", Location(shown))
    return path.read_bytes()


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
    try:
        return tomllib.loads(_utf8(raw, shown))
    except tomllib.TOMLDecodeError as e:
        line, col = _toml_position(str(e))
        raise ParseError(f"invalid TOML: {str(e).split(' (at ')[0]}", Location(shown, line, col)) from None


def _toml_position(message: str) -> tuple[int, int]:
    # tomllib puts the position in the message: "... (at line 3, column 7)".
    if "(at line " in message:
        tail = message.rsplit("(at line ", 1)[1].rstrip(")")
        line, _, col = tail.partition(", column ")
        if line.isdigit() and col.isdigit():
            return int(line), int(col)
    return 0, 0


def load_policy(
    directory: str | Path,
    *,
    pause: Callable[[], None] | None = None,
    previous: Policy | None = None,
) -> Policy:
    """Load and validate the whole policy directory; raise PolicyLoadError with every error.

    Files are read one by one, so an edit landing mid-load (a ConfigMap's `..data` swap between
    reading data/ and the rules) would mix two versions into one that never existed. The files'
    identities are compared before and after; a load that saw the directory change is retried.
    `pause` is called between rules (see `compile_rules`); the rules of `previous` that did not
    change are reused instead of compiled again.
    """
    root = Path(directory)
    for _ in range(MAX_LOAD_ATTEMPTS - 1):
        before = _identity(root)
        try:
            policy = _load(root, pause, previous)
        except PolicyLoadError:
            if _identity(root) == before:
                raise
            continue
        if _identity(root) == before:
            return policy
    return _load(root, pause, previous)


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


def _load(root: Path, pause: Callable[[], None] | None, previous: Policy | None) -> Policy:
    if not root.is_dir():
        raise PolicyLoadError(
            [PolicyError(f"policy directory {str(root)!r} does not exist or is not a directory")]
        )
    errors: list[PolicyError] = []
    sources: dict[str, bytes] = {}
    rule_paths, data_paths = _policy_files(root)

    data: dict[str, Any] = {}
    data_files: list[DataFile] = []
    for p in data_paths:
        shown = f"{DATA_DIR}/{p.name}"
        try:
            raw = _read(p, shown)
            if p.stem in data:
                raise ParseError(f"two data files are named '{p.stem}'; keep one", Location(shown))
            data[p.stem] = _parse_data(raw, shown)
        except PolicyError as e:
            errors.append(e)
            continue
        except OSError as e:
            errors.append(PolicyError(f"cannot read: {e.strerror}", Location(shown)))
            continue
        sources[shown] = raw
        data_files.append(DataFile(p.stem, shown, hashlib.sha256(raw).hexdigest()))

    compiled: dict[CacheKey, Statement] = {}
    rules: dict[Op, RuleFile] = {}
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
            raw = _read(p, shown)
            source = _utf8(raw, shown)
        except PolicyError as e:
            errors.append(e)
            continue
        except OSError as e:
            errors.append(PolicyError(f"cannot read: {e}", Location(shown)))
            continue
        sources[shown] = raw
        scope = Scope(
            op_schema=SCHEMAS[op],
            user_schema=USER,
            data_names=frozenset(data),
            op=op.value,
        )
        statements = compile_rules(
            shown,
            source,
            scope,
            errors,
            pause=pause,
            reuse=previous.compiled if previous is not None else None,
            keep=compiled,
        )
        program = build_program(statements, pause) if not errors else None
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
        compiled=compiled,
        sources=MappingProxyType(sources),
    )
