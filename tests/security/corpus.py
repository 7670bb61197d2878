"""The escape and abuse corpus: rules that try to leave the sandbox, change shared state or run away.

Each entry is (id, rule, fragment). A bare expression stands for `reject "x" when EXPR`. LOAD entries
must be refused when the policy loads, with the fragment in a positioned message; EVAL entries load
(the danger depends on values) and must fail closed while deciding, with the fragment in the error.

Sources: simpleeval's known escapes — issue #15 (function `__globals__`/`func_globals` and the
`True.__class__...__subclasses__()` chain), issue #138 (generator/coroutine frames: `gi_frame`,
`cr_frame`, `f_globals['__builtins__']`), PR #199 (`operator` module functions such as
`attrgetter`/`methodcaller`, `os` functions, callables hidden in sets), the modules and functions
reached through containers and return values (CVE-2026-32640), and `str.format` / `format_map`
field walks ("{0.__class__}") — plus its size limits, which policyd does not rely on.
"""

from __future__ import annotations

LOAD = "load"
EVAL = "eval"

PRIVATE = "private and not available"
NO_METHOD = "is not available in rules"

LOAD_REFUSED: list[tuple[str, str, str]] = [
    # dunder and private attributes
    ("dunder-class", "content.__class__", PRIVATE),
    ("function-globals", "sorted.__globals__", PRIVATE),  # simpleeval #15
    ("subclasses-walk", "().__class__.__bases__[0].__subclasses__()", "method '__subclasses__'"),
    (
        "simpleeval-15-exit",
        "True.__class__.__class__.__base__.__subclasses__()[-1].__init__.func_globals['sys'].exit(1)",
        NO_METHOD,
    ),
    ("single-underscore", "data._x", PRIVATE),
    ("builtins-name", "__builtins__", PRIVATE),
    ("bound-self", "len.__self__", PRIVATE),
    ("method-self", '"".join.__self__', PRIVATE),
    ("dunder-call", "sorted.__call__(data)", "method '__call__'"),
    ("dunder-len", "content.proxy_name.__len__()", "method '__len__'"),
    ("mro", "str.mro()", "method 'mro'"),
    ("dunder-setitem", 'data.teams.__setitem__("x", 1)', "method '__setitem__'"),
    ("private-field-index", 'content["__class__"]', PRIVATE),
    ("private-field-underscore", 'content["_secret"]', PRIVATE),
    ("data-dunder-index", 'data["__class__"]', "no data file named '__class__'"),
    ("private-loop-variable", "[_ for _ in range(3)]", "cannot be a loop variable"),
    ("private-let", "let _x = 1", "names starting with '_'"),
    ("set-private-path", "set content.__class__ = 1", "has no field '__class__'"),
    ("set-private-key", 'set content.metas["__class__"] = "x"', "'__class__' is private"),
    # frames of generators and coroutines (simpleeval #138)
    (
        "generator-frame-exec",
        "(x for x in [1]).gi_frame.f_globals['__builtins__'].exec('1')",
        "method 'exec'",
    ),
    ("coroutine-frame", "content.cr_frame", "has no field 'cr_frame'"),
    # str.format and format-spec attribute walks
    ("str-format", '"{0.__class__}".format(1)', "method 'format'"),
    ("str-format-map", '"{a.__class__}".format_map(data)', "method 'format_map'"),
    ("percent-format", "'%*s' % (10**10, '')", "%-formatting is not available"),
    ("fstring-spec-width", 'f"{content.proxy_name:>{10**9}}"', "format specs"),
    ("fstring-conversion", 'f"{content!r}"', "format specs and conversions"),
    ("fstring-dunder", 'f"{content.__class__}"', PRIVATE),
    # builtins and modules
    ("type", "type(content)", "unknown function 'type'"),
    ("getattr", 'getattr(content, "__class__")', "unknown function 'getattr'"),
    ("eval", 'eval("1")', "unknown function 'eval'"),
    ("exec", 'exec("1")', "unknown function 'exec'"),
    ("open", 'open("/etc/passwd")', "unknown function 'open'"),
    ("dunder-import", '__import__("os")', "unknown function '__import__'"),
    ("compile", 'compile("1", "", "eval")', "unknown function 'compile'"),
    ("globals", "globals()", "unknown function 'globals'"),
    ("vars", "vars(content)", "unknown function 'vars'"),
    ("dir", "dir(content)", "unknown function 'dir'"),
    ("print", "print(content)", "unknown function 'print'"),
    ("os-module", "os.environ", "unknown name 'os'"),
    ("sys-module", "sys.modules", "unknown name 'sys'"),
    ("operator-module", 'operator.attrgetter("__class__")(content)', "only the functions listed"),
    ("operator-methodcaller", 'operator.methodcaller("update", {})(data)', "only the functions listed"),
    ("os-function", 'os.system("id")', "method 'system'"),
    ("callable-from-a-set", "[f for f in {len, sorted}][0](data)", "only the functions listed"),
    ("callable-from-data", "data.teams.red.ports[0](1)", "only the functions listed"),
    ("import-statement", "import os", "'os'"),
    # syntax that would make functions or bind names
    ("lambda", "(lambda: 1)()", "only the functions listed"),
    ("walrus", "(x := 1)", "':=' assignment"),
    ("await", "await content", "await is not available"),
    ("yield", "(yield)", "yield is not available"),
    ("async-comprehension", "[x async for x in content.custom_domains]", "async comprehensions"),
    ("star-unpack-range", "[*range(10**9)]", "*unpacking"),
    ("double-star-dict", "{**data}", "**unpacking"),
    ("star-args", "max(*data.teams)", "*arguments"),
    ("double-star-kwargs", "sorted(data, **data)", "**arguments"),
    ("unknown-keyword", "sorted(content.custom_domains, cmp=1)", "keyword argument 'cmp'"),
    ("method-keyword", '"a,b".split(sep=",")', "positional arguments only"),
    ("bytes-literal", 'b"abc"', "bytes literals"),
    ("complex-literal", "1j", "complex literals"),
    ("ellipsis", "...", "ellipsis literals"),
    # methods that mutate shared state
    ("data-update", "data.update({})", "method 'update'"),
    ("metas-update", 'user.metas.update({"team": "blue"})', "method 'update'"),
    ("domains-append", 'content.custom_domains.append("evil.com")', "method 'append'"),
    ("data-pop", 'data.teams.pop("red")', "method 'pop'"),
    ("data-setdefault", 'data.teams.setdefault("x", 1)', "method 'setdefault'"),
    ("list-sort", "data.access.admins.sort()", "method 'sort'"),
    ("list-clear", "data.access.admins.clear()", "method 'clear'"),
    ("list-extend", 'data.access.admins.extend(["mallory"])', "method 'extend'"),
    ("set-add", "{1}.add(2)", "method 'add'"),
    ("let-then-pop", 'let x = data.teams\nset content.subdomain = x.red.pop("domain")', "method 'pop'"),
    ("set-from-update", "set content.metas = data.teams.update({})", "method 'update'"),
    # methods whose size argument is the attack
    ("ljust", '"a".ljust(10**9)', "method 'ljust'"),
    ("center", '"a".center(10**9)', "method 'center'"),
    ("zfill", '"a".zfill(10**9)', "method 'zfill'"),
    ("expandtabs", '"\\t".expandtabs(10**9)', "method 'expandtabs'"),
    ("to-bytes", '(1).to_bytes(10**9, "big")', "method 'to_bytes'"),
    ("encode", '"a".encode()', "method 'encode'"),
    # reason templates trying the same
    ("reason-dunder", 'reject "{content.__class__}"', PRIVATE),
    ("reason-format", "reject \"{'{0.__class__}'.format(1)}\"", "method 'format'"),
    ("reason-eval", "reject \"{eval('1')}\"", "unknown function 'eval'"),
    ("reason-conversion", 'reject "{content!r}"', "in {...}"),
    ("reason-format-spec", 'reject "{content.proxy_name:>1000000000}"', "in {...}"),
    ("reason-mutation", 'reject "{data.update({})}"', "method 'update'"),
    # sizes the parser must refuse before doing the work
    ("rule-of-1-mb", 'reject "x" when "' + "a" * 1_000_000 + '" == ""', "longer than 8000 characters"),
    ("ten-thousand-parentheses", "(" * 10_000 + "1" + ")" * 10_000, "longer than 8000 characters"),
    ("nested-lists-depth", "[" * 60 + "1" + "]" * 60, "nests deeper than"),
    ("parser-recursion", "1" + "+1" * 3_000, "nests too deeply"),
    (
        "nested-comprehensions",
        "".join(f"[x{i} for x{i} in " for i in range(25)) + "range(9)" + "]" * 25,
        "nests deeper than",
    ),
]

