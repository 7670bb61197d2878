"""The reference tables of docs/, generated from the code: settings, metrics, fields, frps versions.

    python -m policyd.service.docgen [--check] [ROOT]

rewrites each table between its markers in docs/configuration.md, docs/operations.md,
docs/fields.md and docs/frps-versions.md (ROOT: the repository, default the current directory);
`--check` changes nothing and exits 1 when a page differs from what the code says.
tests/test_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from policyd.service.metrics import METRICS
from policyd.service.settings import DEFAULTS, FIELDS, env_name, flag_name
from policyd.tools.fields import field_rows, render_markdown, render_versions_markdown, version_rows

BEGIN = "<!-- generated: {name} (python -m policyd.service.docgen); edit the code, not this table -->"
END = "<!-- end of generated: {name} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(name: str) -> str:
    value = DEFAULTS.to_dict()[name]
    if value in (None, [], {}, ""):
        return "(none)"
    if isinstance(value, list):
        value = ",".join(value)
    return f"`{value}`"


def settings_table() -> str:
    """One row per Settings field: its TOML key, flag, variable, default and help."""
    rows = [
        "| setting | flag | environment variable | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, f in FIELDS.items():
        meaning = f.metadata["help"]
        if f.metadata["choices"]:
            meaning += f" One of {', '.join(f'`{c}`' for c in f.metadata['choices'])}."
        rows.append(
            f"| `{name}` | `{flag_name(name)}` | `{env_name(name)}` | {_default(name)} | {_cell(meaning)} |"
        )
    return "\n".join(rows)


def metrics_table() -> str:
    """One row per metric of the registry: exported name, type, labels and meaning."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        meaning = spec.help if not spec.notes else f"{spec.help} {spec.notes[0].upper()}{spec.notes[1:]}."
        rows.append(f"| `{spec.exported}` | {spec.kind} | {labels} | {_cell(meaning)} |")
    return "\n".join(rows)


def fields_table() -> str:
    """Per op, every field of the schema: what `policyd fields --format markdown` prints."""
    return render_markdown(field_rows()).rstrip("\n")


def frps_versions_table() -> str:
    """Which frps release changed what for plugins: `policyd fields --versions --format markdown`."""
    return render_versions_markdown(version_rows()).rstrip("\n")


# page → {table name: generator}
TABLES: Mapping[str, Mapping[str, Callable[[], str]]] = MappingProxyType(
    {
        "docs/configuration.md": {"settings": settings_table},
        "docs/operations.md": {"metrics": metrics_table},
        "docs/fields.md": {"fields": fields_table},
        "docs/frps-versions.md": {"frps versions": frps_versions_table},
    }
)


def regenerate(text: str, tables: Mapping[str, Callable[[], str]]) -> str:
    """`text` with every generated table replaced by what the code generates now."""
    for name, generate in tables.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        start = text.index(begin) + len(begin)
        stop = text.index(end, start)
        text = f"{text[:start]}\n{generate()}\n{text[stop:]}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policyd.service.docgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    parser.add_argument("root", nargs="?", type=Path, default=Path("."), help="the repository")
    args = parser.parse_args(argv)
    stale = []
    for page, tables in TABLES.items():
        path = args.root / page
        text = path.read_text(encoding="utf-8")
        updated = regenerate(text, tables)
        if updated != text:
            stale.append(page)
            if not args.check:
                path.write_text(updated, encoding="utf-8")
    for page in stale:
        print(f"{page}: {'stale' if args.check else 'regenerated'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
