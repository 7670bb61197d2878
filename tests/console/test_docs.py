"""docs/console.md's examples hold: the playground's requests and answers, and the token file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from policyd.console.tokens import parse_tokens
from tests.console.support import console_client, console_settings, sync
from tests.support import ROOT, SHIPPED_POLICIES

DOC = (ROOT / "docs" / "console.md").read_text()
VERSIONS = ("policy_version", "serving_version")


def _section(heading: str) -> str:
    start = DOC.index(heading)
    end = DOC.find("\n### ", start + len(heading))
    return DOC[start : end if end > 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _without_versions(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: "<version>" if k in VERSIONS else _without_versions(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_versions(v) for v in doc]
    return doc


@sync
async def test_the_playground_examples_answer_as_documented(tmp_path: Path) -> None:
    pairs = _blocks(_section("### `POST /ui/api/eval`"), "json")
    assert len(pairs) == 4
    async with console_client(console_settings(SHIPPED_POLICIES, console="read")) as (client, store, _):
        for request, documented in zip(pairs[::2], pairs[1::2], strict=True):
            answer = (await client.post("/ui/api/eval", json=orjson.loads(request))).json()
            assert _without_versions(answer) == _without_versions(orjson.loads(documented))
            assert answer.get("serving_version", store.policy.version) == store.policy.version


def test_the_token_file_example_parses() -> None:
    [example] = _blocks(_section("### The token file"), "")
    tokens = parse_tokens(example, "docs")
    assert [name for name, _ in tokens.digests] == ["alice", "deploy-bot"]
    assert tokens.who("3f6c1d0e9b8a47d2a1c5e7f90b2d4c68") == "alice"
