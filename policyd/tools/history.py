"""The policy version history: every version that served, with its files, so that a decision
log line's `policy_version` can always be turned back into the rules that decided.

One format, written by `policyd serve` and read by `policyd history` (also offline) and by
`GET /versions`. In a directory (`--history-dir`):

    DIR/index.jsonl        append-only, one JSON event per line (below)
    DIR/objects/<sha256>   each file's bytes, named by their sha256: stored once, whatever
                           number of versions have that file
    DIR/.lock              taken (flock) by every writer: the workers of one service share DIR

Events, in the order they happened:

    {"event": "served", "version": "3596ce5f88c9", "at": 1718000000.123,
     "files": {"NewProxy.rules": "<sha256>", "data/teams.toml": "<sha256>"},
     "previous": "0a1b2c3d4e5f", "changed": {"added": [], "modified": ["NewProxy.rules"], "removed": []}}
    {"event": "retired", "version": "3596ce5f88c9", "at": 1718000100.456}

A version is listed once however often it served (a revert, a restart, several workers): first
served is its first `served` event, last served the `retired` event after its latest `served`
(none while it still serves). Without a directory the same history is kept in memory, for the
last MEMORY_MAX_VERSIONS versions. Both are bounded by count and by bytes, and the versions
served least recently go first; the index is rewritten (compacted, atomically) when it prunes
or has grown past COMPACT_EVERY events per version.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import orjson

from policyd.errors import PolicydError
from policyd.rules.diagnostics import OutputFormat, counted, to_json
from policyd.tools.fmt import write_atomically

log = logging.getLogger("policyd.history")

INDEX = "index.jsonl"
OBJECTS = "objects"
LOCK = ".lock"
MEMORY_MAX_VERSIONS = 20  # versions kept without --history-dir
MEMORY_MAX_BYTES = 64 * 1024 * 1024  # file bytes kept without --history-dir
DEFAULT_MAX_VERSIONS = 1000  # --history-max-versions
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # --history-max-bytes: objects plus the index
COMPACT_EVERY = 4  # index events per version kept before the index is compacted
MIN_PREFIX_CHARS = 4  # a version may be named by a unique prefix this long


class HistoryError(PolicydError):
    """Raised when a history cannot be read or written, or holds no such version."""

    code = "history_error"


@dataclass(frozen=True, slots=True)
class Changed:
    """Files of a version against the version that served before it."""

    added: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @classmethod
    def between(cls, before: Mapping[str, str], after: Mapping[str, str]) -> Changed:
        return cls(
            tuple(sorted(after.keys() - before.keys())),
            tuple(sorted(p for p in after.keys() & before.keys() if after[p] != before[p])),
            tuple(sorted(before.keys() - after.keys())),
        )

    def to_dict(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "modified": list(self.modified), "removed": list(self.removed)}


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One version as the history lists it."""

    version: str
    first_served: float
    last_served: float | None  # None: not retired when the index was last written (serving)
    files: Mapping[str, str]  # shown path -> sha256
    previous: str | None = None
    changed: Changed = field(default_factory=Changed)
    served_count: int = 1  # `served` events: first start, reverts, restarts, each worker

    @property
    def recency(self) -> float:
        """When it last served; a version still serving is the most recent of all."""
        return float("inf") if self.last_served is None else self.last_served


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """One version's files, as they were when it served."""

    entry: VersionEntry
    files: Mapping[str, bytes]


# -- where the events and objects live: a directory, or memory ---------------------------------
class _Backend(Protocol):
    def events(self) -> list[dict[str, Any]]: ...
    def append(self, events: Sequence[dict[str, Any]]) -> None: ...
    def rewrite(self, events: Sequence[dict[str, Any]]) -> None: ...
    def put(self, sha256: str, raw: bytes) -> None: ...
    def get(self, sha256: str) -> bytes | None: ...
    def delete(self, sha256: str) -> None: ...
    def size(self, sha256: str) -> int: ...
    def index_bytes(self) -> int: ...
    def locked(self) -> contextlib.AbstractContextManager[None]: ...


