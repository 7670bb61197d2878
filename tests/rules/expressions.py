"""Expressions and request contents the back ends are held to the reference evaluator on.

Hypothesis strategies over the language's grammar and the ops' schemas (test_differential.py),
and fixed shapes each fast path specialises with the contents that exercise them (shared with
test_program.py and test_fastpath.py).
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from policyd.rules import functions, sandbox
from policyd.rules.decision import Op
from policyd.rules.schema import SCHEMAS, USER, Field, Kind

DATA: dict[str, Any] = {
    "teams": {
        "red": {"ports": [6000, 6999], "domain": "red.example.com", "tokens": ["tk-a"], "open": True},
        "blue": {"ports": [7000, 7999], "domain": "blue.example.com", "tokens": [], "open": False},
    },
    "access": {"admins": ["root"], "blocked": ["198.51.100.0/24", "2001:db8::/32"], "limit": 3},
}
NOW = 1_700_000_000
OPS = (Op.NEW_PROXY, Op.LOGIN, Op.NEW_USER_CONN, Op.PING)
LETS = ("team", "ports", "xs", "n", "t")
VARS = ("v", "w")  # comprehension variables
FUNCTIONS = sorted(functions.FUNCTIONS)
METHODS = sorted(sandbox.ALL_METHOD_NAMES)
BINOPS = ("+", "-", "*", "/", "//", "%", "**", "<<", ">>", "&", "|", "^")
CMPOPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
WORDS = ("", "a", "tcp", "udp", "red", "red-", "blue", "x.red.example.com", "*", "6000", "a,b", "{", " ")
SETTINGS = settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

# -- request contents --------------------------------------------------------------------
scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-3, 8000),
    st.sampled_from([0, 1, 2**70, -(2**40)]),
    st.sampled_from([0.5, -1.0, 6022.0, math.inf]),
    st.booleans(),
    st.none(),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WORDS), inner, max_size=3),
    max_leaves=6,
)
str_maps = st.dictionaries(st.sampled_from(("team", "owner", "token", "env", "")), st.sampled_from(WORDS))


def field_values(f: Field) -> st.SearchStrategy[Any]:
    """Mostly values of the field's own kind; sometimes null or a value of the wrong type."""
    own: st.SearchStrategy[Any]
    if f.kind is Kind.STR:
        own = st.sampled_from(WORDS)
    elif f.kind is Kind.INT:
        own = st.integers(-1, 8000)
    elif f.kind is Kind.BOOL:
        own = st.booleans()
    elif f.kind is Kind.STR_LIST:
        own = st.lists(st.sampled_from(WORDS), max_size=4)
    elif f.kind is Kind.STR_MAP:
        own = str_maps
    else:
        own = records(f)
    return st.one_of(own, own, own, st.none(), json_values)


def records(f: Field) -> st.SearchStrategy[dict[str, Any]]:
    fields = sorted(f.fields)
    return st.fixed_dictionaries(
        {}, optional={name: field_values(f.fields[name]) for name in fields} | {"future": json_values}
    )


# -- expressions -------------------------------------------------------------------------
def chains(f: Field, prefix: str, depth: int = 3) -> list[str]:
    """Every field path of a schema below `prefix`, attribute and index forms."""
    out = [prefix]
    if depth == 0:
        return out
    if f.kind is Kind.RECORD:
        for name, sub in sorted(f.fields.items()):
            out += chains(sub, f"{prefix}.{name}", depth - 1)
        out.append(f"{prefix}['future']")
    elif f.kind is Kind.STR_MAP:
        out += [f"{prefix}.team", f"{prefix}['owner']", f"{prefix}.token"]
    return out


