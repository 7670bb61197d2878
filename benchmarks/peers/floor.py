"""The floor: benchmarks/policy50/NewProxy.rules hand-written as one plain Python function.

What the 50 rules cost with no engine at all: no sandbox, no budget, no views, no generated code;
missing fields read as zero values with `or`, regexes precompiled. It reaches policyd's decision
(outcome, reason, whole rewritten content, warnings) on every request of benchmarks/peers/requests.py
and, in tests/test_bench_peers.py, on generated ones.
"""

from __future__ import annotations

import re
from typing import Any

from benchmarks.peers.common import Verdict, load_data

# regex() is RE2 search: these anchored patterns match exactly when the whole value does
# (RE2's `$` is the end of the text, never before a final newline: hence fullmatch, not `$`).
_PROXY_NAME = re.compile(r"[a-z0-9._-]+")
_SUBDOMAIN = re.compile(r"[a-z0-9-]+")
_BANDWIDTH = re.compile(r"[0-9]+(?:MB|KB)")
_PROXY_TYPES = frozenset(("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp"))
_TCP_UDP = ("tcp", "udp")
_HTTP_LIKE = ("http", "https", "tcpmux")
_SECRET = ("stcp", "sudp", "xtcp")
_IRC_PORTS = (6666, 6667, 6697)
_WELL_KNOWN_PORTS = (6080, 6443, 6888)
_BANDWIDTH_MODES = ("", "client", "server")