class _Memory:
    """The history of one process, lost when it stops."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    def append(self, events: Sequence[dict[str, Any]]) -> None:
        self._events.extend(events)

    def rewrite(self, events: Sequence[dict[str, Any]]) -> None:
        self._events = list(events)

    def put(self, sha256: str, raw: bytes) -> None:
        self._objects.setdefault(sha256, raw)

    def get(self, sha256: str) -> bytes | None:
        return self._objects.get(sha256)

    def delete(self, sha256: str) -> None:
        self._objects.pop(sha256, None)

    def size(self, sha256: str) -> int:
        raw = self._objects.get(sha256)
        return 0 if raw is None else len(raw)

    def index_bytes(self) -> int:
        return 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield


class _Directory:
    """A history directory, shared by the workers of a service and read by `policyd history`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = root / INDEX
        self.objects = root / OBJECTS
        self._thread_lock = threading.Lock()  # flock does not exclude threads of one process

    def create(self) -> None:
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)  # it holds every rule and data file
        self.objects.mkdir(mode=0o750, exist_ok=True)

    def events(self) -> list[dict[str, Any]]:
        try:
            raw = self.index.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                # A line cut short by a crash mid-write: the events around it still count.
                log.warning("%s:%d: not a JSON event; skipped", self.index, number)
                continue
            if isinstance(event, dict) and isinstance(event.get("version"), str):
                out.append(event)
        return out

    def append(self, events: Sequence[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rewrite(self, events: Sequence[dict[str, Any]]) -> None:
        write_atomically(self.index, b"".join(orjson.dumps(e) + b"\n" for e in events))

    def put(self, sha256: str, raw: bytes) -> None:
        path = self.objects / sha256
        if not path.exists():
            write_atomically(path, raw)

    def get(self, sha256: str) -> bytes | None:
        try:
            return (self.objects / sha256).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.objects / sha256).unlink()

    def size(self, sha256: str) -> int:
        try:
            return (self.objects / sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def index_bytes(self) -> int:
        try:
            return self.index.stat().st_size
        except FileNotFoundError:
            return 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the history ---------------------------------------------------------------------------
def fold(events: Sequence[dict[str, Any]]) -> dict[str, VersionEntry]:
    """The versions the events describe, by version, in the order they first served."""
    first: dict[str, dict[str, Any]] = {}
    latest_served: dict[str, float] = {}
    retired: dict[str, float] = {}
    served_count: dict[str, int] = {}
    for event in events:
        version, at = event["version"], event.get("at")
        if not isinstance(at, int | float):
            continue
        if event.get("event") == "served" and isinstance(event.get("files"), dict):
            first.setdefault(version, event)
            served_count[version] = served_count.get(version, 0) + 1
            latest_served[version] = max(at, latest_served.get(version, at))
        elif event.get("event") == "retired":
            retired[version] = max(at, retired.get(version, at))
    out = {}
    for version, event in first.items():
        last = retired.get(version)
        if last is not None and last < latest_served[version]:
            last = None  # served again after it was last retired
        changed = event.get("changed")
        if not isinstance(changed, dict):
            changed = {}
        out[version] = VersionEntry(
            version=version,
            first_served=float(event["at"]),
            last_served=last,
            files={str(k): str(v) for k, v in event["files"].items()},
            previous=event.get("previous") if isinstance(event.get("previous"), str) else None,
            changed=Changed(
                *(tuple(str(p) for p in changed.get(key) or ()) for key in ("added", "modified", "removed"))
            ),
            served_count=served_count[version],
        )
    return out


def _served_event(entry: VersionEntry, at: float) -> dict[str, Any]:
    return {
        "event": "served",
        "version": entry.version,
        "at": at,
        "files": dict(entry.files),
        "previous": entry.previous,
        "changed": entry.changed.to_dict(),
    }


class History:
    """The versions that served, bounded by count and bytes; safe to use from any thread.

    The service calls `served()` when a version starts serving (start-up, each reload that
    changed the version) and `retired()` when it stops (replaced, shutdown). Reading needs no
    lock: the index is only appended to or atomically replaced, objects only added or removed.
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        max_versions: int,
        max_bytes: int,
        directory: Path | None = None,
    ) -> None:
        self._backend = backend
        self.max_versions = max_versions
        self.max_bytes = max_bytes
        self.directory = directory
        self.last_error: str = ""

    @classmethod
    def in_memory(cls, max_versions: int = MEMORY_MAX_VERSIONS, max_bytes: int = MEMORY_MAX_BYTES) -> History:
        return cls(_Memory(), max_versions=max_versions, max_bytes=max_bytes)

    @classmethod
    def in_directory(
        cls,
        directory: Path,
        *,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        create: bool = True,
    ) -> History:
        """The history kept in `directory` (created if missing, unless `create` is False, as
        `policyd history` reads it: then a directory that is not there is a HistoryError)."""
        backend = _Directory(directory)
        if create:
            try:
                backend.create()
            except OSError as e:
                raise HistoryError(f"cannot create the history directory {directory}: {e.strerror}") from None
        elif not (directory / INDEX).is_file():
            raise HistoryError(f"{directory} holds no policy history (no {INDEX})")
        return cls(backend, max_versions=max_versions, max_bytes=max_bytes, directory=directory)

    # -- writing ---------------------------------------------------------------------------
    def served(
        self, version: str, sources: Mapping[str, bytes], *, previous: str | None, at: float | None = None
    ) -> None:
        """Record that `version` (made of `sources`) serves from now on, after `previous`.

        Never raises: the new version serves whatever the history's disk says; a failure is
        logged and kept in `last_error` for /status.
        """
        at = time.time() if at is None else at
        try:
            with self._backend.locked():
                self._served(version, sources, previous, at)
            self.last_error = ""
        except OSError as e:
            self.last_error = f"could not record version {version}: {e}"
            log.error("policy history: %s", self.last_error)

    def _served(self, version: str, sources: Mapping[str, bytes], previous: str | None, at: float) -> None:
        entries = fold(self._backend.events())
        files = {path: hashlib.sha256(raw).hexdigest() for path, raw in sources.items()}
        events: list[dict[str, Any]] = []
        # Versions not retired that are not this one: their process stopped without saying so
        # (a crash, a kill), or they are being replaced now. Either way they stop serving here.
        for other in entries.values():
            if other.last_served is None and other.version != version:
                events.append({"event": "retired", "version": other.version, "at": at})
        known = entries.get(version)
        if known is None:
            if previous is None or previous == version:
                previous = (
                    max(entries.values(), key=lambda e: (e.recency, e.first_served)).version
                    if entries
                    else None
                )
            before = entries[previous].files if previous in entries else {}
            for path, sha in files.items():
                self._backend.put(sha, sources[path])
            entry = VersionEntry(version, at, None, files, previous, Changed.between(before, files))
        else:
            entry = known
        events.append(_served_event(entry, at))
        self._backend.append(events)
        self._prune(keep=version)

    def retired(self, version: str, at: float | None = None) -> None:
        """Record that `version` stopped serving (replaced, or the service shut down)."""
        event = {"event": "retired", "version": version, "at": time.time() if at is None else at}
        try:
            with self._backend.locked():
                self._backend.append([event])
        except OSError as e:
            self.last_error = f"could not record that version {version} retired: {e}"
            log.error("policy history: %s", self.last_error)

    def _prune(self, keep: str) -> None:
        """Drop the versions served least recently until the bounds hold; compact the index."""
        events = self._backend.events()
        entries = fold(events)
        by_age = sorted(entries.values(), key=lambda e: (e.recency, e.first_served))
        sizes = {sha: self._backend.size(sha) for e in by_age for sha in e.files.values()}
        dropped: list[VersionEntry] = []
        while len(by_age) > 1:
            kept_bytes = sum(sizes[sha] for sha in {s for e in by_age for s in e.files.values()})
            if len(by_age) <= self.max_versions and kept_bytes <= self.max_bytes:
                break
            oldest = next((e for e in by_age if e.version != keep), None)
            if oldest is None:
                break
            by_age.remove(oldest)
            dropped.append(oldest)
        if not dropped and len(events) <= COMPACT_EVERY * len(entries) + COMPACT_EVERY:
            return
        kept = {e.version for e in by_age}
        compacted: list[dict[str, Any]] = []
        for entry in by_age:
            compacted.append(_served_event(entry, entry.first_served))
            if entry.last_served is not None:
                compacted.append({"event": "retired", "version": entry.version, "at": entry.last_served})
        compacted.sort(key=lambda e: (e["at"], e["event"] == "served"))
        self._backend.rewrite(compacted)
        still_used = {sha for e in by_age for sha in e.files.values()}
        for entry in dropped:
            for sha in set(entry.files.values()) - still_used:
                self._backend.delete(sha)
        if dropped:
            log.info(
                "policy history: pruned %s (%s); %d kept",
                counted(len(dropped), "version"),
                ", ".join(e.version for e in dropped),
                len(kept),
            )

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> list[VersionEntry]:
        """Every version kept, the one that first served last at the front."""
        return sorted(fold(self._backend.events()).values(), key=lambda e: e.first_served, reverse=True)

    def resolve(self, name: str) -> VersionEntry:
        """The version named `name` or by a unique prefix of it; HistoryError if none or several."""
        entries = fold(self._backend.events())
        if name in entries:
            return entries[name]
        found = [e for v, e in entries.items() if v.startswith(name)] if len(name) >= MIN_PREFIX_CHARS else []
        if len(found) == 1:
            return found[0]
        if found:
            raise HistoryError(f"{name!r} names {len(found)} versions: {', '.join(e.version for e in found)}")
        raise HistoryError(
            f"version {name!r} is not in the history: it never served here, or was pruned "
            f"(the history keeps {self.max_versions} versions and {self.max_bytes} bytes)"
        )

    def files(self, name: str) -> VersionFiles:
        """The files of a version, each checked against its sha256."""
        entry = self.resolve(name)
        files = {}
        for path, sha in sorted(entry.files.items()):
            raw = self._backend.get(sha)
            if raw is None or hashlib.sha256(raw).hexdigest() != sha:
                what = "missing" if raw is None else "corrupted (its bytes do not hash to its name)"
                raise HistoryError(f"version {entry.version}: {path} (object {sha}) is {what}")
            files[path] = raw
        return VersionFiles(entry, files)

    def stored_bytes(self) -> int:
        """Bytes the history holds: every distinct file, plus the index."""
        shas = {sha for e in fold(self._backend.events()).values() for sha in e.files.values()}
        return sum(self._backend.size(sha) for sha in shas) + self._backend.index_bytes()


# -- documents: what GET /versions answers and `policyd history --format json` prints --------------
def _time(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry_document(entry: VersionEntry) -> dict[str, Any]:
    return {
        "version": entry.version,
        "first_served": _time(entry.first_served),
        "last_served": _time(entry.last_served),
        "previous": entry.previous,
        "changed": entry.changed.to_dict(),
        "files": [{"path": p, "sha256": s} for p, s in sorted(entry.files.items())],
    }


def versions_document(history: History) -> dict[str, Any]:
    """`GET /versions`: every version kept, newest first, and the history's bounds."""
    return {
        "persistent": history.directory is not None,
        "max_versions": history.max_versions,
        "max_bytes": history.max_bytes,
        "stored_bytes": history.stored_bytes(),
        "versions": [entry_document(e) for e in history.entries()],
    }


def files_document(found: VersionFiles) -> dict[str, Any]:
    """`GET /versions/{version}`: the version and the text of each of its files."""
    return {
        **entry_document(found.entry),
        "files": [
            {"path": p, "sha256": found.entry.files[p], "text": raw.decode("utf-8", errors="replace")}
            for p, raw in found.files.items()
        ],
    }


@dataclass(frozen=True, slots=True)
class FileDiff:
    path: str
    change: str  # added | removed | modified
    diff: str  # unified diff


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> list[FileDiff]:
    """Unified diffs of every file that differs between two `files_document`s."""
    before = {f["path"]: f for f in old["files"]}
    after = {f["path"]: f for f in new["files"]}
    out = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is not None and b is not None and a["sha256"] == b["sha256"]:
            continue
        change = "added" if a is None else "removed" if b is None else "modified"
        lines = difflib.unified_diff(
            (a["text"] if a else "").splitlines(keepends=True),
            (b["text"] if b else "").splitlines(keepends=True),
            f"{old['version']}/{path}" if a else "/dev/null",
            f"{new['version']}/{path}" if b else "/dev/null",
        )
        out.append(
            FileDiff(path, change, "".join(line if line.endswith("\n") else line + "\n" for line in lines))
        )
    return out


# -- `policyd history`: the same documents, from a directory (offline) or a running service ---------
class HistorySource(Protocol):
    """Where `policyd history` reads: a history directory, or a service's /versions."""

    where: str

    def versions(self) -> dict[str, Any]: ...
    def version(self, name: str) -> dict[str, Any]: ...


class LocalHistory:
    """A history directory, read without the service (it need not run)."""

    def __init__(self, directory: Path) -> None:
        self.history = History.in_directory(directory, create=False)
        self.where = str(directory)

    def versions(self) -> dict[str, Any]:
        return versions_document(self.history)

    def version(self, name: str) -> dict[str, Any]:
        return files_document(self.history.files(name))


class RemoteHistory:
    """A running service's `GET /versions` (the history it keeps in memory or in a directory)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.where = self.url

    def _get(self, path: str) -> dict[str, Any]:
        import urllib.error
        import urllib.parse
        import urllib.request

        url = self.url + urllib.parse.quote(path)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                doc = orjson.loads(response.read())
        except urllib.error.HTTPError as e:
            raise HistoryError(f"{url}: HTTP {e.code}: {_error_text(e.read())}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise HistoryError(f"cannot reach {url}: {reason} (is policyd serving there?)") from None
        except orjson.JSONDecodeError:
            raise HistoryError(f"{url}: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise HistoryError(f"{url}: the answer is not a JSON object")
        return doc

    def versions(self) -> dict[str, Any]:
        return self._get("/versions")

    def version(self, name: str) -> dict[str, Any]:
        return self._get(f"/versions/{name}")


def _error_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace")[:200]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


def _changed_text(changed: Mapping[str, Sequence[str]]) -> str:
    parts = [f"{kind} {', '.join(paths)}" for kind, paths in changed.items() if paths]
    return "; ".join(parts) or "-"


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def render_versions(doc: Mapping[str, Any], where: str) -> str:
    rows = [f"{'version':<12}  {'first served':<24}  {'last served':<24}  changed against the previous"]
    for v in doc["versions"]:
        last = v["last_served"] or "(serving)"
        rows.append(f"{v['version']:<12}  {v['first_served']:<24}  {last:<24}  {_changed_text(v['changed'])}")
    kind = "directory" if doc["persistent"] else "memory of the service"
    rows.append(
        f"{counted(len(doc['versions']), 'version')}, {_size_text(doc['stored_bytes'])} in {where} ({kind}); "
        f"bounds: {doc['max_versions']} versions, {_size_text(doc['max_bytes'])}"
    )
    return "\n".join(rows)


def render_version(doc: Mapping[str, Any]) -> str:
    last = doc["last_served"] or "still serving"
    after = f", after {doc['previous']} ({_changed_text(doc['changed'])})" if doc["previous"] else ""
    lines = [f"version {doc['version']}: first served {doc['first_served']}, last served {last}{after}"]
    for f in doc["files"]:
        lines.append(f"==> {f['path']} (sha256 {f['sha256']}) <==")
        lines.append(f["text"].rstrip("\n"))
    return "\n".join(lines)


def export_version(doc: Mapping[str, Any], target: Path) -> list[Path]:
    """Write a version's files under `target` as a policy directory (for `eval`, `replay`)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HistoryError(f"{target} exists and is not an empty directory; choose a new one")
    written = []
    for f in doc["files"]:
        relative = Path(f["path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise HistoryError(f"version {doc['version']}: refusing the file path {f['path']!r}")
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f["text"], encoding="utf-8")
        written.append(path)
    return written


def show_history(
    source: HistorySource,
    out: TextIO,
    *,
    version: str | None = None,
    diff: tuple[str, str] | None = None,
    export: Path | None = None,
    output: OutputFormat = OutputFormat.PRETTY,
) -> None:
    """`policyd history`: list the versions, show one (or export it), or diff two.

    Raises HistoryError for a version the history does not hold or a source that cannot be read.
    """
    if diff is not None:
        old, new = source.version(diff[0]), source.version(diff[1])
        diffs = diff_documents(old, new)
        if output is OutputFormat.JSON:
            out.write(
                to_json(
                    {
                        "from": old["version"],
                        "to": new["version"],
                        "files": [{"path": d.path, "change": d.change, "diff": d.diff} for d in diffs],
                    }
                )
                + "\n"
            )
        elif not diffs:
            out.write(f"versions {old['version']} and {new['version']} hold the same files\n")
        else:
            out.write("".join(d.diff for d in diffs))
        return
    if version is not None:
        doc = source.version(version)
        if export is not None:
            written = export_version(doc, export)
            out.write(f"version {doc['version']}: {counted(len(written), 'file')} written to {export}\n")
        elif output is OutputFormat.JSON:
            out.write(to_json(doc) + "\n")
        else:
            out.write(render_version(doc) + "\n")
        return
    doc = source.versions()
    out.write((to_json(doc) if output is OutputFormat.JSON else render_versions(doc, source.where)) + "\n")
