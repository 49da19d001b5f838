"""Packaging guards: a subpackage missing from pyproject breaks `pip install .` but not `-e .`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed_in_pyproject():
    table = _setuptools_table()
    listed = set(table["packages"])
    dirs = table["package-dir"]
    found = set()
    for name, folder in dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join((name, *rel.parts)))
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_shipped_data_files_match_package_data_globs():
    table = _setuptools_table()
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    data_root = ROOT / "vwarper_hooks"
    shipped = {p for g in globs["vwarper_hooks"] for p in data_root.glob(g)}
    on_disk = {p for p in (data_root / "data").rglob("*") if p.is_file()}
    assert on_disk and on_disk <= shipped, f"not covered by package-data: {sorted(on_disk - shipped)}"
    assert "vwarper_hooks" in table["packages"]
