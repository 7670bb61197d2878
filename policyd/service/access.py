"""Which client addresses may call an endpoint: frps sends no credentials, so the peer address
(with loopback binding and TLS) is what protects the handler.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# Distinct peers remembered; frps is usually one or a few addresses, so this never fills up
# in practice, and it bounds memory if something scans the port.
MAX_CACHED_PEERS = 4096

# A network of the `handler_allow` / `admin_allow` settings.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allowlist:
    """`allows(host)` for a set of networks; an empty allowlist allows everyone."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._seen: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, host: str | None) -> bool:
        if not self.networks:
            return True
        if host is None:
            return False  # no peer address (e.g. a unix socket): refuse rather than guess
        known = self._seen.get(host)
        if known is None:
            known = self._match(host)
            if len(self._seen) >= MAX_CACHED_PEERS:
                self._seen.clear()
            self._seen[host] = known
        return known

    def _match(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(address.version == net.version and address in net for net in self.networks)
