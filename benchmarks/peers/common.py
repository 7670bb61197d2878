"""What every peer of the peers benchmark shares: the data it decides with, and its answer's shape."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

POLICY_DIR = Path(__file__).resolve().parent.parent / "policy50"
NOW = 1_767_610_800  # a fixed clock (a Monday, 11:00 UTC) so every engine sees the same hour

# The NewProxy fields the 50-rule policy reads, with the zero value an absent or null one reads
# as ("missing means empty", policy-language.md). Engines without that rule built in (CEL) are
# handed the content with these filled in, and that step is timed as part of their decision.
ZERO_CONTENT: dict[str, Any] = {
    "proxy_name": "",
    "proxy_type": "",
    "remote_port": 0,
    "use_encryption": False,
    "use_compression": False,
    "custom_domains": [],
    "subdomain": "",
    "locations": [],
    "http_user": "",
    "http_pwd": "",
    "route_by_http_user": False,
    "host_header_rewrite": "",
    "headers": {},
    "response_headers": {},
    "allow_users": [],
    "sk": "",
    "group": "",
    "group_key": "",
    "bandwidth_limit": "",
    "bandwidth_limit_mode": "",
    "multiplexer": "",
    "metas": {},
    "annotations": {},
}
ZERO_USER: dict[str, Any] = {"user": "", "metas": {}, "run_id": ""}


@dataclass(frozen=True)
class Verdict:
    """One engine's answer to one NewProxy request, in terms every engine can give.

    `content` is the whole rewritten content (None unless the outcome is "rewrite");
    `warnings` are the messages of the warn rules that fired, in rule order.
    """

    outcome: str  # "allow", "reject" or "rewrite"
    reason: str = ""
    content: dict[str, Any] | None = None
    warnings: tuple[str, ...] = field(default=())


class Engine(Protocol):
    """A peer: the 50-rule policy in one engine, ready to decide NewProxy requests."""

    name: str

    def decide(self, content: dict[str, Any], now: int) -> Verdict: ...


def load_data(directory: Path = POLICY_DIR) -> dict[str, Any]:
    """The policy's data files as rules read them (`data.<file stem>`), read without policyd."""
    return {p.stem: tomllib.loads(p.read_text()) for p in sorted((directory / "data").glob("*.toml"))}


def filled(value: Any, zero: dict[str, Any]) -> dict[str, Any]:
    """`value` (a dict, or None) with its absent and null fields read as their zero values."""
    present = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else {}
    return {**zero, **present}
