"""--record-requests through a real server: no secret is ever written in clear, the recording is
bounded and rotated (also with workers sharing it), and `policyd replay` gates on it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from policyd.cli import main
from tests.helpers import metric, wait_until
from tests.support import PolicydProcess, fixture, write_policy

Start = Callable[..., PolicydProcess]
KEY = "a-key-of-at-least-sixteen-bytes"


def recording_args(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    (tmp_path / "key").write_text(KEY + "\n")
    return (
        "--record-requests",
        str(tmp_path / "requests.jsonl"),
        "--record-key-file",
        str(tmp_path / "key"),
        *extra,
    )


def recorded(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def written(server: PolicydProcess) -> float:
    return metric(server.client.get("/metrics").text, "policyd_recorded_requests_total", result="written")


SECRETS = (
    "pk-9f8e7d6c5b4a",
    "tk-the-team-token",
    "sk-visitors-only",
    "pwd-basic-auth",
    "gk-group-key",
    "Bearer abc.def.ghi",
)
POLICY = {
    # A rule that copies a secret into a field and one that repeats it in a reason: the copies are hashed too.
    "NewProxy.rules": 'set content.metas.copy = "was " + content.sk when content.sk\n'
    'reject "token {user.metas.token} refused" when content.proxy_name == "refused"\n',
    "Login.rules": "allow\n",
}


def test_no_secret_is_written_in_clear_and_equal_secrets_hash_equal(
    policyd_server: Start, tmp_path: Path
) -> None:
    policies = write_policy(tmp_path / "p", POLICY)
    server = policyd_server(policies, *recording_args(tmp_path))
    login = copy.deepcopy(fixture("Login-basic"))
    login["content"].update(privilege_key=SECRETS[0], metas={"team": "red", "token": SECRETS[1]})
    proxy = copy.deepcopy(fixture("NewProxy-stcp"))
    proxy["content"].update(sk=SECRETS[2], http_pwd=SECRETS[3], group_key=SECRETS[4])
    proxy["content"]["user"]["metas"] = {"team": "red", "token": SECRETS[1]}
    proxy["content"]["headers"] = {"Authorization": SECRETS[5]}
    refused = copy.deepcopy(proxy)
    refused["content"]["proxy_name"] = "refused"
    assert server.post(login).status_code == 200
    rewritten = server.post(proxy).json()
    assert rewritten["content"]["metas"]["copy"] == "was " + SECRETS[2]  # frps gets the real answer
    assert server.post(refused).json()["reject_reason"] == f"token {SECRETS[1]} refused"
    wait_until(lambda: written(server) == 3, "three recorded requests")
    raw = (tmp_path / "requests.jsonl").read_text()
    for secret in SECRETS:
        assert secret not in raw, secret
    header, first, second, third = recorded(tmp_path / "requests.jsonl")
    assert header["policyd_recording"] == 1 and len(header["key_id"]) == 16
    token = first["content"]["metas"]["token"]
    assert token.startswith("hmac-sha256:")
    assert second["content"]["user"]["metas"]["token"] == token  # the same secret, the same hash
    assert third["answer"] == {
        "outcome": "reject",
        "reason": f"token {token} refused",
        "rule": "NewProxy.rules:2",
        "policy_version": first["answer"]["policy_version"],
        "decided_by": second["answer"]["decided_by"],
    }
    sk = second["content"]["sk"]
    assert second["answer"]["content"]["metas"]["copy"] == f"was {sk}"
    assert second["content"]["headers"]["Authorization"].startswith("hmac-sha256:")
    assert (first["op"], second["op"], first["version"]) == ("Login", "NewProxy", "0.1.0")
    status = server.client.get("/status").json()["recording"]
    assert (
        status["lines"] == {"written": 3, "too_large": 0, "failed": 0}
        and status["key_id"] == header["key_id"]
    )


def test_the_recording_is_rotated_and_bounded(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": "allow\n"})
    server = policyd_server(
        policies, *recording_args(tmp_path, "--record-max-bytes", "8192", "--record-keep", "2")
    )
    for _ in range(150):  # about 400 bytes a line: 60 kB in all, for 3 files of 8 kB at most
        server.post(fixture("Ping-basic"))
    wait_until(lambda: written(server) == 150, "150 recorded requests")
    files = sorted(p.name for p in tmp_path.glob("requests.jsonl*"))
    assert files == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"]
    for name in files:
        path = tmp_path / name
        assert path.stat().st_size <= 8192
        lines = recorded(path)
        assert "policyd_recording" in lines[0] and all(line["op"] == "Ping" for line in lines[1:])
    result = CliRunner().invoke(
        main,
        [
            "replay",
            *(str(tmp_path / n) for n in reversed(files)),
            "--policies",
            str(policies),
            "--key",
            str(tmp_path / "key"),
        ],
    )
    assert result.exit_code == 0, result.output


def test_workers_share_one_bounded_recording(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": "allow\n"})
    args = recording_args(tmp_path, "--record-max-bytes", "16384", "--record-keep", "3")
    server = policyd_server(policies, *args, "--workers", "2")
    for _ in range(200):
        server.post(fixture("Ping-basic"))
    wait_until(lambda: written(server) == 200, "200 recorded requests")
    files = list(tmp_path.glob("requests.jsonl*"))
    assert len(files) == 4 and all(p.stat().st_size <= 16384 for p in files)
    for path in files:
        lines = recorded(path)  # whole lines only: no two workers' batches interleave
        assert "policyd_recording" in lines[0] and all(line["op"] == "Ping" for line in lines[1:])


def test_a_replay_of_live_traffic_gates_a_policy_change(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(
        tmp_path / "p", {"NewProxy.rules": 'reject "no udp" when content.proxy_type == "udp"\n'}
    )
    server = policyd_server(policies, *recording_args(tmp_path))
    for name in ("NewProxy-tcp", "NewProxy-udp-bandwidth", "NewProxy-http"):
        server.post(fixture(name))
    wait_until(lambda: written(server) == 3, "three recorded requests")
    candidate = write_policy(
        tmp_path / "candidate", {"NewProxy.rules": 'reject "no udp" when content.proxy_type == "udp"\n'}
    )

    def replay() -> Any:
        return CliRunner().invoke(
            main,
            [
                "replay",
                str(tmp_path / "requests.jsonl"),
                "--policies",
                str(candidate),
                "--key",
                str(tmp_path / "key"),
            ],
        )

    assert replay().exit_code == 0
    (candidate / "NewProxy.rules").write_text(
        'reject "no udp or tcp" when content.proxy_type in ("udp", "tcp")\n'
    )
    changed = replay()
    assert changed.exit_code == 1
    assert "1 unchanged, 2 changed" in changed.output and "now: reject 'no udp or tcp'" in changed.output


def test_recording_needs_a_usable_key(policyd_server: Start, tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": "allow\n"})
    no_key = policyd_server(policies, "--record-requests", str(tmp_path / "r.jsonl"), wait=False)
    assert no_key.proc.wait(timeout=30) == 2
    assert "record_requests needs record_key_file" in no_key.logs()
    (tmp_path / "short").write_text("abc\n")
    short = policyd_server(
        policies,
        "--record-requests",
        str(tmp_path / "r.jsonl"),
        "--record-key-file",
        str(tmp_path / "short"),
        wait=False,
    )
    assert short.proc.wait(timeout=30) == 2
    assert "at least 16 bytes, not 3" in short.logs()
    assert not (tmp_path / "r.jsonl").exists()
