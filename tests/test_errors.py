"""Errors as data: every error a user sees is a PolicydError with a stable code of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policyd.errors import Location, ParseError, PolicyLoadError
from policyd.protocol import BadRequest, parse_request
from policyd.service.settings import Layer, SettingsError, build_settings
from policyd.tools.frpsconfig import ConfigFormat, FrpsConfigError, render
from policyd.tools.test import CaseError, read_case
from tests.helpers import error_classes


def test_every_error_class_has_its_own_stable_code() -> None:
    codes = [cls.code for cls in error_classes()]
    assert len(codes) == len(set(codes)), codes
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in codes), codes
    assert {"settings_error", "bad_request", "case_error", "parse_error", "validation_error"} <= set(codes)


def test_a_bad_setting_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        build_settings([Layer("env", {"port": "http"})])
    assert info.value.code == "settings_error"
    assert (
        info.value.to_dict()["message"]
        == "environment variable POLICYD_PORT: expected an integer, got 'http'"
    )


def test_a_request_frps_would_never_send_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(b"[]")
    assert (info.value.code, info.value.status, str(info.value)) == (
        "bad_request",
        400,
        "body must be a JSON object, not list",
    )


def test_a_malformed_test_case_is_a_case_error(tmp_path: Path) -> None:
    with pytest.raises(CaseError) as info:
        read_case({"name": "x", "content": {}, "expct": "allow"}, None, tmp_path, "t.toml", 1)
    assert info.value.code == "case_error"
    assert str(info.value) == "unknown key 'expct' (did you mean 'expect'?)"


def test_a_snippet_frps_could_not_read_is_a_frps_config_error() -> None:
    with pytest.raises(FrpsConfigError) as info:
        render([], addr="127.0.0.1:9000", path="/handler", fmt=ConfigFormat.TOML)
    assert info.value.code == "frps_config_error"


def test_a_load_error_carries_the_errors_as_data() -> None:
    error = ParseError("expected '='", Location("Ping.rules", 3, 7), hint="set content.FIELD = value")
    failure = PolicyLoadError([error])
    assert failure.code == "load_failed" and failure.omitted == 0 and failure.limit_note == ""
    assert failure.errors[0].to_dict() == {
        "code": "parse_error",
        "message": "expected '='",
        "hint": "set content.FIELD = value",
        "file": "Ping.rules",
        "line": 3,
        "column": 7,
    }
    assert str(failure) == "Ping.rules:3:7: expected '=' (set content.FIELD = value)"
