"""Hints for a function or method a rule calls that the language does not have.

A did-you-mean must name only what would be valid where the name stands: `map(lambda ...)` is
not a misspelled `max`. Python's own built-ins and methods get the language's way to do the
same thing; a near miss is suggested only when the suggestion could take the call as written.
"""

from __future__ import annotations

import ast
import builtins
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from policyd.errors import did_you_mean

_COMPREHENSION = "use a comprehension"
# Python built-ins rules do not offer, and what to write instead.
PYTHON_FUNCTIONS: Mapping[str, str] = MappingProxyType(
    {
        "map": f"{_COMPREHENSION}: [f(x) for x in xs]",
        "filter": f"{_COMPREHENSION}: [x for x in xs if ...]",
        "zip": "index both: [(a[i], b[i]) for i in range(len(a))]",
        "enumerate": "index it: [(i, xs[i]) for i in range(len(xs))]",
        "reversed": "use sorted(xs, reverse=True), or xs[::-1]",
        "tuple": "write a tuple, (a, b), or use list(...)",
        "dict": "write a dict, {key: value}, or a comprehension {k: v for k, v in ...}",
        "frozenset": "use set(...)",
        "pow": "use x ** y",
        "divmod": "use x // y and x % y",
        "format": 'use a template, "{x}", or str(x)',
        "repr": 'use str(x) or a template, "{x}"',
        "ascii": 'use str(x) or a template, "{x}"',
        "isinstance": "compare the value itself; a field of the wrong type is a load error",
        "type": "compare the value itself; a field of the wrong type is a load error",
        "getattr": 'read a field with x.name or x["name"]',
        "hasattr": 'test a key with "name" in x',
        "print": 'use a warn rule: warn "..." when ...',
    }
)
# Methods of Python values rules do not offer, and what to write instead.
PYTHON_METHODS: Mapping[str, str] = MappingProxyType(
    {
        "format": 'use a template, "{x}", or an f-string',
        "contains": "use x in s",
        "zfill": 'build it: ("00000" + str(x))[-5:]',
        "encode": "rules work on text; compare strings as they are",
        "decode": "rules work on text; compare strings as they are",
        **{
            name: "rules never change a value; build a new one, e.g. xs + [x] or sorted(xs)"
            for name in (
                "append",
                "extend",
                "insert",
                "pop",
                "remove",
                "clear",
                "sort",
                "reverse",
                "update",
                "add",
                "discard",
                "setdefault",
                "popitem",
            )
        },
    }
)


def function_hint(name: str, call: ast.Call, functions: Mapping[str, tuple[Callable[..., Any], bool]]) -> str:
    """The hint for `name(...)` when `name` is not one of the language's `functions`."""
    if name in PYTHON_FUNCTIONS:
        return f"{name}() is not in the policy language; {PYTHON_FUNCTIONS[name]}"
    if hasattr(builtins, name):
        return f"{name}() is a Python built-in the policy language does not offer"
    if any(isinstance(a, ast.Lambda) for a in (*call.args, *(k.value for k in call.keywords))):
        return "lambdas are not available in rules; use a comprehension"
    close = [f for f in functions if did_you_mean(name, [f]) and _accepts(functions[f][0], call)]
    return did_you_mean(name, close)


def method_hint(name: str, methods: frozenset[str]) -> str:
    """The hint for `.name(...)` when no receiver type of the language has that method."""
    if name in PYTHON_METHODS:
        return PYTHON_METHODS[name]
    return did_you_mean(name, methods)


def _accepts(fn: Callable[..., Any], call: ast.Call) -> bool:
    """Whether `fn` can take as many positional arguments and these keywords as `call` has."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a built-in without a signature (min, max): say yes
        return True
    try:
        signature.bind(*call.args, **{k.arg: k.value for k in call.keywords if k.arg})
    except TypeError:
        return False
    return True
