"""The version history: kept across restarts, one entry per version, bounded by count and bytes,
read back into the exact files that served; `policyd history` over a directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from policyd.cli import main
from policyd.policy import load_policy, policy_version
from policyd.tools.history import (
    INDEX,
    MEMORY_MAX_VERSIONS,
    OBJECTS,
    History,
    HistoryError,
    files_document,
    versions_document,
)
from tests.support import SHIPPED_POLICIES, write_policy


def sources(ping: str, data: str = "banned_users = []\n") -> dict[str, bytes]:
    """A small policy's files, as Policy.sources holds them (data first)."""
    return {"data/access.toml": data.encode(), "Ping.rules": ping.encode()}


def serve(history: History, files: dict[str, bytes], at: float, previous: str | None = None) -> str:
    version = policy_version(files)
    history.served(version, files, previous=previous, at=at)
    return version


def index_lines(directory: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (directory / INDEX).read_text().splitlines()]


def test_a_version_is_kept_with_its_files_and_what_changed(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h")
    v1 = serve(history, sources('reject "one"\n'), at=100.0)
    v2 = serve(history, sources('reject "two"\n'), at=200.0, previous=v1)
    [second, first] = history.entries()
    assert (first.version, first.first_served, first.last_served) == (v1, 100.0, 200.0)
    assert (second.version, second.first_served, second.last_served) == (v2, 200.0, None)
    assert second.previous == v1 and second.changed.modified == ("Ping.rules",)
    assert second.changed.added == second.changed.removed == ()
    assert history.files(v1).files == sources('reject "one"\n')
    # Files are stored once, by their sha256: the data file both versions share is one object.
    objects = sorted(p.name for p in (tmp_path / "h" / OBJECTS).iterdir())
    expected = {
        hashlib.sha256(raw).hexdigest() for v in ("one", "two") for raw in sources(f'reject "{v}"\n').values()
    }
    assert objects == sorted(expected) and len(objects) == 3


def test_the_history_survives_a_restart_and_a_restart_adds_no_version(tmp_path: Path) -> None:
    directory = tmp_path / "h"
    v1 = serve(History.in_directory(directory), sources("allow\n"), at=100.0)
    History.in_directory(directory).retired(v1, at=150.0)  # a clean shutdown
    reopened = History.in_directory(directory)
    assert [(e.version, e.last_served) for e in reopened.entries()] == [(v1, 150.0)]
    serve(reopened, sources("allow\n"), at=160.0)  # the next start, same policy
    [entry] = History.in_directory(directory).entries()
    assert (entry.version, entry.first_served, entry.last_served, entry.served_count) == (v1, 100.0, None, 2)


def test_identical_versions_are_listed_once_after_a_revert(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h")
    v1 = serve(history, sources('reject "a"\n'), at=1.0)
    v2 = serve(history, sources('reject "b"\n'), at=2.0, previous=v1)
    assert serve(history, sources('reject "a"\n'), at=3.0, previous=v2) == v1
    entries = {e.version: e for e in history.entries()}
    assert sorted(entries) == sorted([v1, v2])
    assert (entries[v1].first_served, entries[v1].last_served) == (1.0, None)  # serving again
    assert (entries[v2].first_served, entries[v2].last_served) == (2.0, 3.0)


def test_a_version_left_serving_by_a_crash_is_retired_when_another_starts(tmp_path: Path) -> None:
    directory = tmp_path / "h"
    v1 = serve(History.in_directory(directory), sources("allow\n"), at=10.0)  # no retired: killed
    v2 = serve(History.in_directory(directory), sources('reject "x"\n'), at=50.0)
    entries = {e.version: e for e in History.in_directory(directory).entries()}
    assert entries[v1].last_served == 50.0
    assert entries[v2].previous == v1  # after a restart, against what served last


def test_the_oldest_versions_are_pruned_past_the_count(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h", max_versions=3)
    versions = [serve(history, sources(f'reject "{n}"\n'), at=float(n)) for n in range(6)]
    assert [e.version for e in history.entries()] == versions[:2:-1]
    with pytest.raises(HistoryError, match="not in the history"):
        history.files(versions[0])
    # Pruned versions' own files are gone; the data file every version shares stays.
    rules = {hashlib.sha256(f'reject "{n}"\n'.encode()).hexdigest() for n in range(6)}
    left = {p.name for p in (tmp_path / "h" / OBJECTS).iterdir()}
    assert left & rules == {hashlib.sha256(f'reject "{n}"\n'.encode()).hexdigest() for n in (3, 4, 5)}
    assert hashlib.sha256(b"banned_users = []\n").hexdigest() in left
    # The index is compacted with the pruning: only the kept versions' events remain.
    assert {e["version"] for e in index_lines(tmp_path / "h")} == set(versions[3:])


def test_the_least_recently_served_go_first_past_the_byte_bound(tmp_path: Path) -> None:
    big = "x" * 4000
    history = History.in_directory(tmp_path / "h", max_bytes=10_000)
    old = serve(history, sources(f'reject "{big}1"\n'), at=1.0)
    newer = serve(history, sources(f'reject "{big}2"\n'), at=2.0)
    serve(history, sources(f'reject "{big}1"\n'), at=3.0)  # `old` serves again: now recent
    serve(history, sources(f'reject "{big}3"\n'), at=4.0)
    kept = {e.version for e in history.entries()}
    assert newer not in kept and old in kept
    assert history.stored_bytes() <= 10_000


def test_the_serving_version_is_kept_even_when_it_alone_is_over_the_bound(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h", max_bytes=100)
    serve(history, sources("allow\n"), at=1.0)
    version = serve(history, sources(f'reject "{"y" * 500}"\n'), at=2.0)
    assert [e.version for e in history.entries()] == [version]
    assert history.files(version).files["Ping.rules"].startswith(b'reject "yyy')


def test_restarts_do_not_grow_the_index_without_bound(tmp_path: Path) -> None:
    directory = tmp_path / "h"
    for n in range(50):
        history = History.in_directory(directory)
        version = serve(history, sources("allow\n"), at=float(2 * n))
        history.retired(version, at=float(2 * n + 1))
    assert len(index_lines(directory)) <= 10
    [entry] = History.in_directory(directory).entries()
    assert (entry.first_served, entry.last_served) == (0.0, 99.0)


def test_without_a_directory_the_last_20_versions_are_kept_in_memory() -> None:
    history = History.in_memory()
    versions = [
        serve(history, sources(f'reject "{n}"\n'), at=float(n)) for n in range(MEMORY_MAX_VERSIONS + 5)
    ]
    assert [e.version for e in history.entries()] == versions[:4:-1]
    assert history.files(versions[-1]).files == sources(f'reject "{MEMORY_MAX_VERSIONS + 4}"\n')


def test_a_version_is_found_by_a_unique_prefix_and_errors_name_the_problem(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h")
    version = serve(history, sources("allow\n"), at=1.0)
    assert history.resolve(version[:4]).version == version
    with pytest.raises(HistoryError, match="not in the history"):
        history.resolve(version[:3])  # too short to be a prefix
    with pytest.raises(HistoryError, match="not in the history"):
        history.resolve("ffffffffffff")


def test_a_corrupted_object_is_reported_not_served_as_the_rules(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h")
    version = serve(history, sources("allow\n"), at=1.0)
    sha = hashlib.sha256(b"allow\n").hexdigest()
    (tmp_path / "h" / OBJECTS / sha).write_bytes(b"reject\n")
    with pytest.raises(HistoryError, match=r"Ping.rules .* is corrupted"):
        history.files(version)


def test_a_torn_index_line_is_skipped(tmp_path: Path) -> None:
    history = History.in_directory(tmp_path / "h")
    version = serve(history, sources("allow\n"), at=1.0)
    with open(tmp_path / "h" / INDEX, "ab") as index:
        index.write(b'{"event": "served", "vers')  # a write cut short
    assert [e.version for e in History.in_directory(tmp_path / "h").entries()] == [version]


def test_a_history_is_written_for_a_real_policy_and_its_files_load_to_the_same_version(
    tmp_path: Path,
) -> None:
    policy = load_policy(SHIPPED_POLICIES)
    history = History.in_directory(tmp_path / "h")
    history.served(policy.version, policy.sources, previous=None)
    export = tmp_path / "export"
    result = CliRunner().invoke(
        main, ["history", policy.version, "--export", str(export), "--history-dir", str(tmp_path / "h")]
    )
    assert result.exit_code == 0, result.output
    assert load_policy(export).version == policy.version


# -- policyd history on a directory ------------------------------------------------------------
def history_dir_with_two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    directory = tmp_path / "h"
    history = History.in_directory(directory)
    v1 = serve(history, sources('reject "one"\n'), at=100.0)
    v2 = serve(history, sources('reject "two"\n', data="banned_users = ['eve']\n"), at=200.0, previous=v1)
    return directory, v1, v2


def test_history_lists_versions_offline(tmp_path: Path) -> None:
    directory, v1, v2 = history_dir_with_two_versions(tmp_path)
    result = CliRunner().invoke(main, ["history", "--history-dir", str(directory)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:3] == [v2, "1970-01-01T00:03:20.000Z", "(serving)"]
    assert (
        "modified Ping.rules, data/access.toml" in lines[1]
        or "modified data/access.toml, Ping.rules" in lines[1]
    )
    assert lines[2].split()[:3] == [v1, "1970-01-01T00:01:40.000Z", "1970-01-01T00:03:20.000Z"]
    assert lines[3].startswith("2 versions, ") and f"in {directory} (directory)" in lines[3]


def test_history_json_is_the_versions_document(tmp_path: Path) -> None:
    directory, _, _ = history_dir_with_two_versions(tmp_path)
    result = CliRunner().invoke(main, ["history", "--history-dir", str(directory), "--format", "json"])
    assert result.exit_code == 0
    assert orjson.loads(result.output) == versions_document(History.in_directory(directory, create=False))


def test_history_shows_a_versions_files(tmp_path: Path) -> None:
    directory, v1, _ = history_dir_with_two_versions(tmp_path)
    result = CliRunner().invoke(main, ["history", v1, "--history-dir", str(directory)])
    assert result.exit_code == 0, result.output
    assert f"version {v1}: first served 1970-01-01T00:01:40.000Z" in result.output
    assert "==> Ping.rules (sha256 " in result.output and 'reject "one"' in result.output
    json_out = CliRunner().invoke(main, ["history", v1, "--history-dir", str(directory), "--format", "json"])
    doc = orjson.loads(json_out.output)
    assert doc == files_document(History.in_directory(directory).files(v1))
    assert {f["path"]: f["text"] for f in doc["files"]} == {
        "Ping.rules": 'reject "one"\n',
        "data/access.toml": "banned_users = []\n",
    }


def test_history_diffs_two_versions(tmp_path: Path) -> None:
    directory, v1, v2 = history_dir_with_two_versions(tmp_path)
    result = CliRunner().invoke(main, ["history", "--diff", v1, v2, "--history-dir", str(directory)])
    assert result.exit_code == 0, result.output
    assert f"--- {v1}/Ping.rules\n+++ {v2}/Ping.rules\n" in result.output
    assert '-reject "one"\n+reject "two"\n' in result.output
    assert "+banned_users = ['eve']\n" in result.output
    same = CliRunner().invoke(main, ["history", "--diff", v1, v1, "--history-dir", str(directory)])
    assert same.output == f"versions {v1} and {v1} hold the same files\n"


def test_history_exits_2_for_a_version_it_does_not_hold_or_a_directory_without_history(
    tmp_path: Path,
) -> None:
    directory, _, _ = history_dir_with_two_versions(tmp_path)
    unknown = CliRunner().invoke(main, ["history", "abcdef123456", "--history-dir", str(directory)])
    assert unknown.exit_code == 2 and "version 'abcdef123456' is not in the history" in unknown.output
    empty = write_policy(tmp_path / "not-a-history", {"Ping.rules": "allow\n"})
    missing = CliRunner().invoke(main, ["history", "--history-dir", str(empty)])
    assert missing.exit_code == 2 and "holds no policy history" in missing.output
    assert not (empty / OBJECTS).exists()  # reading never creates anything
