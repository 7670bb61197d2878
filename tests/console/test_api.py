"""The console's JSON APIs in-process: the playground, checking and saving edits, files, state."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from policyd.service.settings import Settings
from tests.console.support import bearer, console_client, console_settings, copy_policy, sync, token_file
from tests.support import SHIPPED_POLICIES, fixture, write_policy

NEW_PROXY = fixture("NewProxy-tcp")["content"]
REJECT_ALICE = 'reject "no proxies for {user.user}" when user.user == "alice"\n'


@pytest.fixture
def edit_settings(tmp_path: Path) -> Settings:
    policies = copy_policy(tmp_path / "policies")
    return console_settings(policies, console="edit", console_token_file=token_file(tmp_path))


# -- the playground ----------------------------------------------------------------------------------


@sync
async def test_the_playground_explains_a_reject_by_an_edited_rule_file(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, store, _):
        body = {"op": "NewProxy", "content": NEW_PROXY, "rules": REJECT_ALICE}
        result = (await client.post("/ui/api/eval", json=body)).json()
        assert result["ok"] is True and result["edited"] is True
        explanation = result["explanation"]
        assert explanation["answer"] == {"reject": True, "reject_reason": "no proxies for alice"}
        assert explanation["outcome"] == "reject" and explanation["rule"] == "NewProxy.rules:1:1"
        assert [s["fired"] for s in explanation["trace"]] == [True]
        assert result["policy_version"] != store.policy.version == result["serving_version"]
    assert (edit_settings.policies / "NewProxy.rules").read_text() == (
        SHIPPED_POLICIES / "NewProxy.rules"
    ).read_text()


@sync
async def test_the_playground_gives_the_answer_the_handler_gives(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        for name in ("NewProxy-tcp", "NewProxy-http", "Login-basic", "NewUserConn-tcp"):
            body = fixture(name)
            served = (await client.post("/handler", json=body)).json()
            result = (
                await client.post("/ui/api/eval", json={"op": body["op"], "content": body["content"]})
            ).json()
            assert result["explanation"]["answer"] == served, name
            assert result["edited"] is False


@sync
async def test_the_playground_places_load_errors_at_their_line_and_column(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        rules = 'allow when user.user == "root"\nreject "x" when content.remote_prot > 0\n'
        result = (
            await client.post("/ui/api/eval", json={"op": "NewProxy", "content": NEW_PROXY, "rules": rules})
        ).json()
        assert result["ok"] is False
        [error] = result["errors"]
        assert (error["file"], error["line"], error["column"]) == ("NewProxy.rules", 2, 25)
        assert "did you mean 'remote_port'" in error["message"] + error["hint"]
        assert error["text"].splitlines()[-1] == " " * (4 + 24) + "^"


@sync
async def test_the_playground_decides_with_the_services_budget(tmp_path: Path) -> None:
    policies = copy_policy(tmp_path / "p")
    settings = console_settings(policies, console="read", max_steps="50", fail_open_ops="NewProxy")
    rules = 'reject "x" when len([i for i in range(1000)]) > 5\n'
    async with console_client(settings) as (client, _, _):
        result = (
            await client.post("/ui/api/eval", json={"op": "NewProxy", "content": NEW_PROXY, "rules": rules})
        ).json()
    explanation = result["explanation"]
    assert explanation["error"]["code"] == "limit_error"
    assert explanation["failed_open"] is True and explanation["answer"] == {"reject": False, "unchange": True}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ({"op": "Nope", "content": {}}, "'op' must be one of"),
        ({"op": "Ping", "content": []}, "'content' must be a JSON object"),
        ({"op": "Ping", "content": {}, "rules": 3}, "'rules' must be the rule file's text"),
        ({"op": "Ping", "content": {}, "extra": 1}, "unknown field 'extra'"),
        ({"op": "Ping", "content": {}, "now": "soon"}, "'now' must be a number"),
    ],
)
@sync
async def test_a_malformed_playground_request_is_a_400_saying_what(body: Any, message: str) -> None:
    async with console_client(console_settings(SHIPPED_POLICIES, console="read")) as (client, _, _):
        response = await client.post("/ui/api/eval", json=body)
        assert response.status_code == 400 and message in response.json()["error"]
        broken = await client.post(
            "/ui/api/eval", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]


# -- files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../Ping.rules", "/etc/passwd", "data/../../x.toml", ".Ping.rules", "Bogus.rules", "data/a/b.toml", "x"],
)
@sync
async def test_only_policy_files_can_be_named(edit_settings: Settings, path: str) -> None:
    async with console_client(edit_settings) as (client, _, _):
        response = await client.get("/ui/api/file", params={"path": path})
        assert response.status_code == 400 and "is not a policy file" in response.json()["error"]
        assert response.json()["code"] == "bad_path"
        body = {"path": path, "text": "allow\n", "base_sha256": None}
        saved = await client.post("/ui/api/save", json=body, headers=bearer())
        assert saved.status_code == 400


@sync
async def test_files_lists_the_rule_data_and_test_files(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        doc = (await client.get("/ui/api/files")).json()
        paths = [f["path"] for f in doc["files"]]
        assert paths[:6] == sorted(p.name for p in SHIPPED_POLICIES.glob("*.rules"))
        assert "data/teams.toml" in paths and "tests/NewProxy.toml" in paths
        assert "tests/requests/NewProxy-tcp.json" in paths
        rules = {f["path"]: f["rules"] for f in doc["files"]}
        assert rules["NewProxy.rules"] == 10 and rules["data/teams.toml"] is None
        assert doc["missing_rule_files"] == []
        missing = await client.get("/ui/api/file", params={"path": "data/none.toml"})
        assert missing.status_code == 404


@sync
async def test_a_file_the_loader_would_refuse_is_not_shown_either(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        # Made after the policy loaded, as a later edit would: a test file linking out, a FIFO.
        (edit_settings.policies / "tests" / "env.toml").symlink_to("/etc/hostname")
        os.mkfifo(edit_settings.policies / "tests" / "pipe.toml")
        paths = [f["path"] for f in (await client.get("/ui/api/files")).json()["files"]]
        assert "tests/env.toml" not in paths and "tests/pipe.toml" not in paths
        linked = await client.get("/ui/api/file", params={"path": "tests/env.toml"})
        assert (linked.status_code, linked.json()["code"]) == (422, "unsafe_file")
        assert "outside the policy directory" in linked.json()["error"]
        piped = await client.get("/ui/api/file", params={"path": "tests/pipe.toml"})  # returns at once
        assert (piped.status_code, piped.json()["code"]) == (422, "unsafe_file")


# -- checking and saving -----------------------------------------------------------------------------


async def _open(client: Any, rel: str) -> dict[str, Any]:
    response = await client.get("/ui/api/file", params={"path": rel})
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


@sync
async def test_a_broken_save_is_refused_and_changes_nothing(edit_settings: Settings) -> None:
    target = edit_settings.policies / "NewProxy.rules"
    before = target.read_bytes()
    async with console_client(edit_settings) as (client, store, _):
        opened = await _open(client, "NewProxy.rules")
        broken = opened["text"] + 'reject "oops" when content.remote_prot > 1\n'
        body = {"path": "NewProxy.rules", "text": broken, "base_sha256": opened["sha256"]}
        response = await client.post("/ui/api/save", json=body, headers=bearer())
        assert response.status_code == 422 and response.json()["code"] == "does_not_load"
        report = response.json()["report"]
        assert report["loads"] is False and report["saved"] is False
        assert report["errors"][0]["line"] == len(opened["text"].splitlines()) + 1
        assert '+reject "oops"' in report["diff"]
        assert store.reload().version == store.policy.version
    assert target.read_bytes() == before


@sync
async def test_a_good_save_is_written_logged_and_served_after_the_reload(
    edit_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyd.console")
    async with console_client(edit_settings) as (client, store, _):
        before = store.policy.version
        opened = await _open(client, "Ping.rules")
        text = 'reject "no pings for carol" when user.user == "carol"\n' + opened["text"]
        check = (
            await client.post("/ui/api/check", json={"path": "Ping.rules", "text": text}, headers=bearer())
        ).json()
        assert check["loads"] is True and check["saved"] is False
        assert check["tests"]["failed"] == 0 and check["tests"]["passed"] > 0
        assert (edit_settings.policies / "Ping.rules").read_text() == opened["text"]
        body = {"path": "Ping.rules", "text": text, "base_sha256": opened["sha256"]}
        report = (await client.post("/ui/api/save", json=body, headers=bearer())).json()
        assert report["saved"] is True and report["version_before"] == before
        assert (edit_settings.policies / "Ping.rules").read_text() == text
        assert [p.name for p in edit_settings.policies.iterdir() if p.name.startswith(".")] == []
        assert store.reload().version == report["version_after"]
        ping = {
            **fixture("Ping-basic"),
            "content": {**fixture("Ping-basic")["content"], "user": {"user": "carol"}},
        }
        answer = (await client.post("/handler", json=ping)).json()
        assert answer == {"reject": True, "reject_reason": "no pings for carol"}
    assert f"console save by alice: Ping.rules (sha256 {opened['sha256'][:12]} -> " in caplog.text
    assert f"policy {before} -> {report['version_after']}" in caplog.text


@sync
async def test_failing_test_cases_refuse_a_save_unless_accepted(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        opened = await _open(client, "Ping.rules")
        body = {"path": "Ping.rules", "text": 'reject "no pings"\n', "base_sha256": opened["sha256"]}
        refused = await client.post("/ui/api/save", json=body, headers=bearer())
        assert refused.status_code == 422 and refused.json()["code"] == "tests_fail"
        tests = refused.json()["report"]["tests"]
        assert tests["failed"] > 0 and any(not c["ok"] and c["problems"] for c in tests["cases"])
        assert (edit_settings.policies / "Ping.rules").read_text() == opened["text"]
        accepted = await client.post(
            "/ui/api/save", json={**body, "allow_failing_tests": True}, headers=bearer()
        )
        assert accepted.status_code == 200 and accepted.json()["saved"] is True
    assert (edit_settings.policies / "Ping.rules").read_text() == 'reject "no pings"\n'


@sync
async def test_a_file_changed_on_disk_since_it_was_opened_is_a_conflict(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        opened = await _open(client, "Ping.rules")
        (edit_settings.policies / "Ping.rules").write_text(opened["text"] + "# someone else\n")
        body = {"path": "Ping.rules", "text": "allow\n", "base_sha256": opened["sha256"]}
        response = await client.post("/ui/api/save", json=body, headers=bearer())
        assert response.status_code == 409 and response.json()["code"] == "conflict"
    assert (edit_settings.policies / "Ping.rules").read_text().endswith("# someone else\n")


@sync
async def test_a_new_rule_file_and_a_data_file_can_be_saved(tmp_path: Path) -> None:
    policies = copy_policy(tmp_path / "p")
    (policies / "Ping.rules").unlink()
    shutil.rmtree(policies / "tests")  # the shipped Ping cases need the shipped Ping.rules
    settings = console_settings(policies, console="edit", console_token_file=token_file(tmp_path))
    async with console_client(settings) as (client, store, _):
        assert (await client.get("/ui/api/files")).json()["missing_rule_files"] == ["Ping.rules"]
        text = 'reject "pings off for {user.user}" when user.user in data.quiet.users\n'
        body = {"path": "Ping.rules", "text": text, "base_sha256": None}
        refused = await client.post("/ui/api/save", json=body, headers=bearer())
        assert refused.status_code == 422 and "quiet" in refused.json()["report"]["errors"][0]["message"]
        data = {"path": "data/quiet.toml", "text": 'users = ["carol"]\n', "base_sha256": None}
        assert (await client.post("/ui/api/save", json=data, headers=bearer())).json()["saved"] is True
        saved = (await client.post("/ui/api/save", json=body, headers=bearer())).json()
        assert saved["saved"] is True and saved["version_after"] == store.reload().version
    assert (policies / "Ping.rules").read_text() == text


@sync
async def test_a_symlinked_file_is_not_replaced(edit_settings: Settings) -> None:
    # As a ConfigMap links its files (a link out of the directory does not load at all).
    real = edit_settings.policies / "..2024_01_01" / "Ping.rules"
    real.parent.mkdir()
    real.write_text("allow\n")
    link = edit_settings.policies / "Ping.rules"
    link.unlink()
    link.symlink_to(real)
    async with console_client(edit_settings) as (client, _, _):
        opened = await _open(client, "Ping.rules")
        body = {"path": "Ping.rules", "text": 'reject "x"\n', "base_sha256": opened["sha256"]}
        response = await client.post("/ui/api/save", json=body, headers=bearer())
        assert response.status_code == 409 and response.json()["code"] == "symlink"
    assert link.is_symlink() and real.read_text() == "allow\n"


# -- overview, decisions, state ------------------------------------------------------------------------


@sync
async def test_the_overview_shows_a_failed_reload_with_its_caret(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, store, _):
        (edit_settings.policies / "Login.rules").write_text('allow\nreject "x" when content.usr == "a"\n')
        assert store.reload().ok is False
        overview = (await client.get("/ui/api/overview")).json()
    last = overview["reloads"]["last_attempt"]
    assert last["ok"] is False and overview["reloads"]["failures"] == 1
    [error] = last["errors"]
    assert error["text"].startswith("Login.rules:2:25: error: 'content' has no field 'usr' in Login")
    assert error["text"].splitlines()[1:] == ['    reject "x" when content.usr == "a"', " " * 28 + "^"]
    assert overview["policy"]["version"] == store.policy.version and overview["mode"] == "edit"


@sync
async def test_decisions_from_the_handler_reach_the_feed_masked(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        await client.post("/handler", json=fixture("Login-basic"), headers={"X-Frp-Reqid": "abcd"})
        doc = (await client.get("/ui/api/decisions")).json()
        assert doc["last"] == 1 and doc["kept"] == 1000
        [row] = doc["decisions"]
        assert row["reqid"] == "abcd" and row["user"] == "alice" and row["op"] == "Login"
        assert row["request"]["privilege_key"] == "***"
        one = (await client.get(f"/ui/api/decisions/{row['seq']}")).json()
        assert one == {**row, "masked": ["privilege_key", "metas.token"]}
        assert (await client.get("/ui/api/decisions/999")).status_code == 404
        assert (await client.get("/ui/api/decisions", params={"op": "Nope"})).status_code == 400
        charts = (await client.get("/ui/api/charts")).json()
        assert sum(charts["decisions"]["Login/allow"]) == 1


@sync
async def test_examples_come_from_policyd_and_the_policys_test_requests(edit_settings: Settings) -> None:
    async with console_client(edit_settings) as (client, _, _):
        examples = (await client.get("/ui/api/examples")).json()["examples"]
    origins = {(e["from"], e["name"]) for e in examples}
    assert ("policyd", "NewProxy-tcp") in origins and ("policy", "Login-reconnect") in origins
    assert {e["op"] for e in examples if e["from"] == "policyd"} == {
        "Login",
        "NewProxy",
        "CloseProxy",
        "Ping",
        "NewWorkConn",
        "NewUserConn",
    }


@sync
async def test_the_state_page_follows_the_serving_policy_across_reloads(tmp_path: Path) -> None:
    """Real state (the memory backend) behind real answers: the page shows what the serving
    policy keeps, from the reload that starts calling proxies() to the one that stops."""
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": "allow\n"})
    async with console_client(console_settings(policies, console="read")) as (client, store, _):
        assert (await client.get("/ui/api/state")).json()["in_use"] is False
        assert (await client.get("/ui/api/overview")).json()["state"] is False

        (policies / "NewProxy.rules").write_text(QUOTA)
        assert store.reload().ok
        assert (await client.get("/ui/api/overview")).json()["state"] is True
        empty = (await client.get("/ui/api/state")).json()
        assert (empty["in_use"], empty["backend"], empty["users"]) == (True, "memory", [])

        assert (await client.post("/handler", json=fixture("NewProxy-tcp"))).json() == ALLOWED
        doc = (await client.get("/ui/api/state")).json()
        [alice] = doc["users"]
        assert alice["user"] == "alice" and [p["name"] for p in alice["proxies"]] == ["alice.ssh"]
        assert alice["proxies"][0]["remote_port"] == 6022

        (policies / "NewProxy.rules").write_text("allow\n")
        assert store.reload().ok
        assert (await client.get("/ui/api/state")).json() == {
            "in_use": False,
            "reason": "stateful rules are not in use",
        }


QUOTA = 'reject "{user.user} has {len(proxies(user.user))} proxies" when len(proxies(user.user)) >= 1\n'
ALLOWED = {"reject": False, "unchange": True}


@sync
async def test_the_playground_decides_with_the_live_state_and_records_nothing(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"NewProxy.rules": QUOTA})
    async with console_client(console_settings(policies, console="read")) as (client, _, _):
        assert (await client.post("/handler", json=fixture("NewProxy-tcp"))).json() == ALLOWED
        second = {**NEW_PROXY, "proxy_name": "alice.web"}

        async def playground(rules: str | None = None) -> dict[str, Any]:
            body = {"op": "NewProxy", "content": second, "rules": rules}
            result = (await client.post("/ui/api/eval", json=body)).json()
            assert result["ok"] is True, result
            return result  # type: ignore[no-any-return]

        # The serving rules, against the proxy the handler registered:
        served = await playground()
        refused = {"reject": True, "reject_reason": "alice has 1 proxies"}
        assert served["explanation"]["answer"] == refused
        assert served["state"] == {"functions": ["proxies"], "backend": "memory", "recorded": False}
        # An edited rule file too; rate() answers as if it counted, and never counts.
        counted = 'reject "over" when not rate("tries:" + user.user, 1, "1m")\n'
        for _ in range(3):
            assert (await playground(counted))["explanation"]["answer"] == ALLOWED
        doc = (await client.get("/ui/api/state")).json()
        [alice] = doc["users"]
        assert [p["name"] for p in alice["proxies"]] == ["alice.ssh"]  # alice.web not registered
        assert doc["rates"] == []
        # The handler still answers from the state as it was: one proxy, so alice.web is refused.
        answer = (await client.post("/handler", json={**fixture("NewProxy-tcp"), "content": second})).json()
        assert answer == refused