EVAL_FAILS: list[tuple[str, str, str]] = [
    # frames and attributes reached through values: key lookups, never getattr
    ("generator-frame", "[x for x in [1]].gi_frame.f_globals", "'.gi_frame' is not available on a list"),
    ("data-f-globals", "data.teams.f_globals", "no key 'f_globals'"),
    ("data-gi-code", "data.teams.red.gi_code", "no key 'gi_code'"),
    ("data-dunder-key", 'data.teams["__class__"]', "no key '__class__'"),
    # bound methods passed as values
    (
        "bound-method-key",
        "max(data.access.admins, key=data.access.admins.index)",
        "'.index' is not available",
    ),
    ("non-function-key", "sorted(data.access.admins, key=1)", "key= takes one of"),
    ("bound-method-in-a-set", "{data.access.admins.index}", "'.index' is not available"),
    # huge numbers
    ("power-4000000", "4000000**4000000", "would exceed 4096 bits"),
    ("power-tower", "9**9**9", "would exceed 4096 bits"),
    ("shift", "1 << 10**9", "would exceed 4096 bits"),
    ("negative-exponent", "2 ** -10**9", "exceeds 4096"),
    ("float-power", "2.0 ** 5000", "exceeds 4096"),
    ("round-digits", "round(12345, -10**7)", "round() to"),
    ("int-of-long-string", "int('9' * 5000)", "over 1000 characters"),
    ("len-of-huge-range", "len(range(10**100)) > 0", "len()"),
    # string and list multiplication
    ("string-repeat", "'a' * 10**9", "repeating a string"),
    ("string-repeat-left", "10**10 * 'ab'", "repeating a string"),
    ("list-repeat", "['a'] * 10**9", "repeating a list"),
    ("nested-repeat", "[[0]*100000]*100000", "repeating a list"),
    ("repeat-of-containers", "[[0]*10]*10", "only lists of plain values"),
    ("string-add", "'a' * 99999 + 'bc'", "exceeds 100000"),
    ("list-add", "[0] * 10000 + [0] * 10000", "exceeds 10000"),
    # ranges and iteration
    ("range-comprehension", "[x for x in range(10**12)]", "iterating"),
    ("max-range", "max(range(10**12))", "iterating"),
    ("sorted-range", "sorted(range(10**12))", "iterating"),
    ("set-range", "set(range(10**12))", "iterating"),
    ("list-range", "list(range(10**12))", "iterating"),
    ("sum-range", "sum(range(10**12))", "iterating"),
    ("any-range", "any(x < 0 for x in range(10**12))", "iterating"),
    ("dict-comprehension", "len({i: i for i in range(10001)})", "iterating"),
    ("comprehension-product", "len([1 for a in range(10000) for b in range(10000)])", "more than 10000"),
    ("comprehension-filtered", "len([1 for a in range(10000) for b in range(10000) if False])", "evaluation"),
    (
        "comprehension-nested",
        "len([[[1 for c in range(100)] for b in range(100)] for a in range(100)])",
        "steps",
    ),
    # joins, replaces, splits
    ("join-generator", "''.join(str(i) for i in range(10**9))", "iterating"),
    ("join-list", "''.join(['a' * 99999] * 10)", "join would build"),
    ("join-string", "('a' * 100000).join('b' * 100000)", "join would build"),
    ("join-range", "('a' * 1000).join(range(10**12))", "join of"),
    ("replace-empty", "('a' * 1000).replace('', 'b' * 1000)", "replace would build"),
    ("split-many", "('a ' * 50000).split()", "exceeds 10000"),
    ("upper-grows", "('ß' * 60000).upper()", "exceeds 100000"),
    # str() and key= walks
    ("str-of-shared-strings", "str(['a' * 1000] * 10000)", "text of this value"),
    ("sorted-key-list", "sorted(['a' * 100000] * 10000, key=list)", "steps"),
    ("built-shared-strings", "len(['a' * 100000] * 10000)", "steps"),
    ("max-key-sorted", "max(['a' * 9999] * 10000, key=sorted)", "steps"),
    # reason templates
    ("reason-huge", "reject \"{'a' * 10**9}\"", "repeating a string"),
    ("reason-str-walk", "reject \"{str(['a' * 1000] * 10000)}\"", "text of this value"),
    ("reason-function-address", 'reject "{cidr}"', "cannot be turned into text"),
    ("reason-many-parts", "let s = 'a' * 100\nreject \"" + "{s}" * 2_000 + '"', "more than 100000"),
    ("reason-parts-sum", "let s = 'a' * 60000\nreject \"{s}{s}\"", "more than 100000"),
    # plain type errors fail closed too
    ("division-by-zero", "1 / 0", "ZeroDivisionError"),
    ("missing-key", "data.teams.nonexistent", "no key 'nonexistent'"),
    ("index-out-of-range", "content.custom_domains[10**20]", "out of range"),
    ("unhashable-key", "{[1]: 2}", "unhashable"),
    ("dict-plus-int", "data.teams + 1", "unsupported operand"),
    ("bad-regex", "regex('(', 'a')", "not a valid pattern"),
]


def as_rule(text: str) -> str:
    """A bare expression becomes `reject "x" when EXPR`; whole rules stay as they are."""
    first = text.split(None, 1)[0] if text.strip() else ""
    if first in ("reject", "allow", "set", "warn", "let"):
        return text
    return f'reject "x" when {text}'
