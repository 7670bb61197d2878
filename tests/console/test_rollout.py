"""The console beside a shadow policy and the version history, over real HTTP (no browser): the
overview shows the shadow's version, reloads and agreement counts and links the serving version
to its files; the decisions table carries each disagreement and filters on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.console.support import console_client, console_settings, sync
from tests.helpers import wait_until
from tests.support import PolicydProcess, fixture, write_policy

Start = Callable[..., PolicydProcess]
MAIN = "allow\n"
CANDIDATE = '# the candidate\nreject "no bobs" when user.user == "bob"\n'


def ping(user: str) -> dict[str, Any]:
    body = fixture("Ping-basic")
    body["content"]["user"]["user"] = user
    return body


def shadowed(policyd_server: Start, tmp_path: Path) -> tuple[PolicydProcess, Path]:
    main = write_policy(tmp_path / "policies", {"Ping.rules": MAIN})
    candidate = write_policy(tmp_path / "candidate", {"Ping.rules": CANDIDATE})
    server = policyd_server(
        main, "--console", "read", "--shadow-policies", str(candidate), "--reload-debounce-s", "0.05"
    )
    for user in ("alice", "bob"):
        assert server.post(ping(user)).json() == {"reject": False, "unchange": True}
    return server, candidate


def api(server: PolicydProcess, path: str, **params: str) -> Any:
    response = server.client.get(f"/ui/api/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_overview_shows_the_shadow_policy_and_how_often_it_agrees(
    policyd_server: Start, tmp_path: Path
) -> None:
    server, candidate = shadowed(policyd_server, tmp_path)
    wait_until(
        lambda: sum(api(server, "overview")["shadow"]["decisions"].values()) == 2, "two shadow decisions"
    )
    shadow = api(server, "overview")["shadow"]
    status = server.client.get("/status").json()["shadow"]
    assert shadow["directory"] == str(candidate)
    assert (
        shadow["policy"]["version"]
        == status["policy"]["version"]
        != api(server, "overview")["policy"]["version"]
    )
    assert shadow["decisions"] == {"same": 1, "different": 1, "error": 0}
    assert shadow["reloads"]["failures"] == 0

    # A broken shadow edit: refused, shown with where, and the last good shadow keeps deciding.
    (candidate / "Ping.rules").write_text('reject "no bobs" when user.usr == "bob"\n')
    server.wait_for_log("shadow policy reload FAILED")
    refused = api(server, "overview")["shadow"]
    assert refused["policy"]["version"] == shadow["policy"]["version"]
    last = refused["reloads"]["last_attempt"]
    assert last["ok"] is False and refused["reloads"]["failures"] == 1
    assert [e["location"] for e in last["errors"]] == ["Ping.rules:1:28"]


def test_the_decisions_table_shows_and_filters_the_shadows_disagreements(
    policyd_server: Start, tmp_path: Path
) -> None:
    server, _ = shadowed(policyd_server, tmp_path)
    wait_until(lambda: len(api(server, "decisions")["decisions"]) == 2, "both rows")
    doc = api(server, "decisions")
    assert doc["shadow"] is True
    bob, alice = doc["decisions"]
    assert (bob["user"], alice["user"]) == ("bob", "alice") and "shadow" not in alice
    shadow_version = api(server, "overview")["shadow"]["policy"]["version"]
    assert bob["shadow"] == {
        "outcome": "reject",
        "reason": "no bobs",
        "rule": "Ping.rules:2",
        "policy_version": shadow_version,
        "eval_us": bob["shadow"]["eval_us"],
    }
    # The row is the decision-log line, shadow object and all.
    [line] = [line for line in server.decision_lines(2) if line["user"] == "bob"]
    assert line["shadow"] == bob["shadow"]
    [only] = api(server, "decisions", shadow="disagree")["decisions"]
    assert only["seq"] == bob["seq"]
    refused = server.client.get("/ui/api/decisions", params={"shadow": "yes"})
    assert refused.status_code == 400 and refused.json()["code"] == "bad_query"


def test_the_overview_links_the_serving_version_to_its_files(policyd_server: Start, tmp_path: Path) -> None:
    server, _ = shadowed(policyd_server, tmp_path)
    overview = api(server, "overview")
    version = overview["policy"]["version"]
    assert overview["history"] == {"versions": "/versions", "serving": f"/versions/{version}"}
    files = server.client.get(overview["history"]["serving"]).json()
    assert files["version"] == version
    assert [(f["path"], f["text"]) for f in files["files"]] == [("Ping.rules", MAIN)]


@sync
async def test_without_a_shadow_the_console_says_there_is_none(tmp_path: Path) -> None:
    policies = write_policy(tmp_path / "p", {"Ping.rules": MAIN})
    async with console_client(console_settings(policies, console="read")) as (client, _, _):
        await client.post("/handler", json=ping("bob"))
        assert (await client.get("/ui/api/overview")).json()["shadow"] is None
        doc = (await client.get("/ui/api/decisions")).json()
        assert doc["shadow"] is False and [r["user"] for r in doc["decisions"]] == ["bob"]
        assert (await client.get("/ui/api/decisions", params={"shadow": "disagree"})).json()[
            "decisions"
        ] == []
