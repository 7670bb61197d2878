"""What a rule's names are: at load time (Scope) and for one request (RequestNames, Ctx).

The compiler resolves every name against a Scope; the closures and the generated code read the
request's values from a Ctx. Nothing here holds per-call state beyond one request's Ctx.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from policyd.rules import functions
from policyd.rules.sandbox import Budget
from policyd.rules.schema import Field, view
from policyd.rules.statefns import STATE_FUNCTIONS, UNAVAILABLE, StateReader


class RequestNames(dict[str, Any]):
    """The names one request's rules see, with the `content` and `user` views built on first use.

    Most rules read single fields, which compiled closures take straight from the raw request
    (`content_raw`, `user_raw`); the whole view is built only when a rule uses the object itself.
    `user_raw` is the dict the `user` view is made of, or None for a zero user.
    """

    __slots__ = ("content_raw", "content_schema", "user_raw", "user_schema", "views")

    def __init__(
        self,
        names: dict[str, Any],
        content_schema: Field,
        content_raw: dict[str, Any],
        user_schema: Field,
        user_raw: dict[str, Any] | None,
    ) -> None:
        dict.__init__(self, names)  # not super(): one lookup less on every request
        self.content_schema = content_schema
        self.user_schema = user_schema
        self.content_raw = content_raw
        self.user_raw = user_raw
        self.views: dict[Any, Any] | None = None

    def __missing__(self, key: str) -> Any:
        if key == "content":
            value = view(self.content_schema, self.content_raw)
        elif key == "user":
            value = view(self.user_schema, self.user_raw)
        else:
            raise KeyError(key)
        self[key] = value
        return value

    def replace_request(self, content_raw: dict[str, Any], user_raw: dict[str, Any] | None) -> None:
        """After a `set`: later rules see the new content (views are rebuilt when used)."""
        self.content_raw = content_raw
        self.user_raw = user_raw
        self.views = None
        self.pop("content", None)
        self.pop("user", None)

    def field_view(self, where: Any, f: Field, node: dict[str, Any]) -> Any:
        """The view of a map or object field (`content.metas`), built once per request.

        Building it copies the map, which the client sizes: a rule reading `content.metas` 200
        times would otherwise copy it 200 times, uncharged. `where` names the field's path; a
        `set` (replace_request) forgets every view.
        """
        views = self.views
        if views is None:
            views = self.views = {}
        found = views.get(where)
        if found is None:
            found = views[where] = view(f, node)
        return found


class Ctx:
    """One request's evaluation state: the names rules see and the budget they spend.

    `bound` holds the variables of the comprehensions being evaluated; `raw` is `names` when it
    is a RequestNames, which lets field reads skip building views; `state` is what the state
    functions (policyd.rules.statefns) read and count.
    """

    __slots__ = ("bound", "budget", "names", "raw", "state")

    def __init__(
        self,
        names: dict[str, Any],
        budget: Budget,
        bound: dict[str, Any] | None = None,
        state: StateReader = UNAVAILABLE,
    ) -> None:
        self.names = names
        self.budget = budget
        self.bound = {} if bound is None else bound
        self.raw = names if type(names) is RequestNames else None
        self.state = state


# A compiled expression: its value for one request.
Compiled = Callable[[Ctx], Any]

# Names every rule can use; their schema (where known) drives field validation.
BUILTIN_NAMES = ("op", "content", "user", "data", "reqid", "now")
CONSTANTS: Mapping[str, Any] = MappingProxyType({"True": True, "False": False, "None": None})


@dataclass(frozen=True)
class Scope:
    """What the compiler knows about names at one point of a rule file."""

    op_schema: Field
    user_schema: Field
    data_names: frozenset[str]
    op: str = "this op"
    lets: frozenset[str] = frozenset()
    locals: frozenset[str] = frozenset()

    def known_names(self) -> set[str]:
        return {*BUILTIN_NAMES, *CONSTANTS, *functions.FUNCTIONS, *STATE_FUNCTIONS, *self.lets, *self.locals}
