"""Which request fields a rule reads, found once at load time from its expressions.

The decision log shows the fields the deciding rule read, with their values, so that a line
answers "why" without the rule's author having put every value in the reason. Finding them on
the request path would cost every decision; here each expression is walked once: a chain of
attributes and constant keys from `content` or `user` (`content.remote_port`,
`user.metas["team"]`) is a read as far as the op's schema names fields, and a `let` used stands
for the fields its own value read (resolved in file order by `resolve_lets`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policyd.rules.context import Scope
from policyd.rules.schema import Field, Kind
from policyd.rules.secrets import is_secret_path

# The names whose fields are request fields, and where `user`'s fields are in Login's content.
_ROOTS = ("content", "user")
_LOGIN_USER = {"user": "user", "metas": "metas", "run_id": "run_id"}


@dataclass(frozen=True, slots=True, order=True)
class FieldRead:
    """One request field a rule reads: as written (`user.metas.team`) and where it is in the
    request's content (`("user", "metas", "team")`; `("metas", "team")` in Login)."""

    name: str
    path: tuple[str, ...]
    kind: Kind
    secret: bool


@dataclass(frozen=True, slots=True)
class Reads:
    """What an expression reads: request fields, and the lets whose values it uses."""

    fields: frozenset[FieldRead] = frozenset()
    lets: frozenset[str] = frozenset()

    def resolved(self, let_fields: Mapping[str, frozenset[FieldRead]]) -> frozenset[FieldRead]:
        """The request fields read, those of the lets used included."""
        out = set(self.fields)
        for name in self.lets:
            out |= let_fields.get(name, frozenset())
        return frozenset(out)


NO_READS = Reads()


def union(reads: Iterable[Reads]) -> Reads:
    fields: set[FieldRead] = set()
    lets: set[str] = set()
    for r in reads:
        fields |= r.fields
        lets |= r.lets
    return Reads(frozenset(fields), frozenset(lets))


def reads_of(tree: ast.expr, scope: Scope) -> Reads:
    """The request fields and lets `tree` reads (the whole `content` or `user` is not a field)."""
    finder = _Finder(scope)
    finder.visit(tree)
    return Reads(frozenset(finder.fields), frozenset(finder.lets))


class _Finder(ast.NodeVisitor):
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.login = scope.op == "Login"
        self.fields: set[FieldRead] = set()
        self.lets: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.scope.lets:
            self.lets.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._chain(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._chain(node)

    def _chain(self, node: ast.expr) -> None:
        keys: list[str] = []
        inner: ast.expr = node
        others: list[ast.AST] = []
        while True:
            if isinstance(inner, ast.Attribute):
                keys.append(inner.attr)
                inner = inner.value
            elif isinstance(inner, ast.Subscript):
                key = inner.slice
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    keys.append(key.value)
                else:
                    keys.clear()  # only the constant keys after a computed one are a field
                    others.append(key)
                inner = inner.value
            else:
                break
        if isinstance(inner, ast.Name) and inner.id in _ROOTS and keys:
            self._read(inner.id, keys[::-1])
        else:
            self.visit(inner)
        for other in others:
            self.visit(other)

    def _read(self, root: str, keys: list[str]) -> None:
        f: Field = self.scope.op_schema if root == "content" else self.scope.user_schema
        path: list[str] = []
        for key in keys:
            if f.kind is Kind.RECORD and key in f.fields:
                f = f.fields[key]
            elif f.kind is Kind.STR_MAP:
                f = Field(Kind.STR)
            else:
                break  # a method (`.startswith`) or a field outside the schema: stop here
            path.append(key)
        if not path:
            return
        name = ".".join((root, *path))
        where = tuple(path)
        if root == "user":
            where = (_LOGIN_USER[path[0]], *path[1:]) if self.login else ("user", *path)
        self.fields.add(FieldRead(name, where, f.kind, is_secret_path(name)))