@st.composite
def atoms(draw: st.DrawFn, op: Op, bound: tuple[str, ...]) -> str:
    kinds = ["const", "field", "field", "name", "data"] + (["var", "var"] if bound else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "const":
        value = draw(st.one_of(st.sampled_from(WORDS), st.integers(-2, 7000), st.sampled_from([0.5, 2**65])))
        return repr(value)
    if kind == "field":
        user = USER if op is Op.LOGIN else SCHEMAS[op].fields["user"]
        paths = chains(SCHEMAS[op], "content") + chains(user, "user")
        return draw(st.sampled_from(paths))
    if kind == "name":
        return draw(st.sampled_from([*LETS, "op", "reqid", "now", "True", "False", "None", "lower"]))
    if kind == "data":
        return draw(
            st.sampled_from(
                [
                    "data.teams",
                    "data.teams.red",
                    "data.teams.red.ports",
                    "data.teams[team]",
                    "data.access.admins",
                    "data.access.blocked",
                    "data['access']['limit']",
                    "data.teams.blue.domain",
                ]
            )
        )
    return draw(st.sampled_from(bound))


@st.composite
def expressions(draw: st.DrawFn, op: Op, depth: int = 3, bound: tuple[str, ...] = ()) -> str:
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        return draw(atoms(op, bound))

    def sub(b: tuple[str, ...] = bound) -> str:
        return draw(expressions(op, depth - 1, b))

    shape = draw(
        st.sampled_from(
            [
                "binop", "unary", "and", "or", "compare", "chain", "in_const", "in_range", "in_dynamic", "is",
                "ifexp", "call", "call_iter", "method", "index", "slice", "list", "tuple", "set",
                "dict", "listcomp", "gencall", "setcomp", "dictcomp", "nested", "fstring",
            ]
        )
    )  # fmt: skip
    if shape == "binop":
        return f"({sub()} {draw(st.sampled_from(BINOPS))} {sub()})"
    if shape == "unary":
        return f"({draw(st.sampled_from(['not ', '-', '+', '~']))}{sub()})"
    if shape in ("and", "or"):
        parts = [sub() for _ in range(draw(st.integers(2, 3)))]
        return "(" + f" {shape} ".join(parts) + ")"
    if shape == "compare":
        return f"({sub()} {draw(st.sampled_from(CMPOPS))} {sub()})"
    if shape == "chain":
        return f"({sub()} < {sub()} <= {sub()})"
    if shape == "in_const":
        items = draw(st.lists(st.sampled_from(["'tcp'", "'udp'", "6022", "'red'", "0", "None"]), max_size=4))
        left, right = draw(st.sampled_from([("[", "]"), ("(", ",)"), ("{", "}")]))
        container = left + ", ".join(items) + right if items else "()"
        return f"({sub()} {draw(st.sampled_from(['in', 'not in']))} {container})"
    if shape == "in_range":
        lo = draw(st.integers(-5, 7000))
        args = f"{lo}, {lo + draw(st.integers(-1, 1000))}"
        if draw(st.booleans()):
            args += f", {draw(st.sampled_from([1, 2, -1, 7]))}"
        return f"({sub()} {draw(st.sampled_from(['in', 'not in']))} range({args}))"
    if shape == "in_dynamic":
        bounds = ", ".join(sub() for _ in range(draw(st.integers(1, 3))))
        return f"({sub()} {draw(st.sampled_from(['in', 'not in']))} range({bounds}))"
    if shape == "is":
        singleton = draw(st.sampled_from(["None", "True"]))
        return f"({sub()} {draw(st.sampled_from(['is', 'is not']))} {singleton})"
    if shape == "ifexp":
        return f"({sub()} if {sub()} else {sub()})"
    if shape == "call":
        name = draw(st.sampled_from(FUNCTIONS))
        args = [sub() for _ in range(draw(st.integers(1, 3)))]
        return f"{name}({', '.join(args)})"
    if shape == "call_iter":
        name = draw(st.sampled_from(["sorted", "min", "max", "sum", "any", "all", "len", "list", "set"]))
        kw = draw(st.sampled_from(["", ", key=lower", ", reverse=True", ", default=0", ", key=len"]))
        return f"{name}({sub()}{kw})"
    if shape == "method":
        args = [sub() for _ in range(draw(st.integers(0, 2)))]
        return f"({sub()}).{draw(st.sampled_from(METHODS))}({', '.join(args)})"
    if shape == "index":
        return f"({sub()})[{sub()}]"
    if shape == "slice":
        return f"({sub()})[{draw(st.sampled_from(['1:', ':2', '::-1', '0:1', '-1:']))}]"
    if shape == "list":
        return "[" + ", ".join(sub() for _ in range(draw(st.integers(0, 3)))) + "]"
    if shape == "tuple":
        return "(" + "".join(sub() + ", " for _ in range(draw(st.integers(1, 3)))) + ")"
    if shape == "set":
        return "{" + ", ".join(sub() for _ in range(draw(st.integers(1, 3)))) + "}"
    if shape == "dict":
        return "{" + ", ".join(f"{sub()}: {sub()}" for _ in range(draw(st.integers(0, 2)))) + "}"
    var = draw(st.sampled_from(VARS))
    inner = (*bound, var)
    cond = f" if {sub(inner)}" if draw(st.booleans()) else ""
    if shape == "listcomp":
        return f"[{sub(inner)} for {var} in {sub()}{cond}]"
    if shape == "gencall":
        fn = draw(st.sampled_from(["any", "all", "sorted", "len"]))
        return f"{fn}({sub(inner)} for {var} in {sub()}{cond})"
    if shape == "setcomp":
        return f"{{{sub(inner)} for {var} in {sub()}{cond}}}"
    if shape == "dictcomp":
        pair = ("v", "w")
        return f"{{{sub(pair)}: {sub(pair)} for v, w in ({sub()}).items()}}"
    if shape == "nested":
        other = "w" if var == "v" else "v"
        return f"[{sub((*bound, var, other))} for {var} in {sub()} for {other} in {sub((*bound, var))}]"
    return f'f"{{{sub()}}}-{{{sub()}}}"'


lets = st.fixed_dictionaries(
    {
        "team": st.sampled_from(["red", "blue", "green", ""]),
        "ports": st.sampled_from([[6000, 6999], [], [1, "x"]]),
        "xs": st.lists(st.sampled_from(WORDS), max_size=4),
        "n": st.integers(-2, 8000),
        "t": st.sampled_from([DATA["teams"]["red"], {}, {"ports": [1, 2]}]),
    }
)


# -- running both ------------------------------------------------------------------------


SPECIALISED = [
    "content.remote_port in range(6000, 7000)",
    "content.remote_port not in range(6000, 7000, 2)",
    "content.remote_port in range(-5, 5)",
    'content.proxy_type in ("tcp", "udp")',
    'content.proxy_type not in ["stcp", "sudp", "xtcp"]',
    "content.proxy_type in {'http', 'https'}",
    'content.proxy_type == "tcp"',
    '"tcp" != content.proxy_type',
    "content.remote_port < 1024",
    "not content.use_encryption",
    "content.metas.owner",
    'content.metas["owner"] == user.user',
    "content.user.metas.team",
    "user.metas.team",
    "user.user and user.user in data.access.admins",
    "content.custom_domains",
    "content.metas",
    "content.user",
    'content["future"]',
    "content.user['future']",
    "len(content.custom_domains) > 5",
    "data.teams.red.ports[0]",
    "data.teams[team].domain",
    "t.ports",
    "any(d.endswith('.red.example.com') for d in content.custom_domains)",
    "content.subdomain and not content.subdomain.startswith(team + '-')",
    "content.proxy_type in ('tcp', 'udp') and content.remote_port not in range(6000, 7000)",
    "content.remote_port is None or content.use_encryption is True",
    "content.remote_port in range(data.teams.red.ports[0], data.teams.red.ports[1] + 1)",
    "content.remote_port not in range(t.ports[0], t.ports[1])",
    "n in range(n - 1, n + 1)",
    "content.remote_port in range(n, 'x')",
    "content.proxy_type in range(0, n)",
    "6022.0 in range(n, 7000)",
    "True in range(0, 2)",
    "content.remote_port in range(n)",
    "any(len(v) > 2 for v in content.annotations.values())",
    "all(d.endswith('.example.com') for d in content.custom_domains)",
    "any([d for d in content.custom_domains])",
    # shapes policyd.rules.codegen writes inline
    "content.headers['X-Forwarded-For']",
    "content.response_headers.Server",
    "content.user.metas['team']",
    "user.metas",
    "content['remote_port']",
    "user['run_id']",
    "all(u in t.ports for u in content.allow_users)",
    "any(v for v in xs)",
    "[content.remote_port, 1]",
    "(content.proxy_type, user.user)",
    "-content.remote_port",
    "content.remote_port + 1 if content.use_encryption else 'x'",
    "content.proxy_name.startswith(user.user + '.')",
    "regex('^[a-z]+$', content.proxy_name)",
    "len(content.metas) > 16",
    "t['ports'][1] > content.remote_port",
    "content.proxy_type in xs",
    "content.remote_port <= n",
]
CONTENTS: list[dict[str, Any]] = [
    {},
    {
        "user": {"user": "alice", "metas": {"team": "red", "owner": "alice"}, "run_id": "r1"},
        "proxy_type": "tcp",
        "remote_port": 6022,
        "use_encryption": True,
        "custom_domains": ["a.red.example.com"],
        "subdomain": "web",
        "metas": {"owner": "bob"},
        "future": {"x": 1},
    },
    {"user": None, "proxy_type": None, "remote_port": None, "metas": None, "custom_domains": None},
    {"user": "alice", "proxy_type": 7, "remote_port": "6022", "metas": ["x"], "custom_domains": "a"},
    {"user": {"metas": "red"}, "remote_port": True, "use_encryption": 1},
    {"user": {"metas": {"team": None}}, "remote_port": 6999.0, "metas": {"owner": None}},
]
