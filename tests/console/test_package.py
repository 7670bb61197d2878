"""A non-editable install carries the console: every static file is declared package data."""

from __future__ import annotations

import glob
import re
import tomllib

from policyd.console.app import render_pages
from tests.support import ROOT

CONSOLE = ROOT / "policyd" / "console"


def test_every_static_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["policyd.console"]
    declared = {p for pattern in patterns for p in glob.glob(pattern, root_dir=CONSOLE, recursive=True)}
    present = {p.relative_to(CONSOLE).as_posix() for p in (CONSOLE / "static").rglob("*") if p.is_file()}
    assert present and present <= declared, sorted(present - declared)


def test_pages_and_scripts_refer_only_to_files_that_exist() -> None:
    for name, html in render_pages().items():
        for ref in re.findall(r'(?:src|href)="(static/[^"]+)"', html.decode()):
            assert (CONSOLE / ref).is_file(), f"{name or 'overview'}: {ref}"
    for script in (CONSOLE / "static" / "js").glob("*.js"):
        for ref in re.findall(r'from "(\.[^"]+)"', script.read_text()):
            assert (script.parent / ref).resolve().is_file(), f"{script.name}: {ref}"
