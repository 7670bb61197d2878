"""The functions a rule can call, by name: the language's whole function table.

`FUNCTIONS` maps each name to its implementation and whether it takes an iterable first (checked
and charged with `sandbox.sized_iterable` before the call). Each is pure and bounded by the
sandbox's limits, and `CHARGES` says what a call costs before it runs (see sandbox, "What a step
is"); `call()` is the one way every back end calls them. `regex()` and `glob()` are RE2 (linear
time) and their patterns are cached, bounded in number and in memory.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import hmac
import ipaddress
import math
import re
import socket
import zoneinfo
from collections.abc import Callable, Iterable
from typing import Any

import re2

from policyd.errors import EvaluationError, LimitError, did_you_mean
from policyd.rules.sandbox import (
    CIDR_NETWORK_STEPS,
    COPY_CHARS_PER_STEP,
    MAX_OPERATION_STEPS,
    MAX_REGEX_CHARS,
    MAX_REGEX_MEMORY,
    MAX_ROUND_DIGITS,
    PATTERN_COMPILE_STEPS,
    REGEX_CACHE_SIZE,
    TEXT_CHARS_PER_STEP,
    Budget,
    SafeRange,
    deep_size,
    error_text,
    shown,
    text_cost,
    to_text,
)


def split_host_port(addr: str) -> tuple[str, int]:
    """ "1.2.3.4:80" → ("1.2.3.4", 80); "[2001:db8::1]:443" → ("2001:db8::1", 443); no port → 0."""
    if not isinstance(addr, str):
        raise EvaluationError(f"split_host_port() takes a string, not {type(addr).__name__}")
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, _, port = addr.partition(":")
    else:
        host, port = addr, ""
    return host, int(port) if port.isdigit() else 0


def _address(text: str) -> tuple[int, int] | None:
    """An IP address as (version, integer), or None. inet_pton first (~0.4 µs; ipaddress takes
    ~2.5 µs); ipaddress for what it alone reads (an IPv6 scope, `fe80::1%eth0`)."""
    family, version = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    with contextlib.suppress(OSError, ValueError):  # ValueError: an embedded NUL
        return version, int.from_bytes(socket.inet_pton(family, text), "big")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


@functools.lru_cache(maxsize=4096)
def _network(cidr_text: str) -> tuple[int, int, int]:
    """A network in CIDR notation ("10.0.0.0/8", "2001:db8::/32", or one address) as
    (IP version, first address, last address): an address is tested with two comparisons.

    Only CIDR notation, parsed by inet_pton: every network costs the same (~1 µs) whether
    cached or not, which is what cidr() is charged for it (CIDR_NETWORK_STEPS).
    """
    text, slash, prefix = cidr_text.partition("/")
    family, version = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    try:
        value = int.from_bytes(socket.inet_pton(family, text), "big")
    except (OSError, ValueError):
        value = -1
    digits = prefix.isascii() and prefix.isdigit() and prefix == str(int(prefix))
    if value < 0 or (slash and not digits):
        raise EvaluationError(f"cidr(): {shown(cidr_text)} is not a network in CIDR notation (10.0.0.0/8)")
    width = 32 if version == 4 else 128
    length = int(prefix) if slash else width
    if length > width:
        raise EvaluationError(f"cidr(): {shown(cidr_text)} has a prefix longer than {width} bits")
    host = (1 << (width - length)) - 1
    first = value & ~host
    return version, first, first | host


def _networks(networks: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(networks) == 1 and isinstance(networks[0], list | tuple | set | frozenset):
        return tuple(networks[0])
    return networks


def cidr(addr: str, *networks: str) -> bool:
    """True when the address (optionally "ip:port" or "[v6]:port") is in any of the networks.

    An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, as a dual-stack listener reports IPv4
    clients) is also its IPv4 address: it matches IPv4 networks as that address.
    """
    if not networks:
        raise EvaluationError("cidr() needs an address and at least one network")
    networks = _networks(networks)
    host, _ = split_host_port(addr)
    parsed = _address(host)
    if parsed is None:
        return False
    version, address = parsed
    mapped = address & 0xFFFFFFFF if version == 6 and address >> 32 == 0xFFFF else -1
    for n in networks:
        if isinstance(n, str):
            v, first, last = _network(n)
            if v == version:
                if first <= address <= last:
                    return True
            elif first <= mapped <= last:  # an IPv4 network, an IPv4-mapped IPv6 address
                return True
    return False


def _cidr_cost(budget: Budget, args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], str):
        networks = len(_networks(args[1:]))
        address = CIDR_NETWORK_STEPS + len(args[0]) // TEXT_CHARS_PER_STEP  # parsing the address
        budget.charge(address + CIDR_NETWORK_STEPS * networks, "cidr()")


# -- patterns ---------------------------------------------------------------------------
def _re2_options() -> Any:
    # RE2's default lets each compiled pattern grow an 8 MB DFA cache, kept while the pattern
    # is cached, and logs "DFA out of memory" to stderr on every search that overflows it.
    options = re2.Options()
    options.max_mem = MAX_REGEX_MEMORY
    options.log_errors = False
    return options


@functools.lru_cache(maxsize=REGEX_CACHE_SIZE)
def _re2(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _re2_options())
    except Exception as e:
        raise EvaluationError(f"regex(): {shown(pattern)} is not a valid pattern: {error_text(e)}") from None


_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _literal(c: str) -> str:
    return "\\" + c if c in _PUNCTUATION else c


@functools.lru_cache(maxsize=4096)
def glob_pattern(pat: str) -> str:
    """The RE2 pattern for a shell-style pattern, with fnmatch.fnmatchcase's meaning.

    fnmatch.translate's own algorithm (Python 3.11), written for RE2: RE2 matches in linear time
    (Python's re backtracks: `*???...?b` took ~1.5 µs per character of the value and pattern),
    and has no atomic groups or lookahead, which fnmatch's output uses.
    """
    res: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            if not res or res[-1] != ".*":
                res.append(".*")
        elif c == "?":
            res.append(".")
        elif c == "[":
            j = i
            if j < n and pat[j] == "!":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                res.append("\\[")
                continue
            stuff = pat[i:j]
            if "-" not in stuff:
                stuff = stuff.replace("\\", r"\\")
            else:
                chunks = []
                k = i + 2 if pat[i] == "!" else i + 1
                while True:
                    k = pat.find("-", k, j)
                    if k < 0:
                        break
                    chunks.append(pat[i:k])
                    i = k + 1
                    k = k + 3
                chunk = pat[i:j]
                if chunk:
                    chunks.append(chunk)
                else:
                    chunks[-1] += "-"
                for k in range(len(chunks) - 1, 0, -1):  # empty ranges match nothing
                    if chunks[k - 1][-1] > chunks[k][0]:
                        chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                        del chunks[k]
                stuff = "-".join(s.replace("\\", r"\\").replace("-", r"\-") for s in chunks)
            # `[` in a class would start a POSIX class (`[:alpha:]`) for RE2; fnmatch means it.
            stuff = re.sub(r"([&~|\[])", r"\\\1", stuff)
            i = j + 1
            if not stuff:
                res.append("[^\\x00-\\x{10FFFF}]")  # an empty range: never matches
            elif stuff == "!":
                res.append(".")
            else:
                if stuff[0] == "!":
                    stuff = "^" + stuff[1:]
                elif stuff[0] == "^":
                    stuff = "\\" + stuff
                res.append(f"[{stuff}]")
        else:
            res.append(_literal(c))
    return "(?s)^" + "".join(res) + "\\z"


def glob(pattern: str, value: str) -> bool:
    """Shell-style match of the whole string: `glob("*.example.com", host)`."""
    if not isinstance(pattern, str) or not isinstance(value, str):
        raise EvaluationError("glob() takes a pattern string and a string")
    if len(pattern) > MAX_REGEX_CHARS:
        raise LimitError(f"glob pattern of {len(pattern)} characters exceeds {MAX_REGEX_CHARS}")
    return _search(_re2(glob_pattern(pattern)), value)


def regex(pattern: str, value: str) -> bool:
    """True when the RE2 pattern matches anywhere in value (RE2: linear time, no backtracking)."""
    if not isinstance(pattern, str) or not isinstance(value, str):
        raise EvaluationError("regex() takes a pattern string and a string")
    if len(pattern) > MAX_REGEX_CHARS:
        raise LimitError(f"regex pattern of {len(pattern)} characters exceeds {MAX_REGEX_CHARS}")
    return _search(_re2(pattern), value)


def _pattern_cost(to_re2: Callable[[str], str]) -> Callable[[Budget, tuple[Any, ...]], None]:
    """RE2's time is linear in the value times the pattern's program size in the worst case
    (~15 ns per character and instruction here, for patterns that overflow its DFA), and
    compiling a pattern is charged on every call (cached or not: the charge may not depend on
    what earlier requests left in the cache)."""

    def cost(budget: Budget, args: tuple[Any, ...]) -> None:
        if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
            return  # the function refuses them
        pattern, value = args
        if len(pattern) > MAX_REGEX_CHARS:
            return
        budget.charge(len(pattern) * PATTERN_COMPILE_STEPS, "compiling a pattern")
        budget.charge((len(value) + 1) * _program_size(to_re2(pattern)), "matching a pattern")

    return cost


def literal_pattern_matcher(name: str, pattern: str) -> Callable[[Budget, Any, Any], bool] | None:
    """`regex("literal", x)` / `glob("literal", x)` as `match(budget, pattern, x)`: what the call
    through CHARGES does (both charges, then the search), with the pattern's checks done once and
    its program size kept after the first call. The compiled pattern itself stays in the bounded
    cache (_re2); a pattern RE2 refuses is left to the generic call, which gives its error."""
    if len(pattern) > MAX_REGEX_CHARS:
        return None
    re2_pattern = pattern if name == "regex" else glob_pattern(pattern)
    compile_steps = len(pattern) * PATTERN_COMPILE_STEPS
    fn = regex if name == "regex" else glob
    size = 0  # the program size, once known

    def match(budget: Budget, literal: Any, value: Any) -> bool:
        nonlocal size
        if type(value) is not str:
            return call(name, fn, (literal, value), budget)  # type: ignore[no-any-return]
        if not size:
            try:
                size = _program_size(re2_pattern)
            except EvaluationError:
                return call(name, fn, (literal, value), budget)  # type: ignore[no-any-return]
        match_steps = (len(value) + 1) * size
        steps = budget.steps + compile_steps + match_steps
        if steps <= budget.max_steps and match_steps <= MAX_OPERATION_STEPS:
            # Both charges at once: neither reaches a limit. The clock is read once, before the
            # search, if they pass the next read (charge() would read it once or twice).
            budget.steps = steps
            if steps >= budget.next_read:
                budget.read_clock()
        else:
            budget.charge(compile_steps, "compiling a pattern")
            budget.charge(match_steps, "matching a pattern")
        return _search(_re2(re2_pattern), value)

    return match


@functools.lru_cache(maxsize=REGEX_CACHE_SIZE)
def _program_size(pattern: str) -> int:
    return int(_re2(pattern).programsize)


def _search(compiled: Any, value: str) -> bool:
    """`compiled.search(value) is not None` without the Python wrapper's Match object.

    google-re2's `search` decodes every span back to str offsets in Python (~4 µs a call); the
    binding's own `Match` answers the same question in under 1 µs. Falls back to `search` if
    the binding ever changes shape.
    """
    regexp = getattr(compiled, "_regexp", None)
    if regexp is None or _UNANCHORED is None:
        return compiled.search(value) is not None
    text = value.encode("utf-8")
    return bool(regexp.Match(_UNANCHORED, text, 0, len(text))[0] != (-1, -1))


_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)


# -- hashing ----------------------------------------------------------------------------
def _utf8(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise EvaluationError(f"{name}() takes strings, not {type(value).__name__}")
    return value.encode("utf-8")


def sha256(value: str) -> str:
    """The SHA-256 of the string's UTF-8 bytes, as 64 lowercase hex digits."""
    return hashlib.sha256(_utf8("sha256", value)).hexdigest()


def hmac_sha256(key: str, value: str) -> str:
    """HMAC-SHA-256 of the value's UTF-8 bytes under the key's, as 64 lowercase hex digits."""
    return hmac.new(_utf8("hmac_sha256", key), _utf8("hmac_sha256", value), "sha256").hexdigest()


def secure_equal(a: str, b: str) -> bool:
    """Whether two strings are equal, in a time that does not depend on where they differ."""
    return hmac.compare_digest(_utf8("secure_equal", a), _utf8("secure_equal", b))


HASH_CALL_STEPS = 64  # a sha256()/hmac_sha256()/secure_equal() call, whatever its input (~1 µs)
TIME_CALL_STEPS = 128  # an hour()/minute()/weekday() call: a zone conversion (~2 µs)


def _encoding_cost(budget: Budget, args: tuple[Any, ...]) -> None:
    # Hashing ASCII runs at ~0.6 ns a character; encoding other text to UTF-8 first, ~7 ns.
    n = sum(
        len(a) // 16 if a.isascii() else len(a) // TEXT_CHARS_PER_STEP for a in args if isinstance(a, str)
    )
    budget.charge(HASH_CALL_STEPS + n, "hashing")


def _time_cost(budget: Budget, args: tuple[Any, ...]) -> None:
    budget.charge(TIME_CALL_STEPS, "a time-of-day function")


# -- time of day ------------------------------------------------------------------------
@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA zone names this host knows (the system's database, else the tzdata package)."""
    return frozenset(zoneinfo.available_timezones())


@functools.cache  # bounded: one entry per known zone
def _zone_info(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def unknown_zone(name: str, *, suggest: bool = False) -> str:
    """An error message when `name` is not a zone name this host knows, else "".

    Suggestions (difflib over ~600 names, milliseconds) are for load time only."""
    if name in time_zones():
        return ""
    hint = did_you_mean(name, time_zones()) if suggest else ""
    return f"unknown time zone {shown(name)} ({hint or 'an IANA name such as Europe/Berlin or UTC'})"


def _local_time(name: str, when: Any, zone: Any) -> datetime.datetime:
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise EvaluationError(f"{name}() takes a time in unix seconds first, not {type(when).__name__}")
    if not isinstance(zone, str):
        raise EvaluationError(f"{name}() takes a zone name, not {type(zone).__name__}")
    problem = unknown_zone(zone)
    if problem:
        raise EvaluationError(f"{name}(): {problem}")
    if isinstance(when, float) and not math.isfinite(when):
        raise EvaluationError(f"{name}() takes a finite time")
    try:
        return datetime.datetime.fromtimestamp(when, _zone_info(zone))
    except (OverflowError, ValueError, OSError):
        raise EvaluationError(f"{name}(): {shown(when)} is outside the years 1-9999") from None


def hour(when: int | float, zone: str) -> int:
    """The hour (0-23) of unix time `when` on the clocks of `zone` (e.g. "Europe/Berlin")."""
    return _local_time("hour", when, zone).hour


def minute(when: int | float, zone: str) -> int:
    """The minute (0-59) of unix time `when` on the clocks of `zone`."""
    return _local_time("minute", when, zone).minute


def weekday(when: int | float, zone: str) -> int:
    """The day of the week of unix time `when` in `zone`: 0 is Monday, 6 is Sunday."""
    return _local_time("weekday", when, zone).weekday()


# -- the rest ---------------------------------------------------------------------------
def _to_int(value: Any, base: int | None = None) -> int:
    if isinstance(value, str) and len(value) > 1_000:
        raise LimitError("int() of a string over 1000 characters")
    return int(value) if base is None else int(value, base)


def _string_arg(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvaluationError(f"{name}() takes a string, not {type(value).__name__}")
    return value


def _lower(value: str) -> str:
    return _string_arg("lower", value).lower()


def _upper(value: str) -> str:
    return _string_arg("upper", value).upper()


def _startswith(value: str, prefix: str | tuple[str, ...]) -> bool:
    return _string_arg("startswith", value).startswith(tuple(prefix) if isinstance(prefix, list) else prefix)


def _endswith(value: str, suffix: str | tuple[str, ...]) -> bool:
    return _string_arg("endswith", value).endswith(tuple(suffix) if isinstance(suffix, list) else suffix)


def _round(value: Any, ndigits: int | None = None) -> Any:
    if ndigits is not None and isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise LimitError(f"round() to {ndigits} digits exceeds ±{MAX_ROUND_DIGITS}")
    return round(value) if ndigits is None else round(value, ndigits)


def _sum(values: Iterable[Any], start: int | float = 0) -> int | float:
    total: int | float = start
    for v in values:
        if not isinstance(v, int | float):
            raise EvaluationError(f"sum() adds numbers only, not {type(v).__name__}")
        total += v
    return total


# name → (callable, takes_iterable_first): iterables are checked with `sized_iterable` first.
FUNCTIONS: dict[str, tuple[Callable[..., Any], bool]] = {
    "len": (len, False),
    "str": (to_text, False),
    "int": (_to_int, False),
    "float": (float, False),
    "bool": (bool, False),
    "abs": (abs, False),
    "round": (_round, False),
    "min": (min, True),
    "max": (max, True),
    "sum": (_sum, True),
    "any": (any, True),
    "all": (all, True),
    "sorted": (sorted, True),
    "list": (list, True),
    "set": (set, True),
    "lower": (_lower, False),
    "upper": (_upper, False),
    "startswith": (_startswith, False),
    "endswith": (_endswith, False),
    "range": (SafeRange, False),
    "cidr": (cidr, False),
    "glob": (glob, False),
    "regex": (regex, False),
    "split_host_port": (split_host_port, False),
    "sha256": (sha256, False),
    "hmac_sha256": (hmac_sha256, False),
    "secure_equal": (secure_equal, False),
    "hour": (hour, False),
    "minute": (minute, False),
    "weekday": (weekday, False),
}

# Values a rule may pass as `key=` (sorted/min/max): functions from the table only.
KEY_FUNCTIONS = frozenset(f for f, _ in FUNCTIONS.values())


# -- what a call costs ------------------------------------------------------------------
def _text_work(budget: Budget, args: tuple[Any, ...]) -> None:
    """Per-character work on the string arguments (case mapping, parsing)."""
    n = sum(len(a) for a in args if isinstance(a, str)) // TEXT_CHARS_PER_STEP
    if n:
        budget.charge(n, "text work")


def _prefix_cost(budget: Budget, args: tuple[Any, ...]) -> None:
    if len(args) == 2:
        prefix = args[1]
        n = len(prefix) if isinstance(prefix, str) else len(prefix) if isinstance(prefix, list | tuple) else 0
        if isinstance(prefix, list | tuple):
            n += sum(len(p) for p in prefix if isinstance(p, str))
        if n >= COPY_CHARS_PER_STEP:
            budget.charge(n // COPY_CHARS_PER_STEP, "comparing strings")


def _compare_all(budget: Budget, args: tuple[Any, ...]) -> None:
    """min()/max()/set(): every item is compared or hashed about once, each no longer than its
    walk; the walk (sandbox.deep_size) is the charge."""
    deep_size(args[0] if len(args) == 1 else args, budget)


def _sort_cost(budget: Budget, args: tuple[Any, ...]) -> None:
    """sorted(): each item takes part in about log2(n) comparisons."""
    if args:
        items = args[0]
        walk = deep_size(items, budget)
        n = len(items) if isinstance(items, list | tuple | set | frozenset | dict | str) else 0
        if n > 2:
            budget.charge(walk * (n - 1).bit_length(), "sorting")


def _str_cost(budget: Budget, args: tuple[Any, ...]) -> None:
    if len(args) == 1:
        text_cost(budget, args[0])


# function → what a call costs, charged before it runs (the function checks its own arguments;
# a cost function skips what the function will refuse). Functions not listed cost nothing
# beyond their iterable's length (sized_iterable) and their result as built.
CHARGES: dict[Callable[..., Any], Callable[[Budget, tuple[Any, ...]], None]] = {
    to_text: _str_cost,
    _to_int: _text_work,
    float: _text_work,
    _lower: _text_work,
    _upper: _text_work,
    split_host_port: _text_work,
    _startswith: _prefix_cost,
    _endswith: _prefix_cost,
    min: _compare_all,
    max: _compare_all,
    set: _compare_all,
    sorted: _sort_cost,
    cidr: _cidr_cost,
    regex: _pattern_cost(lambda p: p),
    glob: _pattern_cost(glob_pattern),
    sha256: _encoding_cost,
    hmac_sha256: _encoding_cost,
    secure_equal: _encoding_cost,
    hour: _time_cost,
    minute: _time_cost,
    weekday: _time_cost,
}


def call(name: str, fn: Callable[..., Any], args: tuple[Any, ...], budget: Budget, **kwargs: Any) -> Any:
    """Call a function of the table as every back end does: charged first, and a Python error
    turned into an EvaluationError whose text carries no object's repr."""
    cost = CHARGES.get(fn)
    if cost is not None:
        cost(budget, args)
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError, OverflowError) as e:
        raise EvaluationError(f"{name}(): {error_text(e)}") from None


# -- load-time checks of literal arguments ----------------------------------------------
def _strings_only(name: str) -> Callable[[int, Any], str]:
    def check(position: int, value: Any) -> str:
        return "" if isinstance(value, str) else f"{name}() takes strings, not {type(value).__name__}"

    return check


def _time_arguments(name: str) -> Callable[[int, Any], str]:
    def check(position: int, value: Any) -> str:
        if position == 0:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{name}() takes unix seconds (such as `now`) first, not {type(value).__name__}"
            return ""
        if position == 1:
            if not isinstance(value, str):
                return f"{name}() takes a zone name second, not {type(value).__name__}"
            return unknown_zone(value, suggest=True)
        return f"{name}() takes a time and a zone name"

    return check


# function name → check of an argument given as a literal, by position: an error message or "".
LITERAL_ARGUMENTS: dict[str, Callable[[int, Any], str]] = {
    "sha256": _strings_only("sha256"),
    "hmac_sha256": _strings_only("hmac_sha256"),
    "secure_equal": _strings_only("secure_equal"),
    "hour": _time_arguments("hour"),
    "minute": _time_arguments("minute"),
    "weekday": _time_arguments("weekday"),
}
