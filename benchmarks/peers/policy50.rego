# benchmarks/policy50/NewProxy.rules translated into Rego (v1 syntax), rule for rule, for the peers
# benchmark (benchmarks/peers). Input: {"content": <NewProxy content as frps sends it>, "now": <unix s>};
# data: {"teams": ..., "access": ...} from benchmarks/policy50/data. Query: data.policy50.decision.
#
# The rules run in file order and the first reject/allow ends the evaluation, as in policyd: one
# `else` chain, so a rule after the one that fired is never evaluated. Messages are built with
# concat(), not sprintf(): regorus's sprintf drops the space after a verb ("%s is" -> "redis").
package policy50

import rego.v1

# Missing means empty: frps omits empty fields (v0.43+) or sends null (v0.33); both read as the
# field's zero value, as in policyd.
zero_content := {
	"proxy_name": "", "proxy_type": "", "remote_port": 0, "use_encryption": false,
	"use_compression": false, "custom_domains": [], "subdomain": "", "locations": [],
	"http_user": "", "http_pwd": "", "route_by_http_user": false, "host_header_rewrite": "",
	"headers": {}, "response_headers": {}, "allow_users": [], "sk": "", "group": "",
	"group_key": "", "bandwidth_limit": "", "bandwidth_limit_mode": "", "multiplexer": "",
	"metas": {}, "annotations": {},
}

content := object.union(zero_content, {k: v | some k, v in input.content; v != null})

user := object.union(
	{"user": "", "metas": {}, "run_id": ""},
	{k: v | some k, v in object.get(input.content, "user", {}); v != null},
)

# let team = user.metas.team
team := object.get(user.metas, "team", "")

# let t = data.teams[team] if team in data.teams else {}
t := object.get(data.teams, team, {})

tcp_udp := {"tcp", "udp"}

http_like := {"http", "https", "tcpmux"}

secret_types := {"stcp", "sudp", "xtcp"}

proxy_types := {"tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp"}

# `x in range(low, high)`: low <= x < high
in_range(x, low, high) if {
	x >= low
	x < high
}

