"""The policy files the console shows and edits, and candidate policies built from an edit.

Only the files that make up a policy can be named: `<Op>.rules`, `data/<name>.toml|json` and
`tests/[requests/]<name>.toml|json`. A path is checked against that pattern before it is joined
to the policy directory, so nothing else (`../`, absolute paths, hidden files) can be read or
written through the console.

A candidate is the serving directory with one file replaced, built in a temporary directory of
symbolic links to the real files (only the edited file is written), so that loading it and running
its test cases reads exactly what the directory would hold after the save.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policyd.console.errors import ConsoleError
from policyd.errors import PolicyError
from policyd.policy import DATA_DIR, MAX_POLICY_FILE_BYTES, RULES_SUFFIX, read_policy_file
from policyd.rules.decision import Op
from policyd.tools.test import TESTS_DIR

_OPS = "|".join(op.value for op in Op)
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
EDITABLE = re.compile(
    rf"(?P<rules>(?:{_OPS})\{RULES_SUFFIX})"
    rf"|(?P<data>{DATA_DIR}/{_NAME}\.(?:toml|json))"
    rf"|(?P<tests>{TESTS_DIR}/(?:requests/)?{_NAME}\.(?:toml|json))"
)


class FileKind(enum.StrEnum):
    RULES = "rules"
    DATA = "data"
    TESTS = "tests"


def file_kind(rel: str) -> FileKind:
    """The kind of an editable path, ConsoleError for any other path."""
    match = EDITABLE.fullmatch(rel)
    if match is None:
        raise ConsoleError(
            f"{rel!r} is not a policy file: the console edits <Op>.rules, data/<name>.toml|json "
            "and tests/[requests/]<name>.toml|json",
            400,
            "bad_path",
        )
    return FileKind(next(k for k, v in match.groupdict().items() if v))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str
    kind: FileKind
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind.value, "size": self.size, "sha256": self.sha256}


def list_files(root: Path) -> list[PolicyFile]:
    """Every editable file of the policy directory, rule files first, then data and tests."""
    found: list[PolicyFile] = []
    candidates = [
        *sorted(root.glob(f"*{RULES_SUFFIX}")),
        *sorted((root / DATA_DIR).glob("*")),
        *sorted((root / TESTS_DIR).glob("*")),
        *sorted((root / TESTS_DIR / "requests").glob("*")),
    ]
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        if EDITABLE.fullmatch(rel) is None or not path.is_file():
            continue
        try:
            data = read_policy_file(path, rel, root) if path.stat().st_size <= MAX_POLICY_FILE_BYTES else b""
        except (OSError, PolicyError):  # gone, or not a file the loader would read either
            continue
        found.append(PolicyFile(rel, file_kind(rel), len(data), sha256(data)))
    return found


def read_file(root: Path, rel: str) -> tuple[str, str]:
    """(text, sha256) of one editable file; ConsoleError (404, 413, 422) when it cannot be shown."""
    file_kind(rel)
    path = root / rel
    try:
        size = path.stat().st_size
        if size > MAX_POLICY_FILE_BYTES:
            raise ConsoleError(
                f"{rel} is {size} bytes; the limit is {MAX_POLICY_FILE_BYTES}", 413, "too_large"
            )
        data = read_policy_file(path, rel, root)
    except FileNotFoundError:
        raise ConsoleError(f"{rel} does not exist", 404, "not_found") from None
    except OSError as e:
        raise ConsoleError(f"{rel}: cannot read: {e.strerror}", 500, "unreadable") from None
    except PolicyError as e:  # a link out of the directory, a FIFO: the loader would refuse it
        raise ConsoleError(f"{rel}: {e.message}", 422, e.code) from None
    try:
        return data.decode("utf-8"), sha256(data)
    except UnicodeDecodeError:
        raise ConsoleError(f"{rel} is not UTF-8 text", 422, "not_text") from None


def current_sha256(root: Path, rel: str) -> str | None:
    """The file's hash on disk now, None if it does not exist."""
    path = root / rel
    if not os.path.lexists(path):
        return None
    try:
        return sha256(read_policy_file(path, rel, root))
    except PolicyError:
        return ""  # unreadable as a policy file: differs from any hash it had


def _mirror(source: Path, target: Path, edited: tuple[str, ...]) -> None:
    """Link every entry of `source` into `target`, except the edited path (made real, one level
    at a time, down to the edited file, which the caller writes)."""
    target.mkdir(exist_ok=True)
    if source.is_dir():
        for entry in os.scandir(source):
            if entry.name.startswith(".") or entry.name == edited[0]:
                continue  # hidden entries: the loader skips them (a ConfigMap's ..data is reached via links)
            os.symlink(os.path.join(source, entry.name), target / entry.name)
    if len(edited) > 1:
        _mirror(source / edited[0], target / edited[0], edited[1:])


@contextmanager
def candidate_directory(root: Path, rel: str, text: str) -> Iterator[Path]:
    """A temporary policy directory: `root` with `rel` holding `text` (removed afterwards)."""
    file_kind(rel)
    with tempfile.TemporaryDirectory(prefix="policyd-candidate-") as tmp:
        candidate = Path(tmp) / "policy"
        _mirror(root.resolve(), candidate, tuple(rel.split("/")))
        (candidate / rel).write_text(text, encoding="utf-8")
        yield candidate


def read_only_reason(root: Path) -> str:
    """Why the policy directory cannot be written ("" when it can), without writing to it.

    Writing a probe file would itself be a change the watcher reloads for; the mount's flags and
    the process's access rights say as much.
    """
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return f"the policy directory {root} is on a read-only file system (a ConfigMap mount?)"
    except OSError as e:
        return f"the policy directory {root} cannot be examined: {e.strerror}"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"the policy directory {root} is not writable by this process (uid {os.geteuid()})"
    return ""
