"""The loader's reads: no file in the policy directory can stall a load, grow past its limit, lead
outside the directory, or make the change poll walk forever (issue 12 §4).

Every policy file is read by `policy.read_policy_file`; these tests go through `load_policy`,
`policyd check` and the watcher's fingerprint, with real FIFOs and symlinks.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import policyd.policy as policy_module
from policyd.cli import main
from policyd.engine import decide
from policyd.errors import ParseError, PolicyLoadError, UnsafeFileError
from policyd.policy import load_policy, read_policy_file
from policyd.rules.decision import Op
from policyd.service import watcher
from policyd.service.watcher import MAX_FINGERPRINT_ENTRIES, fingerprint
from tests.support import fixture, write_policy

HANG = 10.0  # seconds after which a load that has not returned counts as hung


def load_in_thread(directory: Path) -> tuple[object, float]:
    """load_policy in a thread: (the policy or the exception, seconds); fails if it hangs."""
    result: list[object] = []

    def target() -> None:
        try:
            result.append(load_policy(directory))
        except Exception as e:
            result.append(e)

    started = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"the load hung for {HANG} s"
    return result[0], time.perf_counter() - started


def only_error(outcome: object) -> Exception:
    assert isinstance(outcome, PolicyLoadError), outcome
    assert len(outcome.errors) == 1, outcome.errors
    return outcome.errors[0]


# -- FIFOs and growing files -------------------------------------------------------------------
def test_a_data_file_swapped_for_a_fifo_after_listing_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"', "data/bans.toml": "users = []\n"})
    listed = policy_module._policy_files

    def list_then_swap(root: Path) -> tuple[list[Path], list[Path]]:
        rules, data = listed(root)
        (root / "data" / "bans.toml").unlink()
        os.mkfifo(root / "data" / "bans.toml")  # no writer: a blocking open would wait forever
        return rules, data

    monkeypatch.setattr(policy_module, "_policy_files", list_then_swap)
    monkeypatch.setattr(policy_module, "MAX_LOAD_ATTEMPTS", 1)
    outcome, seconds = load_in_thread(policies)
    error = only_error(outcome)
    assert isinstance(error, UnsafeFileError) and error.code == "unsafe_file"
    print(f"a FIFO swapped in after listing: refused after {seconds * 1e3:.1f} ms")
    assert str(error) == "data/bans.toml: is a FIFO, not a regular file; policy files must be regular files"


def test_a_fifo_named_like_a_rule_file_is_a_warning_not_a_hang(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"'})
    os.mkfifo(policies / "Login.rules")
    os.mkfifo(policies / "data.toml")
    (policies / "data").mkdir()
    os.mkfifo(policies / "data" / "bans.toml")
    policy, _ = load_in_thread(policies)
    assert isinstance(policy, policy_module.Policy)
    assert [(w.code, str(w.location)) for w in policy.warnings] == [
        ("ignored_file", "Login.rules"),
        ("ignored_file", "data/bans.toml"),
    ]
    assert "it is a FIFO, not a regular file" in policy.warnings[0].message


def test_read_policy_file_reads_at_most_its_limit_from_a_file_that_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(b"1" * 5_000)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)  # what fstat said before the file grew to 5,000 bytes
        return os.stat_result((st.st_mode, *st[1:6], 100, *st[7:]))

    monkeypatch.setattr(policy_module.os, "fstat", stale_fstat)
    with pytest.raises(ParseError) as info:
        read_policy_file(path, "data/data.json", limit=1_000)
    assert info.value.message == "file grew past the limit of 1000 bytes while it was read"


# -- links -------------------------------------------------------------------------------------
def test_a_data_link_outside_the_policy_directory_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "app" / ".env"
    secret.parent.mkdir()
    secret.write_text('TOKEN = "hunter2-do-not-print"\n')
    policies = write_policy(tmp_path / "p", {"Login.rules": 'reject "{data.env.TOKEN}"'})
    (policies / "data").mkdir()
    (policies / "data" / "env.toml").symlink_to(secret)
    error = only_error(load_in_thread(policies)[0])
    assert isinstance(error, UnsafeFileError)
    assert str(error.location) == "data/env.toml"
    assert error.message == f"resolves to {secret}, outside the policy directory {policies}"
    assert "hunter2" not in str(error)


def test_a_rule_file_link_outside_the_policy_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.rules").write_text('reject "x"\n')
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "Ping.rules").symlink_to(tmp_path / "elsewhere.rules")
    error = only_error(load_in_thread(policies)[0])
    assert isinstance(error, UnsafeFileError) and str(error.location) == "Ping.rules"


def test_a_link_to_a_device_is_skipped_with_a_warning(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"'})
    (policies / "data").mkdir()
    (policies / "data" / "zero.json").symlink_to("/dev/zero")  # reading it would never end
    policy, _ = load_in_thread(policies)
    assert isinstance(policy, policy_module.Policy) and policy.data == {}
    assert [w.message for w in policy.warnings] == [
        "'data/zero.json' is ignored: it is a character device, not a regular file"
    ]


def configmap(root: Path, version: str, reason: str) -> None:
    """One version of a Kubernetes ConfigMap volume: a `..<timestamp>` directory with the files."""
    write_policy(
        root / version,
        {
            "Ping.rules": f'reject "{reason} {{data.bans.users}}" when user.user in data.bans.users\n',
            "data/bans.toml": 'users = ["mallory"]\n',
        },
    )


def test_a_configmap_volume_with_its_dot_dot_data_links_loads(tmp_path: Path) -> None:
    """The layout kubelet writes: KEY -> ..data/KEY, ..data -> ..2024_..., with data/ mapped by
    `items.path` (deploy/kubernetes.yaml); every link resolves inside the directory."""
    root = tmp_path / "configmap"
    configmap(root, "..2024_05_01_12_00_00.1234567", "banned")
    (root / "..data").symlink_to("..2024_05_01_12_00_00.1234567")
    (root / "Ping.rules").symlink_to("..data/Ping.rules")
    (root / "data").symlink_to("..data/data")
    # Reached through a link itself, as /etc/policyd/policies -> the volume often is.
    (tmp_path / "policies").symlink_to(root)
    for directory in (root, tmp_path / "policies"):
        policy = load_policy(directory)
        assert [d.path for d in policy.data_files] == ["data/bans.toml"]
        assert policy.warnings == ()
        ping = fixture("Ping-basic")["content"] | {"user": {"user": "mallory"}}
        assert decide(policy, Op.PING, ping).reason == "banned ['mallory']"
    result = CliRunner().invoke(main, ["check", str(tmp_path / "policies")])
    assert result.exit_code == 0, result.output


# -- symlink loops -----------------------------------------------------------------------------
def loop_tree(tmp_path: Path) -> Path:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"', "data/bans.toml": "users = []\n"})
    (policies / "data" / "a").symlink_to("..")  # data/a/data/a/data/a/... without a visited set
    (policies / "data" / "b").symlink_to("../data")
    (policies / "self").symlink_to("self")  # ELOOP
    return policies


def test_a_symlink_loop_costs_the_fingerprint_poll_a_few_stat_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = loop_tree(tmp_path)
    calls = 0
    real_stat = os.stat

    def counting_stat(*args: object, **kwargs: object) -> os.stat_result:
        nonlocal calls
        calls += 1
        return real_stat(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(watcher.os, "stat", counting_stat)
    started = time.perf_counter()
    print_ = fingerprint(policies)
    seconds = time.perf_counter() - started
    assert [Path(p).relative_to(policies).as_posix() for p, *_ in print_] == ["Ping.rules", "data/bans.toml"]
    assert calls <= 10, f"{calls} stat calls for 2 files and 2 directories"
    print(f"fingerprint of a looping tree: {calls} stat calls, {seconds * 1e3:.2f} ms")


def test_a_symlink_loop_leaves_the_load_alone(tmp_path: Path) -> None:
    policy, _ = load_in_thread(loop_tree(tmp_path))
    assert isinstance(policy, policy_module.Policy) and sorted(policy.data) == ["bans"]


def test_a_link_out_of_the_directory_is_not_walked_by_the_poll(tmp_path: Path) -> None:
    outside = write_policy(tmp_path / "big", {f"f{i}": "" for i in range(20)})
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"'})
    (policies / "elsewhere").symlink_to(outside)
    assert [Path(p).name for p, *_ in fingerprint(policies)] == ["Ping.rules"]


def test_the_poll_looks_at_a_bounded_number_of_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher, "MAX_FINGERPRINT_ENTRIES", 50)
    policies = write_policy(tmp_path / "p", {f"data/f{i:03d}.json": "1" for i in range(200)})
    assert len(fingerprint(policies)) < 50 < 200
    assert MAX_FINGERPRINT_ENTRIES == 10_000
