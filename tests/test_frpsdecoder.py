"""The frps answer oracle: Go's decoder into frps's structs, per version, on captured and bad answers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from policyd.frpsdecoder import Severity, Verdict, decode_answer, parse_json, zero_struct
from policyd.rules.decision import Op
from policyd.rules.schema import SCHEMAS, TESTED_VERSIONS, FrpsVersion, op_sent_by
from tests.support import fixture, fixture_names

V033, V070 = FrpsVersion(0, 33, 0), FrpsVersion(0, 70, 0)
CAPTURED = [name for name in fixture_names() if name.endswith("-captured")]
ALLOW = b'{"reject":false,"unchange":true}'

# A change a rule could make to each op's content: (path, new value) per op.
EDITS: dict[Op, tuple[tuple[str, ...], Any]] = {
    Op.LOGIN: (("metas", "team"), "blue"),
    Op.NEW_PROXY: (("subdomain",), "red-blog"),
    Op.CLOSE_PROXY: (("proxy_name",), "renamed"),
    Op.PING: (("privilege_key",), "k"),
    Op.NEW_WORK_CONN: (("run_id",), "r2"),
    Op.NEW_USER_CONN: (("remote_addr",), "10.0.0.1:1"),
}


def rewrite(content: dict[str, Any]) -> bytes:
    return json.dumps({"reject": False, "unchange": False, "content": content}).encode()


def edited(content: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(content)
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


def captured_cases() -> list[tuple[str, FrpsVersion]]:
    return [
        (name, version)
        for name in CAPTURED
        for version in TESTED_VERSIONS
        if op_sent_by(Op(fixture(name)["op"]), version)
    ]


def errors(answer: Any) -> list[str]:
    return [f"{f.path}:{f.code}" for f in answer.errors]


# -- what frps accepts: every captured request, answered the three ways --------------------------


@pytest.mark.parametrize(("name", "version"), captured_cases())
def test_allow_unchanged_is_accepted(name: str, version: FrpsVersion) -> None:
    body = fixture(name)
    answer = decode_answer(Op(body["op"]), ALLOW, version=version, request=body["content"])
    expected = Verdict.IGNORED if body["op"] == "CloseProxy" else Verdict.ALLOW
    assert (answer.verdict, answer.findings) == (expected, ())


@pytest.mark.parametrize(("name", "version"), captured_cases())
def test_reject_is_accepted_with_its_reason(name: str, version: FrpsVersion) -> None:
    body = fixture(name)
    answer = decode_answer(
        Op(body["op"]),
        b'{"reject":true,"reject_reason":"no \\u00e9"}',
        version=version,
        request=body["content"],
    )
    if body["op"] == "CloseProxy":
        assert answer.verdict is Verdict.IGNORED
    else:
        assert (answer.verdict, answer.reject_reason) == (Verdict.REJECT, "no é")
    assert answer.ok and not answer.findings


@pytest.mark.parametrize(("name", "version"), captured_cases())
def test_a_whole_rewrite_replaces_the_content_with_only_the_rules_change(
    name: str, version: FrpsVersion
) -> None:
    body = fixture(name)
    op = Op(body["op"])
    path, value = EDITS[op]
    answer = decode_answer(
        op,
        rewrite(edited(body["content"], path, value)),
        version=version,
        request=body["content"],
        changes=[".".join(path)],
    )
    assert answer.ok, answer.explain()
    if op is Op.CLOSE_PROXY:
        assert answer.verdict is Verdict.IGNORED
        return
    assert answer.verdict is Verdict.REPLACE
    assert answer.changed == (".".join(path),)
    node: Any = answer.content
    for key in path:
        node = node[key]
    assert node == value
    # Fields this frps does not have (v0.70's client_spec for v0.33) are dropped, and noted.
    unknown = {f.path for f in answer.notes if f.code == "unknown_field"}
    assert unknown == {
        f"content.{k}"
        for k in body["content"]
        if k not in SCHEMAS[op].fields or not SCHEMAS[op].fields[k].sent_by(version)
    }


@pytest.mark.parametrize(("name", "version"), captured_cases())
def test_echoing_the_request_changes_nothing(name: str, version: FrpsVersion) -> None:
    body = fixture(name)
    answer = decode_answer(
        Op(body["op"]), rewrite(body["content"]), version=version, request=body["content"], changes=[]
    )
    assert answer.ok, answer.explain()
    assert answer.changed == ()


def test_decoded_content_is_the_go_struct_with_omitted_fields_zeroed() -> None:
    body = fixture("NewProxy-frps070-captured")
    answer = decode_answer(Op.NEW_PROXY, rewrite(body["content"]), version=V070, request=body["content"])
    assert answer.content is not None
    assert answer.content["remote_port"] == 27022
    assert answer.content["subdomain"] == "" and answer.content["custom_domains"] is None
    assert set(answer.content) == set(SCHEMAS[Op.NEW_PROXY].fields)
    v033 = zero_struct(SCHEMAS[Op.NEW_PROXY], V033)
    assert "bandwidth_limit" not in v033 and "allow_users" not in v033 and "multiplexer" in v033


def test_v033_sends_work_connections_as_ping_and_decodes_them_as_new_work_conn() -> None:
    work = {
        "user": {"user": "", "metas": None, "run_id": "r"},
        "run_id": "r",
        "privilege_key": "",
        "timestamp": 0,
    }
    old = decode_answer(Op.PING, rewrite(work), version=V033, request=work)
    assert (old.go_struct, old.ok) == ("NewWorkConnContent", True)
    new = decode_answer(Op.PING, rewrite(work), version=V070, request=work)
    assert new.go_struct == "PingContent"
    assert [f.path for f in new.notes if f.code == "unknown_field"] == ["content.run_id"]


def test_an_op_the_version_never_sends_is_refused() -> None:
    with pytest.raises(ValueError, match=r"frps 0\.33\.0 never sends CloseProxy \(from 0\.40\.0\)"):
        decode_answer(Op.CLOSE_PROXY, ALLOW, version=V033)


# -- what frps refuses, crashes on or misreads ---------------------------------------------------


NEW_PROXY = fixture("NewProxy-frps033-captured")["content"]


def decode(
    body: bytes | str, *, request: dict[str, Any] | None = NEW_PROXY, version: FrpsVersion = V033, **kw: Any
) -> Any:
    return decode_answer(Op.NEW_PROXY, body, version=version, request=request, **kw)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"reject": "false", "unchange": true}', "reject"),
        ('{"reject": false, "unchange": "true"}', "unchange"),
        ('{"reject": false, "unchange": 1}', "unchange"),
        ('{"reject": true, "reject_reason": 7}', "reject_reason"),
    ],
)
def test_flags_and_reason_that_are_not_their_go_type_fail_the_op(body: str, path: str) -> None:
    answer = decode(body)
    assert answer.verdict is Verdict.OP_FAILED
    assert f"{path}:type_mismatch" in errors(answer)


def test_the_frp_docs_string_unchange_fails_the_op_even_with_full_content() -> None:
    answer = decode(json.dumps({"unchange": "false", "content": NEW_PROXY}))
    assert answer.verdict is Verdict.OP_FAILED
    assert errors(answer) == ["unchange:type_mismatch", "reject:flag_missing"]


def test_missing_unchange_replaces_the_content_with_zeros() -> None:
    answer = decode('{"reject": false}')
    assert answer.verdict is Verdict.REPLACE
    assert answer.content == zero_struct(SCHEMAS[Op.NEW_PROXY], V033)
    assert {"unchange:flag_missing", "content:content_missing", "content.proxy_name:dropped_field"} <= set(
        errors(answer)
    )


@pytest.mark.parametrize(
    "body", ['{"reject": false, "unchange": true}', '{"reject": true, "reject_reason": ""}']
)
def test_a_missing_reject_is_an_error_even_where_frps_reads_false(body: str) -> None:
    without = json.loads(body)
    del without["reject"]
    answer = decode(json.dumps(without))
    assert "reject:flag_missing" in errors(answer)


def test_null_content_crashes_frps() -> None:
    answer = decode('{"reject": false, "unchange": false, "content": null}')
    assert answer.verdict is Verdict.CRASH
    assert errors(answer) == ["content:null_content"]


def test_a_null_body_replaces_the_content_with_zeros() -> None:
    answer = decode("null")
    assert answer.verdict is Verdict.REPLACE
    assert {"reject:flag_missing", "unchange:flag_missing", "content:content_missing"} <= set(errors(answer))


@pytest.mark.parametrize(
    ("change", "path", "code"),
    [
        ({"remote_port": "6000"}, "content.remote_port", "type_mismatch"),
        ({"remote_port": 6000.0}, "content.remote_port", "not_integer"),
        ({"remote_port": 6e3}, "content.remote_port", "not_integer"),
        ({"remote_port": 2**63}, "content.remote_port", "int_overflow"),
        ({"remote_port": -(2**63) - 1}, "content.remote_port", "int_overflow"),
        ({"use_encryption": 1}, "content.use_encryption", "type_mismatch"),
        ({"subdomain": 5}, "content.subdomain", "type_mismatch"),
        ({"custom_domains": "a.example.com"}, "content.custom_domains", "type_mismatch"),
        ({"custom_domains": ["a", 1]}, "content.custom_domains[1]", "type_mismatch"),
        ({"metas": {"team": 1}}, "content.metas.team", "type_mismatch"),
        ({"metas": ["team"]}, "content.metas", "type_mismatch"),
        ({"user": "alice"}, "content.user", "type_mismatch"),
        ({"user": {"metas": {"team": True}}}, "content.user.metas.team", "type_mismatch"),
    ],
)
def test_content_of_the_wrong_go_type_fails_the_op(change: dict[str, Any], path: str, code: str) -> None:
    answer = decode(rewrite({**NEW_PROXY, **change}))
    assert answer.verdict is Verdict.OP_FAILED
    assert f"{path}:{code}" in errors(answer)


def test_int64_holds_what_int_holds_on_64_bits_and_int_overflows_at_32() -> None:
    login = fixture("Login-frps033-captured")["content"]
    biggest = decode_answer(
        Op.LOGIN,
        rewrite({**login, "timestamp": 2**63 - 1}),
        version=V033,
        request=login,
        changes=["timestamp"],
    )
    assert biggest.ok and biggest.content is not None and biggest.content["timestamp"] == 2**63 - 1
    narrow = decode(rewrite({**NEW_PROXY, "remote_port": 2**31}), int_bits=32, changes=["remote_port"])
    assert "content.remote_port:int_overflow" in errors(narrow)
    assert decode(rewrite({**NEW_PROXY, "remote_port": 2**31}), changes=["remote_port"]).ok


def test_a_dropped_field_is_zeroed_by_frps_and_an_error() -> None:
    content = {k: v for k, v in NEW_PROXY.items() if k != "proxy_name"}
    answer = decode(rewrite(content))
    assert answer.verdict is Verdict.REPLACE
    assert answer.content is not None and answer.content["proxy_name"] == ""
    assert errors(answer) == ["content.proxy_name:dropped_field"]


def test_a_dropped_map_key_is_an_error() -> None:
    content = {**NEW_PROXY, "metas": {}}
    assert "content.metas.owner:dropped_field" in errors(decode(rewrite(content), changes=["metas.owner"]))


def test_a_change_no_rule_made_is_an_error_when_the_changes_are_known() -> None:
    content = {**NEW_PROXY, "remote_port": 6001, "subdomain": "x"}
    answer = decode(rewrite(content), changes=["subdomain"])
    assert answer.changed == ("remote_port", "subdomain")
    assert errors(answer) == ["content.remote_port:undeclared_change"]
    assert decode(rewrite(content)).ok  # without known changes, only reported


def test_null_for_a_map_sets_it_to_nil() -> None:
    answer = decode(rewrite({**NEW_PROXY, "metas": None}), changes=[])
    assert answer.content is not None and answer.content["metas"] is None
    assert errors(answer) == ["content.metas.owner:undeclared_change"]


def test_null_elements_and_values_decode_as_empty_strings() -> None:
    answer = decode(rewrite({**NEW_PROXY, "custom_domains": ["a", None], "metas": {"owner": None}}))
    assert answer.content is not None
    assert (answer.content["custom_domains"], answer.content["metas"]) == (["a", ""], {"owner": ""})


def test_unknown_fields_are_dropped_and_noted() -> None:
    body = fixture("NewProxy-future-field")
    answer = decode_answer(
        Op.NEW_PROXY, rewrite(body["content"]), version=V070, request=body["content"], changes=[]
    )
    assert answer.ok
    assert [(f.path, f.code, f.severity) for f in answer.notes] == [
        ("content.future_option", "unknown_field", Severity.NOTE)
    ]
    assert answer.content is not None and "future_option" not in answer.content
    changed = decode_answer(
        Op.NEW_PROXY,
        rewrite({**body["content"], "future_option": {"mode": "y"}}),
        version=V070,
        request=body["content"],
        changes=[],
    )
    assert "content.future_option:undeclared_change" in errors(changed)


def test_keys_match_case_insensitively_with_a_note() -> None:
    answer = decode('{"Reject": true, "REJECT_REASON": "no"}')
    assert (answer.verdict, answer.reject_reason) == (Verdict.REJECT, "no")
    assert {f.code for f in answer.notes} == {"key_case"}


def test_a_repeated_key_is_decoded_again_over_the_first() -> None:
    answer = decode('{"reject": true, "reject": false, "unchange": true}')
    assert answer.verdict is Verdict.ALLOW
    assert errors(answer) == ["reject:duplicate_key"]
    merged = decode(
        '{"reject":false,"unchange":false,"content":{"metas":{"a":"1"},"metas":{"b":"2"}}}', request=None
    )
    assert merged.content is not None and merged.content["metas"] == {"a": "1", "b": "2"}


@pytest.mark.parametrize("body", ["", "{", '{"reject": true} x', '{"reject": NaN}', "[1]", '"ok"'])
def test_what_is_not_a_json_object_fails_the_op(body: str) -> None:
    answer = decode(body)
    assert answer.verdict is Verdict.OP_FAILED
    assert errors(answer)[0] in (":invalid_json", ":type_mismatch")


def test_content_is_decoded_even_when_unchanged_so_bad_types_still_fail() -> None:
    answer = decode('{"reject": false, "unchange": true, "content": {"remote_port": "x"}}')
    assert answer.verdict is Verdict.OP_FAILED
    assert "content:content_ignored" in [f"{f.path}:{f.code}" for f in answer.notes]


def test_close_proxy_answers_are_ignored_but_errors_still_count() -> None:
    content = fixture("CloseProxy-frps070-captured")["content"]
    answer = decode_answer(Op.CLOSE_PROXY, b'{"reject":"x"}', version=V070, request=content)
    assert answer.verdict is Verdict.IGNORED and not answer.ok


def test_a_request_frps_could_not_send_does_not_blame_the_echoing_answer() -> None:
    request = {**NEW_PROXY, "remote_port": "6000"}
    answer = decode(rewrite({**request, "subdomain": "x"}), request=request, changes=["subdomain"])
    assert answer.verdict is Verdict.OP_FAILED  # frps would still fail: the verdict is Go's
    assert not answer.errors
    assert [f.code for f in answer.notes] == ["type_mismatch"]


def test_parse_json_keeps_numbers_as_text_and_objects_in_order() -> None:
    doc = parse_json('{"b": 1.50, "a": 1, "b": 2}')
    assert doc == [("b", "1.50"), ("a", "1"), ("b", "2")]


def test_explain_names_version_struct_verdict_and_findings() -> None:
    text = decode(rewrite({**NEW_PROXY, "remote_port": "6000"})).explain()
    assert text.splitlines() == [
        "frps 0.33.0 (NewProxy answer decoded into NewProxyContent): op failed",
        "  error content.remote_port [type_mismatch]: cannot unmarshal string into Go value of type int",
    ]
