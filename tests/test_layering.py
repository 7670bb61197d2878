"""Imports flow one way: cli → service → console → tools → engine/policy/protocol → rules/state → errors.

Every module of the package is read with `ast` (nothing is imported). A module may import its
own unit (package or front-door module) and any unit strictly below it; imports under
`if TYPE_CHECKING:` do not count. An upward or sideways import fails the test, naming the
module, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "policyd"

# Units from the top layer down; a unit is a package or a module (its name as imported).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cli", ("policyd.cli", "policyd.__main__")),
    ("service", ("policyd.service",)),
    ("console", ("policyd.console",)),
    ("tools", ("policyd.tools",)),
    # frpsdecoder: the other side of the wire format, how frps reads protocol's answers.
    ("front door", ("policyd.engine", "policyd.policy", "policyd.protocol", "policyd.frpsdecoder")),
    ("rules and state", ("policyd.rules", "policyd.state")),
    ("errors", ("policyd.errors", "policyd")),  # `policyd` itself: __version__
)
# Imports between units of one layer that the layout allows (importer, imported).
SIDEWAYS = frozenset(
    {
        ("policyd.engine", "policyd.policy"),  # decide() runs a loaded Policy
        ("policyd.cli", "policyd.__main__"),
        ("policyd.__main__", "policyd.cli"),  # `python -m policyd` is the CLI
    }
)
RULE = (
    "a module may import its own unit and units of lower layers only "
    "(cli → service → console → tools → engine/policy/protocol → rules/state → errors)"
)


def unit_of(module: str) -> str | None:
    """The unit a module belongs to: the longest unit name that is the module or a parent of it."""
    units = [u for _, layer in LAYERS for u in layer]
    found = [u for u in units if module == u or module.startswith(u + ".")]
    return max(found, key=len) if found else None


def rank(unit: str) -> int:
    """0 for the bottom layer; higher layers import lower ones."""
    for index, (_, units) in enumerate(reversed(LAYERS)):
        if unit in units:
            return index
    raise KeyError(unit)


def layer_name(unit: str) -> str:
    return next(name for name, units in LAYERS if unit in units)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import that runs, lazy ones in functions included."""
    package = module if is_package else module.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from (item for sub in child.orelse for item in walk_one(sub))
                continue
            yield from walk_one(child)

    def walk_one(node: ast.AST) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from policyd.rules import sandbox` imports the module policyd.rules.sandbox.
                name = f"{base}.{alias.name}"
                yield node.lineno, name if is_module(name) else base
        else:
            yield from walk(node)

    yield from walk(ast.parse(source))


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What is wrong with one module's imports, as messages; empty when they all flow down."""
    own = unit_of(module)
    assert own is not None, f"{module} is in no layer: add its unit to LAYERS"
    out = []
    for line, target in imports(source, module, is_package):
        if target != "policyd" and not target.startswith("policyd."):
            continue
        other = unit_of(target)
        if other is None:
            out.append(f"{module}:{line}: imports {target}, which is in no layer")
        elif other != own and (own, other) not in SIDEWAYS and rank(other) >= rank(own):
            out.append(
                f"{module}:{line}: imports {target} ({layer_name(other)}) from {layer_name(own)}: {RULE}"
            )
    return out


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: module_name(p))
def test_imports_flow_down(path: Path) -> None:
    module = module_name(path)
    assert violations(path.read_text(), module, path.name == "__init__.py") == []


def test_every_module_is_in_a_layer() -> None:
    assert [module_name(p) for p in package_modules() if unit_of(module_name(p)) is None] == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("policyd.rules.schema", "from policyd.engine import decide\n", "policyd.engine (front door)"),
        ("policyd.protocol", "from policyd.engine import Decision\n", "policyd.engine (front door)"),
        ("policyd.tools.test", "def f():\n    from policyd.service import app\n", "policyd.service.app"),
        ("policyd.rules.language", "from . import compiler\nfrom ..errors import Location\n", None),
        ("policyd.errors", "from policyd import rules\n", "policyd.rules (rules and state)"),
    ],
)
def test_the_check_sees_upward_imports(module: str, source: str, expected: str | None) -> None:
    found = violations(source, module)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0] and RULE in found[0], found


def test_type_checking_imports_do_not_count() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from policyd.service.store import S\n"
    assert violations(source, "policyd.service.metrics") == []
    assert violations(source, "policyd.rules.decision") == []


# Inside rules/: the parser stops at tokens and the AST (simpleeval's split of parsing and
# evaluation), and the leaf that describes decisions imports nothing of the language.
LEAVES = {
    "policyd.rules.language": {"policyd.errors", "policyd.rules.sandbox"},
    "policyd.rules.decision": {"policyd.errors"},
}


@pytest.mark.parametrize("module", sorted(LEAVES))
def test_leaf_modules_import_only_what_they_may(module: str) -> None:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    found = {target for _, target in imports(path.read_text(), module, False) if target.startswith("policyd")}
    assert found <= LEAVES[module], f"{module} imports {sorted(found - LEAVES[module])}"


# The language's modules are cut along their seams (issue 19 §3): one that grows past this is
# doing two jobs. "About 600 lines", with room for a docstring's growth.
MAX_RULES_MODULE_LINES = 650


@pytest.mark.parametrize("path", sorted((PACKAGE / "rules").rglob("*.py")), ids=lambda p: p.name)
def test_rules_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_RULES_MODULE_LINES, (
        f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_RULES_MODULE_LINES}); split it along a seam"
    )
