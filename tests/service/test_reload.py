"""Hot reload through a real server: edits, broken edits, deletes, rename-saves, ConfigMap swaps."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import PolicydProcess, fixture, write_policy

Start = Callable[..., PolicydProcess]
PING = fixture("Ping-basic")


def reject(reason: str) -> dict[str, Any]:
    return {"reject": True, "reject_reason": reason}


ALLOW = {"reject": False, "unchange": True}


def wait_for_answer(
    server: PolicydProcess, body: dict[str, Any], expected: dict[str, Any], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    answer: Any = None
    while time.monotonic() < deadline:
        answer = server.post(body).json()
        if answer == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"answer stayed {answer}, expected {expected}\n{server.logs()}")


def answer_stays(
    server: PolicydProcess, body: dict[str, Any], expected: dict[str, Any], seconds: float = 1.0
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.post(body).json() == expected
        time.sleep(0.05)


def test_edit_takes_effect_without_restart(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "v1"'})
    server = policyd_server(policies)
    assert server.post(PING).json() == reject("v1")
    (policies / "Ping.rules").write_text('reject "v2"')
    wait_for_answer(server, PING, reject("v2"))
    server.wait_for_log("active after change of Ping.rules")


def test_broken_edit_keeps_last_good_and_logs_the_error(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "good"'})
    server = policyd_server(policies)
    (policies / "Ping.rules").write_text('reject "bad" when content.timestap > 0')
    server.wait_for_log(
        "Ping.rules:1:27: 'content' has no field 'timestap' in Ping (did you mean 'timestamp'?)"
    )
    assert "policy reload FAILED" in server.logs()
    answer_stays(server, PING, reject("good"), 0.5)
    # Fixing the file brings the new version in.
    (policies / "Ping.rules").write_text('reject "fixed"')
    wait_for_answer(server, PING, reject("fixed"))


def test_one_broken_file_blocks_the_whole_new_version(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "a1"', "Login.rules": 'reject "b1"'})
    server = policyd_server(policies)
    # Edit both in one burst: one good, one broken. Neither may take effect.
    (policies / "Ping.rules").write_text('reject "a2"')
    (policies / "Login.rules").write_text("reject b2")
    server.wait_for_log("policy reload FAILED")
    answer_stays(server, PING, reject("a1"), 0.5)
    assert server.post(fixture("Login-basic")).json() == reject("b1")


def test_deleting_a_rule_file_allows_its_op(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"', "Login.rules": 'reject "y"'})
    server = policyd_server(policies)
    (policies / "Ping.rules").unlink()
    wait_for_answer(server, PING, ALLOW)
    assert server.post(fixture("Login-basic")).json() == reject("y")


def test_creating_a_rule_file_takes_effect(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Login.rules": ""})
    server = policyd_server(policies)
    assert server.post(PING).json() == ALLOW
    (policies / "Ping.rules").write_text('reject "new"')
    wait_for_answer(server, PING, reject("new"))


def test_rename_save_like_vim_takes_effect(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "old"'})
    server = policyd_server(policies)
    # vim/IDEs: write a temp file, then rename it over the original.
    tmp = policies / ".Ping.rules.swp"
    tmp.write_text('reject "renamed"')
    os.replace(tmp, policies / "Ping.rules")
    wait_for_answer(server, PING, reject("renamed"))


def test_data_file_edit_takes_effect(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "p",
        {
            "Ping.rules": 'reject "banned" when user.user in data.bans.users',
            "data/bans.toml": "users = []\n",
        },
    )
    server = policyd_server(policies)
    assert server.post(PING).json() == ALLOW
    (policies / "data" / "bans.toml").write_text('users = ["alice"]\n')
    wait_for_answer(server, PING, reject("banned"))


def test_broken_data_file_keeps_last_good(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "p",
        {"Ping.rules": 'reject "n={len(data.bans.users)}"', "data/bans.toml": 'users = ["a"]\n'},
    )
    server = policyd_server(policies)
    (policies / "data" / "bans.toml").write_text("users = [\n")
    server.wait_for_log("data/bans.toml:")
    answer_stays(server, PING, reject("n=1"), 0.5)


def test_configmap_symlink_swap_takes_effect(policyd_server: Start, tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as KEY -> ..data/KEY and swaps ..data atomically."""
    policies = tmp_path / "configmap"
    first = policies / "..2026_11_25_1"
    write_policy(first, {"Ping.rules": 'reject "cm1"'})
    (policies / "..data").symlink_to(first.name)
    (policies / "Ping.rules").symlink_to("..data/Ping.rules")
    server = policyd_server(policies)
    assert server.post(PING).json() == reject("cm1")

    second = policies / "..2026_11_25_2"
    write_policy(second, {"Ping.rules": 'reject "cm2"'})
    (policies / "..data_tmp").symlink_to(second.name)
    os.replace(policies / "..data_tmp", policies / "..data")
    shutil.rmtree(first)
    wait_for_answer(server, PING, reject("cm2"))


def test_one_save_is_one_reload(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "a"'})
    server = policyd_server(policies)
    path = policies / "Ping.rules"
    with path.open("w") as f:  # several writes of one save: truncate, write, write, close
        f.write('reject "b')
        f.flush()
        f.write('"\n')
    wait_for_answer(server, PING, reject("b"))
    time.sleep(0.5)
    assert server.logs().count("active after change") == 1