class Floor:
    name = "plain Python function (the floor)"

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = load_data() if data is None else data
        self.teams: dict[str, Any] = data["teams"]
        self.admins = frozenset(data["access"]["admins"])
        self.banned = frozenset(data["access"]["banned_users"])

    def decide(self, content: dict[str, Any], now: int) -> Verdict:
        c = content.get
        user = c("user") or {}
        user_name = user.get("user") or ""
        team = (user.get("metas") or {}).get("team") or ""
        t = self.teams.get(team) or {}

        # who
        if user_name in self.admins:
            return Verdict("allow")
        if user_name in self.banned:
            return Verdict("reject", f"user {user_name} is banned")
        if not team:
            return Verdict("reject", "login without a team")
        if team not in self.teams:
            return Verdict("reject", f"unknown team '{team}'")
        if t["suspended"]:
            return Verdict("reject", f"team {team} is suspended")
        name = c("proxy_name") or ""
        if not name.startswith(user_name + "."):
            return Verdict("reject", "proxy names start with the user name")
        if len(name) > 64:
            return Verdict("reject", "proxy name too long")
        if not _PROXY_NAME.fullmatch(name):
            return Verdict("reject", "proxy name may hold a-z, 0-9, '.', '_' and '-'")
        if not user.get("run_id"):
            return Verdict("reject", "run_id missing")

        # what
        kind = c("proxy_type") or ""
        if kind not in _PROXY_TYPES:
            return Verdict("reject", f"unknown proxy type {kind}")
        if kind not in t["types"]:
            return Verdict("reject", f"team {team} may not use {kind}")

        # tcp/udp
        port = c("remote_port") or 0
        domains = c("custom_domains") or []
        subdomain = c("subdomain") or ""
        if kind in _TCP_UDP:
            if port == 0:
                return Verdict("reject", "tcp/udp need a remote_port")
            if port < 1024:
                return Verdict("reject", "ports below 1024 are reserved")
            low, high = t["ports"]
            if not low <= port <= high:
                return Verdict("reject", f"port {port} is outside {team}'s range")
        if port in _IRC_PORTS:
            return Verdict("reject", "IRC ports are blocked")
        if kind == "udp" and not 6500 <= port < 6600:
            return Verdict("reject", "udp ports are 6500-6599")
        if kind in _TCP_UDP:
            if domains:
                return Verdict("reject", "tcp/udp proxies take no custom_domains")
            if subdomain:
                return Verdict("reject", "tcp/udp proxies take no subdomain")

        # http/https/tcpmux
        if kind in _HTTP_LIKE and not domains and not subdomain:
            return Verdict("reject", "http proxies need a domain")
        domain = t["domain"]
        if domains:
            if len(domains) > 5:
                return Verdict("reject", "at most 5 custom domains")
            under = "." + domain
            if any(d != domain and not d.endswith(under) for d in domains):
                return Verdict("reject", f"custom domains must be under {domain}")
            if any(d.startswith("*") for d in domains):
                return Verdict("reject", "wildcard domains are not allowed")
        if subdomain:
            if len(subdomain) > 40:
                return Verdict("reject", "subdomain too long")
            if not _SUBDOMAIN.fullmatch(subdomain):
                return Verdict("reject", "subdomain may hold a-z, 0-9 and '-'")
        if any(not p.startswith("/") for p in c("locations") or ()):
            return Verdict("reject", "locations start with /")
        http_user = c("http_user") or ""
        if http_user and not c("http_pwd"):
            return Verdict("reject", "http_user needs http_pwd")
        if c("route_by_http_user") and not http_user:
            return Verdict("reject", "route_by_http_user needs http_user")
        rewrite = c("host_header_rewrite") or ""
        # glob("*." + domain, x): fnmatch's `*` matches anything, dots included.
        if rewrite and not rewrite.endswith("." + domain):
            return Verdict("reject", f"host_header_rewrite must stay in {domain}")
        if (c("headers") or {}).get("X-Forwarded-For"):
            return Verdict("reject", "X-Forwarded-For may not be set")
        if (c("response_headers") or {}).get("Server"):
            return Verdict("reject", "the Server response header may not be set")

        # stcp/sudp/xtcp
        allow_users = c("allow_users") or []
        if kind in _SECRET and not allow_users:
            return Verdict("reject", f"{kind} proxies must list allow_users")
        if allow_users:
            if "*" in allow_users:
                return Verdict("reject", 'allow_users = "*" is not allowed')
            members = t["members"]
            if any(u not in members for u in allow_users):
                return Verdict("reject", f"allow_users must be members of {team}")
        if kind in _SECRET and not c("sk"):
            return Verdict("reject", f"{kind} proxies need an sk")

        # groups, bandwidth, multiplexing
        group = c("group") or ""
        if group:
            if not group.startswith(team + "-"):
                return Verdict("reject", f"group names start with {team}-")
            if not c("group_key"):
                return Verdict("reject", "a group needs a group_key")
        bandwidth = c("bandwidth_limit") or ""
        if bandwidth and not _BANDWIDTH.fullmatch(bandwidth):
            return Verdict("reject", "bandwidth_limit looks like 10MB or 100KB")
        if (c("bandwidth_limit_mode") or "") not in _BANDWIDTH_MODES:
            return Verdict("reject", "bandwidth_limit_mode is client or server")
        if t["require_bandwidth_limit"] and not bandwidth:
            return Verdict("reject", f"team {team} must set a bandwidth limit")
        multiplexer = c("multiplexer") or ""
        if multiplexer and multiplexer != "httpconnect":
            return Verdict("reject", "multiplexer must be httpconnect")
        if kind == "tcpmux" and not multiplexer:
            return Verdict("reject", "tcpmux needs a multiplexer")

        # metas and annotations
        metas = c("metas") or {}
        owner = metas.get("owner")
        if owner and owner != user_name:
            return Verdict("reject", "metas.owner must be the user")
        if len(metas) > 16:
            return Verdict("reject", "at most 16 metas")
        if any(len(v) > 256 for v in (c("annotations") or {}).values()):
            return Verdict("reject", "annotation values are at most 256 characters")
        if t["office_hours_only"] and not 8 <= (now // 3600) % 24 < 20:
            return Verdict("reject", f"team {team} works office hours only")

        # rewrites and audit
        changed: dict[str, Any] = {}
        prefix = team + "-"
        if subdomain and not subdomain.startswith(prefix):
            changed["subdomain"] = prefix + subdomain
        if metas.get("team", "") != team:
            changed["metas"] = {**metas, "team": team}
        if t["force_compression"] and not c("use_compression"):
            changed["use_compression"] = True
        warnings = []
        if not c("use_encryption"):
            warnings.append(f"proxy {name} of team {team} has no encryption")
        if port in _WELL_KNOWN_PORTS:
            warnings.append(f"proxy {name} uses the well-known port {port}")
        if changed:
            return Verdict("rewrite", "", {**content, **changed}, tuple(warnings))
        return Verdict("allow", "", None, tuple(warnings))
