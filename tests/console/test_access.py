"""Who may use the console, without a browser: off by default, admin_allow, the edit token, CSRF."""

from __future__ import annotations

import hmac
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from policyd.console import tokens
from policyd.console.app import render_pages
from policyd.console.tokens import TokenFile, parse_tokens
from policyd.service.settings import SettingsError
from tests.console.support import (
    JSON_POST,
    OTHER_TOKEN,
    TOKEN,
    bearer,
    console_client,
    console_settings,
    copy_policy,
    sync,
    token_file,
)
from tests.support import SHIPPED_POLICIES, PolicydProcess

# The shipped Ping.rules and one rule more: the shipped test cases still pass with it.
PING_RULES = (
    SHIPPED_POLICIES / "Ping.rules"
).read_text() + 'reject "no pings for carol" when user.user == "carol"\n'


@pytest.fixture
def edit_settings(tmp_path: Path) -> object:
    policies = copy_policy(tmp_path / "policies")
    return console_settings(policies, console="edit", console_token_file=token_file(tmp_path))


def _save_body(rel: str, text: str, base: str | None) -> dict[str, object]:
    return {"path": rel, "text": text, "base_sha256": base}


# -- off by default; admin_allow; Host ----------------------------------------------------------


@sync
async def test_the_console_is_off_by_default(tmp_path: Path) -> None:
    async with console_client(console_settings(SHIPPED_POLICIES)) as (client, _, _):
        for path in ("/ui/", "/ui/api/overview", "/ui/static/console.css"):
            assert (await client.get(path)).status_code == 404, path
        response = await client.post("/ui/api/eval", json={"op": "Ping", "content": {}})
        assert response.status_code == 404


@sync
async def test_admin_allow_guards_every_console_path() -> None:
    settings = console_settings(SHIPPED_POLICIES, console="read", admin_allow="10.0.0.0/8")
    async with console_client(settings, peer="192.0.2.9") as (client, _, _):
        for path in ("/ui/", "/ui/decisions", "/ui/api/overview", "/ui/static/js/common.js"):
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "admin_allow" in response.json()["error"]
        assert (await client.post("/ui/api/eval", json={"op": "Ping", "content": {}})).status_code == 403
    async with console_client(settings, peer="10.1.2.3") as (client, _, _):
        assert (await client.get("/ui/api/overview")).status_code == 200
        assert (await client.get("/ui/")).status_code == 200


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:9000", 200), ("localhost:9000", 200), ("[::1]:9000", 200), ("evil.example:9000", 403)],
)
@sync
async def test_a_host_name_other_than_an_address_or_localhost_is_refused(host: str, status: int) -> None:
    settings = console_settings(SHIPPED_POLICIES, console="read")
    async with console_client(settings, host=host) as (client, _, _):
        response = await client.get("/ui/api/overview")
        assert response.status_code == status
        if status == 403:
            assert "DNS" not in response.text and "not an IP address" in response.json()["error"]


@sync
async def test_every_answer_carries_a_strict_content_security_policy() -> None:
    async with console_client(console_settings(SHIPPED_POLICIES, console="read")) as (client, _, _):
        for path in ("/ui/", "/ui/playground", "/ui/api/overview", "/ui/static/js/common.js", "/ui/nope"):
            csp = (await client.get(path)).headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp, path
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        api = await client.get("/ui/api/overview")
        assert api.headers["cache-control"] == "no-store"
        assert api.headers["x-frame-options"] == "DENY"


def test_no_page_has_inline_script_or_style() -> None:
    pages = render_pages()
    assert set(pages) == {"", "decisions", "playground", "policy", "state"}
    for name, raw in pages.items():
        html = raw.decode()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag, f"{name}: inline script {tag}"
        for body in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S):
            assert not body.strip(), f"{name}: inline script"
        assert re.search(r"\son[a-z]+=", html) is None, f"{name}: an inline event handler"
        assert "<style" not in html and " style=" not in html, name
        assert "http://" not in html and "https://" not in html, f"{name}: another origin"
        assert html.count("<h1>") == 1 and html.count('aria-current="page"') == 1, name
        assert "$" not in html, f"{name}: a placeholder left in"


# -- the edit token -------------------------------------------------------------------------------


