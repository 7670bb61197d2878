"""The 50-rule policy as CEL programs, run by the Rust CEL bindings (`common-expression-language`).

Embedded the way CEL usually is (Kubernetes' admission policies, Envoy's RBAC): one compiled
program per condition, value and message, run in file order by a small host loop; the first
reject/allow ends it. CEL has no "missing means empty", so the host hands it the request with the
schema's zero values filled in (timed as part of the decision). `let`s become variables computed
by their own programs. Needs the `bench` extra.

The data is converted to CEL values once, in a context kept for the engine's life; each decision
converts only its request (`add_variable`). That is the cheapest correct use of these bindings
(a context per request would convert the data files every time), and, being one mutable
context, it is for one thread at a time: a service would keep one per thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.peers.common import ZERO_CONTENT, ZERO_USER, Verdict, filled, load_data

LETS = (
    ("team", '"team" in user.metas ? user.metas.team : ""'),
    # A variable, not data.teams[team] written out in each rule: these bindings copy the record at
    # every read of data.teams (~3 µs each), more than the one conversion of the let's value.
    ("t", "team in data.teams ? data.teams[team] : {}"),
)

# (action, condition, value): the message of a reject/warn, or the set's value at `path`.
RULES: tuple[tuple[str, str, str, str], ...] = (
    # who
    ("allow", "user.user in data.access.admins", "", ""),
    ("reject", "user.user in data.access.banned_users", '"user " + user.user + " is banned"', ""),
    ("reject", 'team == ""', '"login without a team"', ""),
    ("reject", "!(team in data.teams)", '"unknown team \'" + team + "\'"', ""),
    ("reject", "t.suspended", '"team " + team + " is suspended"', ""),
    (
        "reject",
        '!content.proxy_name.startsWith(user.user + ".")',
        '"proxy names start with the user name"',
        "",
    ),
    ("reject", "size(content.proxy_name) > 64", '"proxy name too long"', ""),
    (
        "reject",
        '!content.proxy_name.matches("^[a-z0-9._-]+$")',
        "\"proxy name may hold a-z, 0-9, '.', '_' and '-'\"",
        "",
    ),
    ("reject", 'user.run_id == ""', '"run_id missing"', ""),
    # what
    (
        "reject",
        '!(content.proxy_type in ["tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp"])',
        '"unknown proxy type " + content.proxy_type',
        "",
    ),
    (
        "reject",
        "!(content.proxy_type in t.types)",
        '"team " + team + " may not use " + content.proxy_type',
        "",
    ),
    # tcp/udp
    (
        "reject",
        'content.proxy_type in ["tcp", "udp"] && content.remote_port == 0',
        '"tcp/udp need a remote_port"',
        "",
    ),
    (
        "reject",
        'content.proxy_type in ["tcp", "udp"] && content.remote_port < 1024',
        '"ports below 1024 are reserved"',
        "",
    ),
    (
        "reject",
        'content.proxy_type in ["tcp", "udp"]'
        " && !(content.remote_port >= t.ports[0]"
        " && content.remote_port < t.ports[1] + 1)",
        '"port " + string(content.remote_port) + " is outside " + team + "\'s range"',
        "",
    ),
    ("reject", "content.remote_port in [6666, 6667, 6697]", '"IRC ports are blocked"', ""),
    (
        "reject",
        'content.proxy_type == "udp" && !(content.remote_port >= 6500 && content.remote_port < 6600)',
        '"udp ports are 6500-6599"',
        "",
    ),
    (
        "reject",
        'content.proxy_type in ["tcp", "udp"] && size(content.custom_domains) > 0',
        '"tcp/udp proxies take no custom_domains"',
        "",
    ),
    (
        "reject",
        'content.proxy_type in ["tcp", "udp"] && content.subdomain != ""',
        '"tcp/udp proxies take no subdomain"',
        "",
    ),
    # http/https/tcpmux
    (
        "reject",
        'content.proxy_type in ["http", "https", "tcpmux"]'
        ' && size(content.custom_domains) == 0 && content.subdomain == ""',
        '"http proxies need a domain"',
        "",
    ),
    ("reject", "size(content.custom_domains) > 5", '"at most 5 custom domains"', ""),
    (
        "reject",
        'content.custom_domains.exists(d, d != t.domain && !d.endsWith("." + t.domain))',
        '"custom domains must be under " + t.domain',
        "",
    ),
    (
        "reject",
        'content.custom_domains.exists(d, d.startsWith("*"))',
        '"wildcard domains are not allowed"',
        "",
    ),
    ("reject", "size(content.subdomain) > 40", '"subdomain too long"', ""),
    (
        "reject",
        'content.subdomain != "" && !content.subdomain.matches("^[a-z0-9-]+$")',
        "\"subdomain may hold a-z, 0-9 and '-'\"",
        "",
    ),
    ("reject", 'content.locations.exists(p, !p.startsWith("/"))', '"locations start with /"', ""),
    (
        "reject",
        'content.http_user != "" && content.http_pwd == ""',
        '"http_user needs http_pwd"',
        "",
    ),
    (
        "reject",
        'content.route_by_http_user && content.http_user == ""',
        '"route_by_http_user needs http_user"',
        "",
    ),
    # glob("*." + domain, x): fnmatch's `*` matches anything, dots included; CEL has no glob.
    (
        "reject",
        'content.host_header_rewrite != "" && !content.host_header_rewrite.endsWith("." + t.domain)',
        '"host_header_rewrite must stay in " + t.domain',
        "",
    ),
    (
        "reject",
        '"X-Forwarded-For" in content.headers && content.headers["X-Forwarded-For"] != ""',
        '"X-Forwarded-For may not be set"',
        "",
    ),
    (
        "reject",
        '"Server" in content.response_headers && content.response_headers.Server != ""',
        '"the Server response header may not be set"',
        "",
    ),
    # stcp/sudp/xtcp
    (
        "reject",
        'content.proxy_type in ["stcp", "sudp", "xtcp"] && size(content.allow_users) == 0',
        'content.proxy_type + " proxies must list allow_users"',
        "",
    ),
    ("reject", '"*" in content.allow_users', "'allow_users = \"*\" is not allowed'", ""),
    (
        "reject",
        "content.allow_users.exists(u, !(u in t.members))",
        '"allow_users must be members of " + team',
        "",
    ),
    (
        "reject",
        'content.proxy_type in ["stcp", "sudp", "xtcp"] && content.sk == ""',
        'content.proxy_type + " proxies need an sk"',
        "",
    ),
    # groups, bandwidth, multiplexing
    (
        "reject",
        'content.group != "" && !content.group.startsWith(team + "-")',
        '"group names start with " + team + "-"',
        "",
    ),
    (
        "reject",
        'content.group != "" && content.group_key == ""',
        '"a group needs a group_key"',
        "",
    ),
    (
        "reject",
        'content.bandwidth_limit != "" && !content.bandwidth_limit.matches("^[0-9]+(MB|KB)$")',
        '"bandwidth_limit looks like 10MB or 100KB"',
        "",
    ),
    (
        "reject",
        '!(content.bandwidth_limit_mode in ["", "client", "server"])',
        '"bandwidth_limit_mode is client or server"',
        "",
    ),
    (
        "reject",
        't.require_bandwidth_limit && content.bandwidth_limit == ""',
        '"team " + team + " must set a bandwidth limit"',
        "",
    ),
    (
        "reject",
        'content.multiplexer != "" && content.multiplexer != "httpconnect"',
        '"multiplexer must be httpconnect"',
        "",
    ),
    (
        "reject",
        'content.proxy_type == "tcpmux" && content.multiplexer == ""',
        '"tcpmux needs a multiplexer"',
        "",
    ),
    # metas and annotations
    (
        "reject",
        '"owner" in content.metas && content.metas.owner != "" && content.metas.owner != user.user',
        '"metas.owner must be the user"',
        "",
    ),
    ("reject", "size(content.metas) > 16", '"at most 16 metas"', ""),
    (
        "reject",
        "content.annotations.exists(k, size(content.annotations[k]) > 256)",
        '"annotation values are at most 256 characters"',
        "",
    ),
    (
        "reject",
        "t.office_hours_only && !((now / 3600) % 24 >= 8 && (now / 3600) % 24 < 20)",
        '"team " + team + " works office hours only"',
        "",
    ),
    # rewrites and audit
    (
        "set",
        'content.subdomain != "" && !content.subdomain.startsWith(team + "-")',
        'team + "-" + content.subdomain',
        "subdomain",
    ),
    ("set", "", "team", "metas.team"),
    ("set", "t.force_compression && !content.use_compression", "true", "use_compression"),
    (
        "warn",
        "!content.use_encryption",
        '"proxy " + content.proxy_name + " of team " + team + " has no encryption"',
        "",
    ),
    (
        "warn",
        "content.remote_port in [6080, 6443, 6888]",
        '"proxy " + content.proxy_name + " uses the well-known port " + string(content.remote_port)',
        "",
    ),
)


@dataclass(frozen=True, slots=True)
class _Rule:
    action: str
    condition: Any  # a cel.Program, or None for a rule without `when`
    value: Any  # a cel.Program, or None for allow
    path: tuple[str, ...]


class Cel:
    name = "CEL, Rust bindings (common-expression-language)"

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        import cel  # the bench extra; imported here so a missing one is reported, not fatal

        data = load_data() if data is None else data
        self._lets = tuple((name, cel.compile(source)) for name, source in LETS)
        self._rules = tuple(
            _Rule(
                action,
                cel.compile(condition) if condition else None,
                cel.compile(value) if value else None,
                tuple(path.split(".")) if path else (),
            )
            for action, condition, value, path in RULES
        )
        self._context = cel.Context({"data": data})

    def decide(self, content: dict[str, Any], now: int) -> Verdict:
        context = self._context
        seen = filled(content, ZERO_CONTENT)
        seen["user"] = filled(seen.get("user"), ZERO_USER)
        seen["user"]["metas"] = seen["user"]["metas"] or {}
        context.add_variable("content", seen)
        context.add_variable("user", seen["user"])
        context.add_variable("now", now)
        for name, program in self._lets:
            context.add_variable(name, program.execute(context))
        changed: dict[str, Any] = {}
        warnings = []
        # No rule reads a field that an earlier `set` writes, so the context keeps the request
        # as it came (re-converting it after each set would cost a full conversion each time).
        for rule in self._rules:
            if rule.condition is not None and not rule.condition.execute(context):
                continue
            if rule.action == "reject":
                return Verdict("reject", rule.value.execute(context))
            if rule.action == "allow":
                return Verdict("allow")
            value = rule.value.execute(context)
            if rule.action == "warn":
                warnings.append(value)
                continue
            before: Any = seen
            for key in rule.path:
                before = before.get(key, "") if isinstance(before, dict) else ""
            if before == value and type(before) is type(value):
                continue
            if len(rule.path) == 1:
                changed[rule.path[0]] = value
            else:
                head, key = rule.path
                changed[head] = {**(changed.get(head) or content.get(head) or {}), key: value}
        if changed:
            return Verdict("rewrite", "", {**content, **changed}, tuple(warnings))
        return Verdict("allow", "", None, tuple(warnings))