verdict := {"allow": true} if {
	# who
	user.user in data.access.admins
} else := {"reject": concat("", ["user ", user.user, " is banned"])} if {
	user.user in data.access.banned_users
} else := {"reject": "login without a team"} if {
	team == ""
} else := {"reject": concat("", ["unknown team '", team, "'"])} if {
	not team in object.keys(data.teams)
} else := {"reject": concat("", ["team ", team, " is suspended"])} if {
	t.suspended
} else := {"reject": "proxy names start with the user name"} if {
	not startswith(content.proxy_name, concat("", [user.user, "."]))
} else := {"reject": "proxy name too long"} if {
	count(content.proxy_name) > 64
} else := {"reject": "proxy name may hold a-z, 0-9, '.', '_' and '-'"} if {
	not regex.match(`^[a-z0-9._-]+$`, content.proxy_name)
} else := {"reject": "run_id missing"} if {
	user.run_id == ""
} else := {"reject": concat("", ["unknown proxy type ", content.proxy_type])} if {
	# what
	not content.proxy_type in proxy_types
} else := {"reject": concat("", ["team ", team, " may not use ", content.proxy_type])} if {
	not content.proxy_type in t.types
} else := {"reject": "tcp/udp need a remote_port"} if {
	# tcp/udp
	content.proxy_type in tcp_udp
	content.remote_port == 0
} else := {"reject": "ports below 1024 are reserved"} if {
	content.proxy_type in tcp_udp
	content.remote_port < 1024
} else := {"reject": concat("", ["port ", format_int(content.remote_port, 10), " is outside ", team, "'s range"])} if {
	content.proxy_type in tcp_udp
	not in_range(content.remote_port, t.ports[0], t.ports[1] + 1)
} else := {"reject": "IRC ports are blocked"} if {
	content.remote_port in {6666, 6667, 6697}
} else := {"reject": "udp ports are 6500-6599"} if {
	content.proxy_type == "udp"
	not in_range(content.remote_port, 6500, 6600)
} else := {"reject": "tcp/udp proxies take no custom_domains"} if {
	content.proxy_type in tcp_udp
	count(content.custom_domains) > 0
} else := {"reject": "tcp/udp proxies take no subdomain"} if {
	content.proxy_type in tcp_udp
	content.subdomain != ""
} else := {"reject": "http proxies need a domain"} if {
	# http/https/tcpmux
	content.proxy_type in http_like
	count(content.custom_domains) == 0
	content.subdomain == ""
} else := {"reject": "at most 5 custom domains"} if {
	count(content.custom_domains) > 5
} else := {"reject": concat("", ["custom domains must be under ", t.domain])} if {
	some d in content.custom_domains
	d != t.domain
	not endswith(d, concat("", [".", t.domain]))
} else := {"reject": "wildcard domains are not allowed"} if {
	some d in content.custom_domains
	startswith(d, "*")
} else := {"reject": "subdomain too long"} if {
	count(content.subdomain) > 40
} else := {"reject": "subdomain may hold a-z, 0-9 and '-'"} if {
	content.subdomain != ""
	not regex.match(`^[a-z0-9-]+$`, content.subdomain)
} else := {"reject": "locations start with /"} if {
	some p in content.locations
	not startswith(p, "/")
} else := {"reject": "http_user needs http_pwd"} if {
	content.http_user != ""
	content.http_pwd == ""
} else := {"reject": "route_by_http_user needs http_user"} if {
	content.route_by_http_user
	content.http_user == ""
} else := {"reject": concat("", ["host_header_rewrite must stay in ", t.domain])} if {
	content.host_header_rewrite != ""
	not glob.match(concat("", ["*.", t.domain]), null, content.host_header_rewrite)
} else := {"reject": "X-Forwarded-For may not be set"} if {
	object.get(content.headers, "X-Forwarded-For", "") != ""
} else := {"reject": "the Server response header may not be set"} if {
	object.get(content.response_headers, "Server", "") != ""
} else := {"reject": concat("", [content.proxy_type, " proxies must list allow_users"])} if {
	# stcp/sudp/xtcp
	content.proxy_type in secret_types
	count(content.allow_users) == 0
} else := {"reject": "allow_users = \"*\" is not allowed"} if {
	"*" in content.allow_users
} else := {"reject": concat("", ["allow_users must be members of ", team])} if {
	some u in content.allow_users
	not u in t.members
} else := {"reject": concat("", [content.proxy_type, " proxies need an sk"])} if {
	content.proxy_type in secret_types
	content.sk == ""
} else := {"reject": concat("", ["group names start with ", team, "-"])} if {
	# groups, bandwidth, multiplexing
	content.group != ""
	not startswith(content.group, concat("", [team, "-"]))
} else := {"reject": "a group needs a group_key"} if {
	content.group != ""
	content.group_key == ""
} else := {"reject": "bandwidth_limit looks like 10MB or 100KB"} if {
	content.bandwidth_limit != ""
	not regex.match(`^[0-9]+(MB|KB)$`, content.bandwidth_limit)
} else := {"reject": "bandwidth_limit_mode is client or server"} if {
	not content.bandwidth_limit_mode in {"", "client", "server"}
} else := {"reject": concat("", ["team ", team, " must set a bandwidth limit"])} if {
	t.require_bandwidth_limit
	content.bandwidth_limit == ""
} else := {"reject": "multiplexer must be httpconnect"} if {
	content.multiplexer != ""
	content.multiplexer != "httpconnect"
} else := {"reject": "tcpmux needs a multiplexer"} if {
	content.proxy_type == "tcpmux"
	content.multiplexer == ""
} else := {"reject": "metas.owner must be the user"} if {
	# metas and annotations
	owner := object.get(content.metas, "owner", "")
	owner != ""
	owner != user.user
} else := {"reject": "at most 16 metas"} if {
	count(content.metas) > 16
} else := {"reject": "annotation values are at most 256 characters"} if {
	some v in content.annotations
	count(v) > 256
} else := {"reject": concat("", ["team ", team, " works office hours only"])} if {
	t.office_hours_only
	not in_range(floor(input.now / 3600) % 24, 8, 20)
} else := {"pass": true}

# rewrites and audit: reached only when no reject/allow fired. No rule below reads a field that an
# earlier `set` writes, so each is computed from the request as it came.
subdomain_change := {"subdomain": concat("", [team, "-", content.subdomain])} if {
	content.subdomain != ""
	not startswith(content.subdomain, concat("", [team, "-"]))
} else := {}

metas_change := {"metas": {"team": team}} if {
	object.get(content.metas, "team", "") != team
} else := {}

compression_change := {"use_compression": true} if {
	t.force_compression
	not content.use_compression
} else := {}

changes := object.union_n([subdomain_change, metas_change, compression_change])

encryption_warning := [concat("", ["proxy ", content.proxy_name, " of team ", team, " has no encryption"])] if {
	not content.use_encryption
} else := []

port_warning := [concat("", ["proxy ", content.proxy_name, " uses the well-known port ", format_int(content.remote_port, 10)])] if {
	content.remote_port in {6080, 6443, 6888}
} else := []

decision := {"outcome": "reject", "reason": verdict.reject} if {
	verdict.reject
} else := {"outcome": "allow"} if {
	verdict.allow
} else := {
	"outcome": "rewrite",
	"content": object.union(input.content, changes),
	"warnings": array.concat(encryption_warning, port_warning),
} if {
	count(changes) > 0
} else := {"outcome": "allow", "warnings": array.concat(encryption_warning, port_warning)}