def test_edit_mode_needs_a_token_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="console = edit needs console_token_file"):
        console_settings(SHIPPED_POLICIES, console="edit")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", r":1: expected name:token"),
        ("# c\nalice:short\n", r":2: the token of 'alice' has 5 characters; use 16 to 4096"),
        (f"al ice:{TOKEN}\n", r":1: a token's name is"),
        (f"alice:{TOKEN}\nalice:{OTHER_TOKEN}\n", r":2: the name 'alice' is given twice"),
        (f"alice:{TOKEN}\nbob:{TOKEN}\n", r":2: the token of 'bob' is also another name's token"),
        ("# nothing\n", r"no tokens"),
    ],
)
def test_a_bad_token_file_is_a_settings_error_naming_its_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = token_file(tmp_path, text)
    with pytest.raises(SettingsError, match=message) as raised:
        console_settings(SHIPPED_POLICIES, console="edit", console_token_file=path)
    assert TOKEN not in str(raised.value) and "short" not in str(raised.value).split("'alice'")[-1]


def test_a_missing_token_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        console_settings(SHIPPED_POLICIES, console="edit", console_token_file=tmp_path / "none")


def test_every_token_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    known = parse_tokens(f"alice:{TOKEN}\nbob:{OTHER_TOKEN}\ncarol:{'c' * 20}\n", "f")
    calls = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", counting)
    assert known.who(TOKEN) == "alice"
    assert len(calls) == 3
    assert known.who("x" * 30) is None
    assert known.who(OTHER_TOKEN) == "bob"


