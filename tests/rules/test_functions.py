"""The language's functions (policyd.rules.functions) against what they stand for."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import zoneinfo

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.errors import EvaluationError
from policyd.rules import functions
from policyd.rules.functions import (
    cidr,
    glob,
    glob_pattern,
    hmac_sha256,
    hour,
    minute,
    regex,
    secure_equal,
    sha256,
    weekday,
)
from tests.helpers import load_errors

PATTERNS = ["^[a-z0-9._-]+$", "b", "", "^$", "(a)|(b)", "é+", "[0-9]+(MB|KB)$", "\\.", "^x.*y$"]


TEXTS = st.text(alphabet="abxy.é0-9MBK\n", max_size=8)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.sampled_from(PATTERNS), TEXTS)
def test_regex_answers_as_re2_search(pattern: str, text: str) -> None:
    assert regex(pattern, text) is (re2.compile(pattern).search(text) is not None)


GLOB_ALPHABET = "ab*?[]!-^\\é.&|~ "


@settings(max_examples=2000, derandomize=True, database=None)
@given(st.text(alphabet=GLOB_ALPHABET, max_size=8), st.text(alphabet="ab[]!-^\\é.&|~ *?", max_size=8))
def test_glob_answers_as_fnmatchcase(pattern: str, text: str) -> None:
    """glob() runs on RE2 (linear time) with fnmatch's meaning, classes and escapes included."""
    assert glob(pattern, text) is fnmatch.fnmatchcase(text, pattern), glob_pattern(pattern)


@pytest.mark.parametrize(
    ("addr", "networks", "expected"),
    [
        ("::ffff:10.1.2.3", ("10.0.0.0/8",), True),
        ("[::ffff:10.1.2.3]:443", ("10.0.0.0/8",), True),
        ("::ffff:10.1.2.3", ("192.168.0.0/16",), False),
        ("::ffff:10.1.2.3", ("::ffff:0:0/96",), True),  # still its IPv6 self too
        ("10.1.2.3:80", ("::ffff:10.0.0.0/104",), False),  # an IPv4 address is not mapped back
        ("[2001:db8::1]:443", ("10.0.0.0/8", "2001:db8::/32"), True),
    ],
)
def test_cidr_matches_ipv4_mapped_addresses_against_ipv4_networks(
    addr: str, networks: tuple[str, ...], expected: bool
) -> None:
    assert cidr(addr, *networks) is expected


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("10.0.0.0/255.0.0.0", "not a network in CIDR notation"),
        ("10.0.0.0/08", "not a network in CIDR notation"),
        ("10.0.0/8", "not a network in CIDR notation"),
        ("10.0.0.0/33", "prefix longer than 32 bits"),
        ("2001:db8::/129", "prefix longer than 128 bits"),
    ],
)
def test_cidr_takes_networks_in_cidr_notation_only(network: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        cidr("10.1.2.3", network)


def test_cidr_agrees_with_ipaddress() -> None:
    networks = ["10.0.0.0/8", "10.1.2.3", "0.0.0.0/0", "192.168.1.77/24", "2001:db8::/32", "::/0", "::1"]
    addresses = ["10.1.2.3", "11.0.0.1", "192.168.1.5", "2001:db8::9", "::1", "::ffff:192.168.1.9"]
    addresses.append("fe80::1%eth0")  # a scope: ipaddress reads it, inet_pton does not
    for address in addresses:
        ip = ipaddress.ip_address(address)
        mapped = getattr(ip, "ipv4_mapped", None)
        for network in networks:
            net = ipaddress.ip_network(network, strict=False)
            expected = ip in net or (mapped is not None and mapped in net)
            assert cidr(address, network) is expected, (address, network)


def test_hashes_are_hex_digests_of_the_utf8_bytes() -> None:
    assert sha256("tk-alice") == hashlib.sha256(b"tk-alice").hexdigest()
    assert sha256("é") == hashlib.sha256("é".encode()).hexdigest()
    assert hmac_sha256("key", "alice") == hmac.new(b"key", b"alice", "sha256").hexdigest()
    assert secure_equal(sha256("a"), sha256("a")) and not secure_equal("a", "b")
    assert secure_equal("é", "é") and not secure_equal("é", "e")  # non-ASCII compares too
    with pytest.raises(EvaluationError, match="takes strings"):
        sha256(5)  # type: ignore[arg-type]


BERLIN_NOON_SUMMER = 1_750_327_200  # 2025-06-19 10:00 UTC, a Thursday: 12:00 in Berlin (CEST)


def test_time_of_day_is_read_on_the_zones_clocks() -> None:
    assert hour(BERLIN_NOON_SUMMER, "Europe/Berlin") == 12
    assert hour(BERLIN_NOON_SUMMER, "UTC") == 10
    assert hour(BERLIN_NOON_SUMMER + 180 * 86400, "Europe/Berlin") == 11  # December: CET
    assert minute(BERLIN_NOON_SUMMER + 90, "Asia/Kolkata") == 31  # UTC+5:30
    assert weekday(BERLIN_NOON_SUMMER, "Europe/Berlin") == 3  # Monday is 0
    assert weekday(BERLIN_NOON_SUMMER, "Pacific/Kiritimati") == 4  # UTC+14: already Friday
    with pytest.raises(EvaluationError, match="unknown time zone 'Mars/Olympus'"):
        hour(0, "Mars/Olympus")
    with pytest.raises(EvaluationError, match="unknown time zone"):
        hour(0, "../../etc/passwd")  # only names of the zone database, never a path
    with pytest.raises(EvaluationError, match="years 1-9999"):
        hour(10**12, "UTC")


@pytest.mark.parametrize(
    ("rule", "column", "message"),
    [
        ('reject "x" when sha256(5) == ""', 24, "sha256() takes strings, not int"),
        ('reject "x" when secure_equal(user.user, None)', 41, "secure_equal() takes strings, not NoneType"),
        ('reject "x" when hmac_sha256(1.5, user.user) == ""', 29, "hmac_sha256() takes strings, not float"),
        ('reject "x" when hour(now, "Mars/Olympus") < 6', 27, "unknown time zone 'Mars/Olympus'"),
        ('reject "x" when hour(now, "Europe/Berln") < 6', 27, "did you mean 'Europe/Berlin'?"),
        ('reject "x" when weekday("monday", "UTC") == 0', 25, "weekday() takes unix seconds"),
        ('reject "x" when minute(now, 7) == 0', 29, "minute() takes a zone name second, not int"),
    ],
)
def test_literal_arguments_a_function_refuses_are_load_errors(rule: str, column: int, message: str) -> None:
    (error,) = load_errors({"NewProxy.rules": rule + "\n"})
    assert message in str(error)
    assert (error.location.line, error.location.column) == (1, column), str(error)


def test_time_zones_come_from_the_tzdata_package_without_a_system_database() -> None:
    zoneinfo.reset_tzpath(to=[])
    functions.time_zones.cache_clear()
    functions._zone_info.cache_clear()
    try:
        assert "Europe/Berlin" in functions.time_zones()
        assert hour(BERLIN_NOON_SUMMER, "Europe/Berlin") == 12
    finally:
        zoneinfo.reset_tzpath()
        functions.time_zones.cache_clear()
        functions._zone_info.cache_clear()
