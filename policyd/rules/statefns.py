"""The state functions of the language: `proxies()`, `sessions()`, `rate()` and `hits()`.

A rule reads what policyd has seen across requests only through these four functions, and they
reach the state only through `StateReader`, the small interface each decision's context carries
(`Ctx.state`). The rules layer knows nothing of backends: the engine gives every decision a
reader built from the configured backend (policyd.state), and tools give theirs. A context built
without one answers every call with an evaluation error (`UNAVAILABLE`).

Arguments are checked here at evaluation time, and by the compiler at load time wherever it can
see them (literals, fields of a known kind): `ARGUMENTS` says what each parameter takes.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from policyd.errors import EvaluationError, LimitError

MAX_STATE_KEY_CHARS = 512  # characters in a user name or rate() key passed to a state function
MAX_RATE_LIMIT = 10_000  # the largest `limit` rate() takes (the backends keep `limit` hits per key)
MAX_RATE_PERIOD_S = 7 * 86_400  # the longest `per`: a week, in seconds
STATE_CALL_STEPS = 10  # steps a state call is charged, plus one per item of a list it returns

_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class StateReader(Protocol):
    """What the state functions read and count; the engine gives each decision one.

    `proxies`/`sessions` answer lists of plain dicts that may be shared with other decisions
    (rules cannot change them; the proxy or Login being decided is not among them); `rate`
    counts this evaluation under `key` and answers whether it is at most the `limit`-th in the
    last `per_s` seconds; `hits` only reads that count.
    """

    def proxies(self, user: str) -> list[dict[str, Any]]: ...
    def sessions(self, user: str) -> list[dict[str, Any]]: ...
    def rate(self, key: str, limit: int, per_s: float) -> bool: ...
    def hits(self, key: str, per_s: float) -> int: ...


class _Unavailable:
    """The reader of a context built without state: every state call is an evaluation error."""

    def _refuse(self) -> Any:
        raise EvaluationError("state functions need a state backend; none was given to this evaluation")

    def proxies(self, user: str) -> list[dict[str, Any]]:
        return self._refuse()  # type: ignore[no-any-return]

    def sessions(self, user: str) -> list[dict[str, Any]]:
        return self._refuse()  # type: ignore[no-any-return]

    def rate(self, key: str, limit: int, per_s: float) -> bool:
        return self._refuse()  # type: ignore[no-any-return]

    def hits(self, key: str, per_s: float) -> int:
        return self._refuse()  # type: ignore[no-any-return]


UNAVAILABLE: StateReader = _Unavailable()


class Param(enum.Enum):
    """What one parameter of a state function takes."""

    NAME = "a string"  # a user name or a rate key
    COUNT = "a whole number"  # rate()'s limit
    PERIOD = 'a period ("30s", "5m", "1h", "1d" or seconds)'  # rate()'s and hits()'s per


def parse_period(value: Any) -> float:
    """`per` in seconds: "30s", "5m", "1h", "1d" or a number of seconds, up to a week."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise EvaluationError(f"a period is {Param.PERIOD.value}, not {type(value).__name__}")
    if isinstance(value, str):
        match = _PERIOD.match(value)
        if match is None:
            raise EvaluationError(f"{value!r} is not a period: use {Param.PERIOD.value}")
        seconds = float(match.group(1)) * _UNITS_S[match.group(2)]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise EvaluationError(f"a period must be positive, not {value!r}")
    if seconds > MAX_RATE_PERIOD_S:
        raise LimitError(f"a period of {value!r} exceeds the limit of {MAX_RATE_PERIOD_S} seconds (a week)")
    return seconds


def check_name(function: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EvaluationError(f"{function}() takes {Param.NAME.value}, not {type(value).__name__}")
    if len(value) > MAX_STATE_KEY_CHARS:
        raise LimitError(f"{function}(): a key of {len(value)} characters exceeds {MAX_STATE_KEY_CHARS}")
    return value


def check_count(function: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvaluationError(f"{function}() takes a limit that is {Param.COUNT.value}, not {value!r:.40}")
    if not 0 <= value <= MAX_RATE_LIMIT:
        raise LimitError(f"{function}(): a limit of {value} is outside 0-{MAX_RATE_LIMIT}")
    return value


def _proxies(state: StateReader, user: Any) -> list[dict[str, Any]]:
    return state.proxies(check_name("proxies", user))


def _sessions(state: StateReader, user: Any) -> list[dict[str, Any]]:
    return state.sessions(check_name("sessions", user))


def _rate(state: StateReader, key: Any, limit: Any, per: Any) -> bool:
    return state.rate(check_name("rate", key), check_count("rate", limit), parse_period(per))


def _hits(state: StateReader, key: Any, per: Any) -> int:
    return state.hits(check_name("hits", key), parse_period(per))


def call_cost(result: Any) -> int:
    """Steps a state call is charged once it answered: like a `data` value, what it returns is
    not built by the rule (nor walked to be charged); each item counts once, as reading it."""
    return STATE_CALL_STEPS + len(result) if type(result) is list else STATE_CALL_STEPS


@dataclass(frozen=True, slots=True)
class StateFunction:
    """One state function: its implementation (the reader first) and its parameters."""

    call: Callable[..., Any]
    params: tuple[Param, ...]
    reads_tracking: bool  # reads proxies or sessions (needs the op stream tracked)


STATE_FUNCTIONS: dict[str, StateFunction] = {
    "proxies": StateFunction(_proxies, (Param.NAME,), True),
    "sessions": StateFunction(_sessions, (Param.NAME,), True),
    "rate": StateFunction(_rate, (Param.NAME, Param.COUNT, Param.PERIOD), False),
    "hits": StateFunction(_hits, (Param.NAME, Param.PERIOD), False),
}


def literal_problem(function: str, param: Param, value: Any) -> str | None:
    """Why a literal cannot be this parameter (for the compiler's load-time check), or None."""
    try:
        if param is Param.NAME:
            check_name(function, value)
        elif param is Param.COUNT:
            check_count(function, value)
        else:
            parse_period(value)
    except EvaluationError as e:  # LimitError too
        return e.message
    return None
