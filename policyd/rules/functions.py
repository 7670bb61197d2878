"""The functions a rule can call, by name: the language's whole function table.

`FUNCTIONS` maps each name to its implementation and whether it takes an iterable first (checked
and charged with `sandbox.sized_iterable` before the call). Each is pure and bounded by the
sandbox's limits; `regex()` is RE2 (linear time) and its patterns are cached, bounded in number
and in memory.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

import re2

from policyd.errors import EvaluationError, LimitError
from policyd.rules.sandbox import (
    MAX_REGEX_CHARS,
    MAX_REGEX_MEMORY,
    MAX_ROUND_DIGITS,
    REGEX_CACHE_SIZE,
    SafeRange,
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


@functools.lru_cache(maxsize=4096)
def _network(cidr_text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr_text, strict=False)
    except ValueError as e:
        raise EvaluationError(f"cidr(): {cidr_text!r} is not a network: {e}") from None


def cidr(addr: str, *networks: str) -> bool:
    """True when the address (optionally "ip:port" or "[v6]:port") is in any of the networks."""
    if not networks:
        raise EvaluationError("cidr() needs an address and at least one network")
    if len(networks) == 1 and isinstance(networks[0], list | tuple | set | frozenset):
        networks = tuple(networks[0])
    host, _ = split_host_port(addr)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in _network(n) for n in networks if isinstance(n, str))


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    # fnmatch.translate emits atomic-style groups, so matching is free of catastrophic backtracking.
    return re.compile(fnmatch.translate(pattern))


def glob(pattern: str, value: str) -> bool:
    """Shell-style match of the whole string: `glob("*.example.com", host)`."""
    if not isinstance(pattern, str) or not isinstance(value, str):
        raise EvaluationError("glob() takes a pattern string and a string")
    if len(pattern) > MAX_REGEX_CHARS:
        raise LimitError(f"glob pattern of {len(pattern)} characters exceeds {MAX_REGEX_CHARS}")
    return _glob_regex(pattern).match(value) is not None


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
        raise EvaluationError(f"regex(): {pattern!r} is not a valid pattern: {e}") from None


def regex(pattern: str, value: str) -> bool:
    """True when the RE2 pattern matches anywhere in value (RE2: linear time, no backtracking)."""
    if not isinstance(pattern, str) or not isinstance(value, str):
        raise EvaluationError("regex() takes a pattern string and a string")
    if len(pattern) > MAX_REGEX_CHARS:
        raise LimitError(f"regex pattern of {len(pattern)} characters exceeds {MAX_REGEX_CHARS}")
    return _search(_re2(pattern), value)


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
}

# Values a rule may pass as `key=` (sorted/min/max): functions from the table only.
KEY_FUNCTIONS = frozenset(f for f, _ in FUNCTIONS.values())