def test_a_changed_token_file_is_read_again_and_a_broken_one_refuses_all(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    file = TokenFile(path)
    assert file.who(TOKEN) == "alice"
    path.write_text(f"carol:{'c' * 24}\n")
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert file.who(TOKEN) is None
    assert file.who("c" * 24) == "carol"
    path.write_text("broken\n")
    os.utime(path, ns=(2, 2))
    assert file.who("c" * 24) is None


@sync
async def test_whoami_without_a_wrong_or_the_right_token(
    edit_settings: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with console_client(edit_settings) as (client, _, _):  # type: ignore[arg-type]
        missing = await client.post("/ui/api/whoami", json={})
        assert missing.status_code == 401 and missing.json()["code"] == "no_token"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.post("/ui/api/whoami", json={}, headers=bearer("x" * 30))
        assert wrong.status_code == 401 and wrong.json()["code"] == "bad_token"
        right = await client.post("/ui/api/whoami", json={}, headers=bearer())
        assert right.status_code == 200 and right.json() == {"name": "alice"}
        other = await client.post("/ui/api/whoami", json={}, headers=bearer(OTHER_TOKEN))
        assert other.json() == {"name": "bob"}
    assert "a wrong edit token" in caplog.text
    assert TOKEN not in caplog.text and OTHER_TOKEN not in caplog.text and "x" * 30 not in caplog.text


@sync
async def test_read_mode_refuses_edits_with_the_reason(tmp_path: Path) -> None:
    policies = copy_policy(tmp_path / "p")
    settings = console_settings(policies, console="read", console_token_file=token_file(tmp_path))
    async with console_client(settings) as (client, _, _):
        overview = (await client.get("/ui/api/overview")).json()
        assert overview["edit"] == {
            "enabled": False,
            "reason": "the console runs in read mode (console = read)",
        }
        body = _save_body("Ping.rules", PING_RULES, None)
        response = await client.post("/ui/api/save", json=body, headers=bearer())
        assert response.status_code == 403 and response.json()["code"] == "edit_off"
        assert "read mode" in response.json()["error"]
    assert (policies / "Ping.rules").read_text() == (SHIPPED_POLICIES / "Ping.rules").read_text()


@sync
async def test_a_save_without_the_token_writes_nothing(edit_settings: object) -> None:
    policies: Path = edit_settings.policies  # type: ignore[attr-defined]
    before = (policies / "Ping.rules").read_bytes()
    async with console_client(edit_settings) as (client, _, _):  # type: ignore[arg-type]
        file = (await client.get("/ui/api/file", params={"path": "Ping.rules"})).json()
        body = _save_body("Ping.rules", PING_RULES, file["sha256"])
        for headers in (JSON_POST, bearer("not-the-token-at-all")):
            response = await client.post("/ui/api/save", json=body, headers=headers)
            assert response.status_code == 401
        assert (policies / "Ping.rules").read_bytes() == before
        saved = await client.post("/ui/api/save", json=body, headers=bearer())
        assert saved.status_code == 200 and saved.json()["saved"] is True
    assert (policies / "Ping.rules").read_text() == PING_RULES


# -- CSRF: every state-changing call is a same-origin JSON POST -------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Origin": "http://evil.example"}, 403, "cross-origin request refused"),
        ({"Origin": "null"}, 403, "cross-origin request refused"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site request refused"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "cross-site request refused"),
        ({"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type: application/json"),
    ],
)
@sync
async def test_cross_site_or_non_json_posts_are_refused(
    edit_settings: object, headers: dict[str, str], status: int, message: str
) -> None:
    policies: Path = edit_settings.policies  # type: ignore[attr-defined]
    before = (policies / "Ping.rules").read_bytes()
    async with console_client(edit_settings) as (client, _, _):  # type: ignore[arg-type]
        sha = (await client.get("/ui/api/file", params={"path": "Ping.rules"})).json()["sha256"]
        body = _save_body("Ping.rules", PING_RULES, sha)
        response = await client.post("/ui/api/save", json=body, headers={**bearer(), **headers})
        assert response.status_code == status
        assert message in response.json()["error"]
        evaluated = await client.post("/ui/api/eval", json={"op": "Ping", "content": {}}, headers=headers)
        assert evaluated.status_code == status
        same_origin = {**bearer(), "Origin": "http://127.0.0.1:9000", "Sec-Fetch-Site": "same-origin"}
        assert (await client.post("/ui/api/whoami", json={}, headers=same_origin)).status_code == 200
    assert (policies / "Ping.rules").read_bytes() == before


@sync
async def test_state_changing_calls_are_post_only(edit_settings: object) -> None:
    async with console_client(edit_settings) as (client, _, _):  # type: ignore[arg-type]
        for method in ("PUT", "DELETE", "PATCH"):
            response = await client.request(method, "/ui/api/save", headers=bearer(), json={})
            assert response.status_code == 405, method
        wrong = await client.get("/ui/api/save", headers=bearer())
        assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
        missing = await client.get("/ui/api/nothing")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


# -- over real HTTP -----------------------------------------------------------------------------------


def test_the_edit_token_and_origin_checks_over_http(policyd_server: object, tmp_path: Path) -> None:
    policies = copy_policy(tmp_path / "p")
    tokens_path = token_file(tmp_path)
    server: PolicydProcess = policyd_server(  # type: ignore[operator]
        policies, "--console", "edit", "--console-token-file", str(tokens_path)
    )
    page = server.client.get("/ui/")
    assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    whoami = server.client.post("/ui/api/whoami", json={}, headers=bearer())
    assert whoami.json() == {"name": "alice"}
    assert server.client.post("/ui/api/whoami", json={}).status_code == 401
    foreign = {**bearer(), "Origin": "http://attacker.example"}
    assert server.client.post("/ui/api/whoami", json={}, headers=foreign).status_code == 403
    assert TOKEN not in server.logs()


def _read_only_prefix(policies: Path) -> list[str]:
    """How to run policyd with `policies` read-only: chmod for other users; for root (who writes
    anyway) a read-only bind mount in a user and mount namespace of its own."""
    if os.geteuid() != 0:
        policies.chmod(0o555)
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root, and unshare(1) is missing: no way to make a read-only mount")
    probe = subprocess.run(
        [unshare, "-rm", "mount", "--bind", "-o", "ro", str(policies), str(policies)],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"running as root, and unshare -rm cannot mount read-only here: {probe.stderr!r}")
    return [unshare, "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(policies)]


def test_a_read_only_policy_directory_turns_edit_off_and_says_why(
    policyd_server: object, tmp_path: Path
) -> None:
    policies = copy_policy(tmp_path / "p")
    tokens_path = token_file(tmp_path)
    try:
        server: PolicydProcess = policyd_server(  # type: ignore[operator]
            policies,
            "--console",
            "edit",
            "--console-token-file",
            str(tokens_path),
            prefix=_read_only_prefix(policies),
        )
        overview = server.client.get("/ui/api/overview").json()
        assert overview["edit"]["enabled"] is False
        reason = overview["edit"]["reason"]
        assert "read-only file system" in reason or "not writable" in reason
        response = server.client.post(
            "/ui/api/save", json=_save_body("Ping.rules", PING_RULES, None), headers=bearer()
        )
        assert response.status_code == 403 and response.json()["code"] == "edit_off"
        assert str(policies) in response.json()["error"]
        page = server.client.get("/ui/policy")
        assert page.status_code == 200
    finally:
        policies.chmod(0o755)
