"""Allowlist matching: addresses, networks, IPv4-mapped IPv6 peers, junk."""

from __future__ import annotations

import ipaddress

from policyd.service.access import Allowlist


def allowlist(*networks: str) -> Allowlist:
    return Allowlist(ipaddress.ip_network(n, strict=False) for n in networks)


def test_empty_allowlist_allows_everyone() -> None:
    assert Allowlist(()).allows("203.0.113.9")
    assert Allowlist(()).allows(None)


def test_addresses_in_a_network_are_allowed() -> None:
    rules = allowlist("10.0.0.0/8", "2001:db8::/32")
    assert rules.allows("10.1.2.3")
    assert rules.allows("2001:db8::1")
    assert not rules.allows("11.0.0.1")
    assert not rules.allows("2001:db9::1")


def test_ipv4_mapped_peers_match_ipv4_networks() -> None:
    assert allowlist("127.0.0.0/8").allows("::ffff:127.0.0.1")


def test_unparseable_or_missing_peers_are_refused() -> None:
    rules = allowlist("127.0.0.1")
    assert not rules.allows("localhost")
    assert not rules.allows(None)
