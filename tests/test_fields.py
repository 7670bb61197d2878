"""`policyd fields`: the field reference and version table, from the schema, equal to docs/."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from policyd.cli import main
from policyd.frpsdecoder import struct_fields
from policyd.rules.decision import Op
from policyd.rules.schema import SCHEMAS, TESTED_VERSIONS, Field, FrpsVersion, Kind, op_sent_by
from policyd.service.docgen import BEGIN, END
from policyd.tools.fields import field_rows, render_markdown, render_versions_markdown, version_rows
from tests.support import ROOT, fixture, fixture_names

V033, V070 = TESTED_VERSIONS


def generated(page: str, name: str) -> str:
    """The table docgen keeps between its markers on a docs page (tests/test_docs.py checks it)."""
    text = (ROOT / "docs" / page).read_text()
    begin = text.index(BEGIN.format(name=name)) + len(BEGIN.format(name=name)) + 1
    return text[begin : text.index(END.format(name=name))]


def fields_json(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["fields", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_markdown_format_prints_the_docs_tables() -> None:
    result = CliRunner().invoke(main, ["fields", "--format", "markdown"])
    assert result.stdout == generated("fields.md", "fields") == render_markdown(field_rows())
    versions = CliRunner().invoke(main, ["fields", "--versions", "--format", "markdown"])
    assert versions.stdout == generated("frps-versions.md", "frps versions")
    assert versions.stdout == render_versions_markdown(version_rows())


def count(record: Field) -> int:
    return sum(1 + (count(f) if f.kind is Kind.RECORD else 0) for f in record.fields.values())


def test_every_schema_field_is_listed_once() -> None:
    rows = fields_json()
    assert len(rows) == sum(count(schema) for schema in SCHEMAS.values())
    assert len({(r["op"], r["field"]) for r in rows}) == len(rows)


def test_a_row_gives_type_go_type_zero_versions_and_set_effect() -> None:
    rows = {r["field"]: r for r in fields_json("NewProxy")}
    assert rows["remote_port"] == {
        "op": "NewProxy",
        "field": "remote_port",
        "kind": "integer",
        "go_type": "int",
        "zero": "0",
        "since": "0.31.0",
        "until": None,
        "set_takes_effect": True,
        "secret": False,
        "doc": "tcp/udp: the port frps listens on; 0 lets frps pick",
    }
    assert (rows["bandwidth_limit"]["since"], rows["allow_users"]["since"]) == ("0.47.0", "0.50.0")
    assert rows["user.metas"]["set_takes_effect"] is False  # frps uses only the proxy's own fields
    assert rows["sk"]["secret"] is True
    login = {r["field"]: r for r in fields_json("Login")}
    assert (login["timestamp"]["go_type"], login["client_address"]["set_takes_effect"]) == ("int64", False)
    assert all(not r["set_takes_effect"] for r in fields_json("NewUserConn") + fields_json("CloseProxy"))


def test_frps_version_lists_only_what_it_sends() -> None:
    rows = {(r["op"], r["field"]) for r in fields_json("--frps-version", "0.33.0")}
    assert ("NewProxy", "multiplexer") in rows and ("Login", "metas") in rows
    assert not {r for r in rows if r[0] == "CloseProxy"}
    assert ("NewProxy", "bandwidth_limit") not in rows and ("Login", "client_address") not in rows


@pytest.mark.parametrize("version", TESTED_VERSIONS, ids=str)
@pytest.mark.parametrize("op", list(Op))
def test_the_reference_and_the_oracle_read_the_same_structs(op: Op, version: FrpsVersion) -> None:
    if not op_sent_by(op, version):
        return
    listed = {r.path for r in field_rows(op, version) if "." not in r.path}
    assert listed == set(struct_fields(SCHEMAS[op], version))


@pytest.mark.parametrize("name", [n for n in fixture_names() if n.endswith("-frps033-captured")])
def test_frps_033_sends_exactly_the_fields_the_schema_gives_it(name: str) -> None:
    # v0.33.0 sends every field of its struct, empty ones too: the capture is the struct.
    body = fixture(name)
    assert set(body["content"]) == set(struct_fields(SCHEMAS[Op(body["op"])], V033))


@pytest.mark.parametrize("name", [n for n in fixture_names() if n.endswith("-frps070-captured")])
def test_frps_070_sends_only_fields_the_schema_gives_it(name: str) -> None:
    body = fixture(name)
    assert set(body["content"]) <= set(struct_fields(SCHEMAS[Op(body["op"])], V070))


def test_pretty_output_heads_each_op_with_when_since_and_answer_use() -> None:
    result = CliRunner().invoke(main, ["fields", "CloseProxy"])
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "CloseProxy: a proxy is closed (after the fact); from frps 0.40.0; frps ignores the answer"
    )
    assert lines[1].split() == ["field", "type", "Go", "type", "zero", "frps", "set", "meaning"]
    assert lines[-1].split()[:2] == ["proxy_name", "string"]


def test_version_table_lists_each_release_once_with_its_changes() -> None:
    rows = {str(r.version): r for r in version_rows()}
    assert rows["0.40.0"].ops == ("CloseProxy",)
    assert rows["0.47.0"].fields == ("NewProxy `bandwidth_limit`, `bandwidth_limit_mode`",)
    assert "op=NewWorkConn" in rows["0.46.1"].changes[0]
    assert [str(r.version) for r in version_rows()] == sorted(rows, key=FrpsVersion.parse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Pong"], "unknown op 'Pong' (did you mean 'Ping'?)"),
        (["Login,Ping"], "name one op, not 'Login,Ping'"),
        (["--frps-version", "new"], "not a frps version: 'new' (expected e.g. 0.52.0)"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["fields", *args])
    assert result.exit_code == 2
    assert message in result.stderr
