"""NewProxy requests every peer must decide as policyd does before it is timed.

Shaped as frps sends them: v0.70's omitted empty fields, and v0.33's nulls and empty strings.
Three are the timed cases of the table: ALLOW (passes all 45 checks, nothing to change),
REJECT_AT_24 (rejected by the 24th rule: the subdomain's characters) and REWRITE (the HTTP
benchmark's body, benchmarks/newproxy.json: allowed and stamped with its team).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_BODY = Path(__file__).resolve().parent.parent / "newproxy.json"


def _alice(**fields: Any) -> dict[str, Any]:
    """A red-team client's NewProxy (frps v0.70 shape), with `fields` replacing or adding fields."""
    content: dict[str, Any] = {
        "user": {
            "user": "alice",
            "metas": {"team": "red", "token": "tk-alice"},
            "run_id": "8f1c2a7d9e3b4c50",
        },
        "proxy_name": "alice.ssh",
        "proxy_type": "tcp",
        "use_encryption": True,
        "metas": {"owner": "alice", "team": "red"},
        "remote_port": 6022,
    }
    content.update(fields)
    return content


def _user(name: str, team: str, **fields: Any) -> dict[str, Any]:
    return _alice(
        user={"user": name, "metas": {"team": team}, "run_id": "0c5e1d2f3a4b5c6d"},
        proxy_name=f"{name}.ssh",
        metas={"owner": name, "team": team},
        **fields,
    )


def _http(**fields: Any) -> dict[str, Any]:
    content = _alice(proxy_name="alice.blog", proxy_type="http", subdomain="red-blog")
    del content["remote_port"]
    content.update(fields)
    return content


def _v033(**fields: Any) -> dict[str, Any]:
    """frps v0.33 sends every field, empty ones as "" or null (its captured NewProxy)."""
    content = {
        "user": {"user": "alice", "metas": {"team": "red"}, "run_id": "fa4bb5206ded3c43"},
        "proxy_name": "alice.ssh",
        "proxy_type": "tcp",
        "use_encryption": False,
        "use_compression": False,
        "group": "",
        "group_key": "",
        "metas": {"owner": "alice"},
        "remote_port": 6022,
        "custom_domains": None,
        "subdomain": "",
        "locations": None,
        "http_user": "",
        "http_pwd": "",
        "host_header_rewrite": "",
        "headers": None,
        "sk": "",
        "multiplexer": "",
    }
    content.update(fields)
    return content


ALLOW = _alice()
REJECT_AT_24 = _http(subdomain="Blog_1")
REWRITE: dict[str, Any] = json.loads(_BODY.read_text())["content"]

# name -> content; the name says what policyd decides (checked, not trusted: every engine is held
# to policyd's own decision).
REQUESTS: dict[str, dict[str, Any]] = {
    "allow: nothing to change": ALLOW,
    "allow at rule 1: an admin": _user("root", "", proxy_type="bogus"),
    "reject at rule 2: banned": _user("mallory", "red"),
    "reject at rule 3: no team": _user("bob", ""),
    "reject at rule 4: unknown team": _user("bob", "purple"),
    "reject at rule 5: suspended team": _user("frank", "green", remote_port=8001),
    "reject at rule 6: name without the user": _alice(proxy_name="bob.ssh"),
    "reject at rule 7: name too long": _alice(proxy_name="alice." + "x" * 60),
    "reject at rule 8: name characters": _alice(proxy_name="alice.SSH"),
    "reject at rule 9: no run_id": _alice(user={"user": "alice", "metas": {"team": "red"}, "run_id": ""}),
    "reject at rule 10: unknown type": _alice(proxy_type="quic"),
    "reject at rule 11: type not for the team": _alice(proxy_type="tcpmux"),
    "reject at rule 12: tcp without a port": _alice(remote_port=0),
    "reject at rule 13: a reserved port": _alice(remote_port=443),
    "reject at rule 14: outside the range": _alice(remote_port=7022),
    "reject at rule 15: an IRC port": _alice(remote_port=6667),
    "reject at rule 16: udp outside 6500-6599": _alice(proxy_type="udp", remote_port=6022),
    "reject at rule 17: tcp with custom_domains": _alice(custom_domains=["a.red.example.com"]),
    "reject at rule 19: http without a domain": _http(subdomain=""),
    "reject at rule 20: six custom domains": _http(custom_domains=[f"{i}.red.example.com" for i in range(6)]),
    "reject at rule 21: a foreign domain": _http(custom_domains=["www.example.org"]),
    "reject at rule 22: a wildcard domain": _http(custom_domains=["*.red.example.com"]),
    "reject at rule 24: subdomain characters": REJECT_AT_24,
    "reject at rule 25: a relative location": _http(locations=["/", "api"]),
    "reject at rule 26: http_user without http_pwd": _http(http_user="u"),
    "reject at rule 28: host_header_rewrite elsewhere": _http(host_header_rewrite="www.example.org"),
    "reject at rule 29: X-Forwarded-For": _http(headers={"X-Forwarded-For": "1.2.3.4"}),
    "reject at rule 30: a Server header": _http(response_headers={"Server": "x"}),
    "reject at rule 31: stcp without allow_users": _alice(proxy_type="stcp", remote_port=0, sk="s3cr3t"),
    "reject at rule 32: stcp for everyone (frps's default)": _alice(
        proxy_type="stcp", sk="s3cr3t", allow_users=["*"]
    ),
    "reject at rule 33: stcp for a stranger": _alice(proxy_type="stcp", sk="s3cr3t", allow_users=["dave"]),
    "reject at rule 35: a foreign group": _http(group="web", group_key="k"),
    "reject at rule 37: a bandwidth typo": _http(bandwidth_limit="10 MB"),
    "reject at rule 39: blue needs a bandwidth limit": _user(
        "dave", "blue", proxy_type="http", subdomain="blue-shop"
    ),
    "reject at rule 42: someone else's proxy": _alice(metas={"owner": "bob"}),
    "reject at rule 43: seventeen metas": _alice(metas={f"k{i}": "v" for i in range(17)}),
    "reject at rule 44: a long annotation": _alice(annotations={"note": "x" * 300}),
    "rewrite: stamped with its team": REWRITE,
    "rewrite: subdomain gets the team prefix": _http(subdomain="blog", use_encryption=False),
    "rewrite: blue gets compression and the prefix": _user(
        "dave", "blue", proxy_type="http", subdomain="shop", bandwidth_limit="10MB", use_encryption=False
    ),
    "rewrite: a v0.33 request with its nulls": _v033(),
    "allow with a warning: a well-known port": _alice(remote_port=6080),
    "allow: stcp for a teammate": _alice(proxy_type="stcp", sk="s3cr3t", allow_users=["bob"]),
    "reject at rule 24 from v0.33": _v033(proxy_type="http", remote_port=0, subdomain="x_y"),
}


def requests() -> dict[str, dict[str, Any]]:
    """A deep copy of REQUESTS, so an engine that changed its input cannot affect another."""
    return copy.deepcopy(REQUESTS)
