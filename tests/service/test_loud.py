"""Loud where it matters, through a real `policyd serve` (issue 13 §5, issue 12 §4 and §13.4):
what an operator must hear is a WARNING (or an INFO naming the recovery) in the log and, where it
is a state, in /status; a load that crashes is a failed reload like any other; start-up errors exit
2 before anything is logged as serving; unknown paths answer `{"error": ...}`."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import metric, wait_until
from tests.service.test_reload import ALLOW, PING, reject, wait_for_answer
from tests.support import PolicydProcess, fixture, free_port, write_policy

Start = Callable[..., PolicydProcess]


def status(server: PolicydProcess) -> dict[str, Any]:
    doc: dict[str, Any] = server.client.get("/status").json()
    return doc


def warning_lines(server: PolicydProcess, after: int = 0) -> list[str]:
    return [line for line in server.logs()[after:].splitlines() if " WARNING " in line]


def last_attempt(server: PolicydProcess) -> dict[str, Any]:
    attempt: dict[str, Any] = status(server)["reloads"]["last_attempt"]
    return attempt


def wait_for_attempt(server: PolicydProcess, count: int) -> dict[str, Any]:
    wait_until(
        lambda: (lambda r: r["successes"] + r["failures"] >= count)(status(server)["reloads"]),
        f"{count} reload attempts",
    )
    return last_attempt(server)


# -- the loader's crash class under serve ------------------------------------------------------------
def test_a_zero_range_step_hot_reloaded_is_a_counted_positioned_failure(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "v1"'})
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    (policies / "Ping.rules").write_text('reject "v2" when content.timestamp in range(0, 10, 0)\n')
    attempt = wait_for_attempt(server, 1)
    assert attempt["ok"] is False
    assert [(e["code"], e["location"], e["message"]) for e in attempt["errors"]] == [
        ("validation_error", "Ping.rules:1:52", "range() step must not be zero")
    ]
    metrics = server.client.get("/metrics").text
    assert metric(metrics, "policyd_reloads_total", result="failure") == 1
    assert metric(metrics, "policyd_last_reload_ok") == 0
    assert server.post(PING).json() == reject("v1")
    # A later edit is applied, and the log says the failure is over.
    (policies / "Ping.rules").write_text('reject "v3"\n')
    wait_for_answer(server, PING, reject("v3"))
    logs = server.wait_for_log("policy reload recovered")
    assert "failed unexpectedly" not in logs and "Traceback" not in logs
    assert re.search(
        r" INFO policyd\.reload: policy reload recovered: \w+ loads after 1 failed attempt", logs
    )
    assert [n["code"] for n in last_attempt(server)["notices"]] == ["reload_recovered"]


def test_a_revert_to_the_serving_version_is_logged_as_the_recovery(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "v1"\n'})
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    (policies / "Ping.rules").write_text('reject "v1" when content.timestap\n')
    server.wait_for_log("policy reload FAILED")
    (policies / "Ping.rules").write_text('reject "v1"\n')  # the same version as before: no swap
    logs = server.wait_for_log("policy reload recovered")
    assert logs.rindex("policy reload recovered") > logs.rindex("policy reload FAILED")
    assert last_attempt(server)["ok"] is True


# -- empty or mis-mounted directories ------------------------------------------------------------------
def test_serve_on_an_empty_directory_warns_and_shows_it(policyd_server: Start, tmp_path: Path) -> None:
    policies = tmp_path / "p"
    policies.mkdir()
    server = policyd_server(policies)
    assert server.post(PING).json() == ALLOW
    [line] = [w for w in warning_lines(server) if "no rule files" in w]
    assert f"no rule files in {policies}: frps gets 'allow unchanged' for every op" in line
    assert [w["code"] for w in status(server)["policy"]["warnings"]] == ["empty_policy"]
    assert metric(server.client.get("/metrics").text, "policyd_policy_warnings") == 1


def test_a_directory_mounted_one_level_off_names_where_the_rules_are(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"policies/Ping.rules": 'reject "x"'})
    server = policyd_server(policies)
    [warning] = status(server)["policy"]["warnings"]
    assert warning["hint"] == (
        f"rule files are in policies/: is the directory mounted one level off? "
        f"point --policies at {policies / 'policies'}"
    )


# -- files gone, files new, files near-miss -------------------------------------------------------------
def test_a_deleted_rule_file_is_a_warning(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "p",
        {"Ping.rules": 'reject "x"', "NewUserConn.rules": 'reject "visitors blocked"\nallow\n'},
    )
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    (policies / "NewUserConn.rules").unlink()
    wait_for_answer(server, fixture("NewUserConn-tcp"), ALLOW)
    logs = server.wait_for_log("NewUserConn.rules was removed")
    assert (
        "WARNING policyd.reload: NewUserConn.rules was removed: frps's NewUserConn calls are now "
        "allowed unchanged (its 2 rule(s) no longer apply) (restore NewUserConn.rules if that was not meant)"
    ) in logs
    assert [(n["code"], n["severity"]) for n in last_attempt(server)["notices"]] == [
        ("rule_file_removed", "warning")
    ]


def test_a_new_op_file_hints_that_frps_must_send_that_op(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Login.rules": "allow"})
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    (policies / "NewUserConn.rules").write_text('reject "no visitors"\n')
    logs = server.wait_for_log("NewUserConn.rules is new")
    assert (
        "WARNING policyd.reload: NewUserConn.rules is new: frps asks policyd about NewUserConn only "
        'if its plugin\'s ops include "NewUserConn"'
    ) in logs
    assert "policyd frps-config" in logs
    assert [n["code"] for n in last_attempt(server)["notices"]] == ["new_op"]


def test_near_miss_file_names_are_warnings_in_the_log_and_in_status(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"'})
    server = policyd_server(policies, "--reload-debounce-s", "0.05")
    before = len(server.logs())
    (policies / "NewProxy.rule").write_text('reject "x"\n')
    (policies / "Login.rules.txt").write_text('reject "x"\n')
    (policies / "data").mkdir()
    (policies / "data" / "users.yaml").write_text("a: 1\n")
    wait_until(lambda: len(status(server)["policy"]["warnings"]) == 3, "three warnings in /status")
    warnings = status(server)["policy"]["warnings"]
    assert [(w["code"], w["location"], w["hint"]) for w in warnings] == [
        (
            "ignored_file",
            "Login.rules.txt",
            "rename it to 'Login.rules' to load it, or move it out of the policy directory",
        ),
        (
            "ignored_file",
            "NewProxy.rule",
            "rename it to 'NewProxy.rules' to load it, or move it out of the policy directory",
        ),
        ("ignored_file", "data/users.yaml", "convert it to TOML or JSON, or move it out of data/"),
    ]
    logged = warning_lines(server, before)
    assert any("'NewProxy.rule' is ignored: only files named <Op>.rules are rule files" in w for w in logged)
    assert any("'Login.rules.txt' is ignored" in w for w in logged)
    # A case mismatch is an error: the edit does not load, and says why.
    (policies / "login.rules").write_text('reject "x"\n')
    server.wait_for_log("'login.rules' is not named after an op")
    assert server.logs().count("did you mean 'Login'?") >= 1


def test_editor_temp_files_are_not_listed_as_changed(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "a"'})
    server = policyd_server(policies, "--reload-debounce-s", "0.3")
    for name in ("4913", "Ping.rules~", "sedX1y2Z3"):
        (policies / name).write_text("tmp")
    (policies / "Ping.rules").write_text('reject "b"')
    wait_for_answer(server, PING, reject("b"))
    logs = server.wait_for_log("active after change of")
    assert "active after change of Ping.rules:" in logs
    assert not re.search(r"change of .*(4913|~|sedX1y2Z3)", logs)
    assert status(server)["policy"]["warnings"] == []


# -- start-up and unknown paths -----------------------------------------------------------------------
def test_a_port_in_use_exits_2_before_anything_is_logged_as_serving(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"'})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "policyd", "serve", "--policies", str(policies), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert (
        f"policyd: cannot listen on 127.0.0.1:{port}: address already in use; not starting" in result.stderr
    )
    assert "serving" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_unusable_tls_files_exit_2(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": 'reject "x"'})
    (tmp_path / "cert.pem").write_text("not a certificate")
    args = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "cert.pem")]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "policyd",
            "serve",
            "--policies",
            str(policies),
            "--port",
            str(free_port()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "policyd: cannot use tls_cert" in result.stderr and "serving" not in result.stderr


def test_unknown_paths_and_methods_answer_the_services_error_shape(policyd_server: Start) -> None:
    server = policyd_server()
    missing = server.client.get("/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "no such path: /nope"})
    assert missing.headers["content-type"] == "application/json"
    wrong = server.client.post("/status")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "/status does not answer POST"})
    assert wrong.headers["allow"] == "GET"
