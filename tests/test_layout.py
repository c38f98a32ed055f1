"""The layout the design promises: which package may import which, and where modules live.

`search` uses `spaces`, `storage` and `reports`; `reports` reads studies through `storage`
(and the config schema of `spaces`) and never imports `search`; `spaces` and `storage`
import nothing of ours. Read from the source with `ast`, so a lazy import inside a function
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("search", "spaces", "storage", "reports")
ALLOWED = {
    "search": {"search", "spaces", "storage", "reports"},
    "reports": {"reports", "storage", "spaces"},
    "spaces": {"spaces"},
    "storage": {"storage"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


@pytest.mark.parametrize("package", OURS)
def test_each_package_imports_only_what_the_design_allows(package: str) -> None:
    wrong = {str(path.relative_to(ROOT)): sorted(_imported_packages(path) - ALLOWED[package])
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_search_root_holds_only_sub_packages() -> None:
    modules = sorted(path.name for path in (ROOT / "search").glob("*.py"))
    assert modules == ["__init__.py"]
    packages = sorted(path.name for path in (ROOT / "search").iterdir()
                      if path.is_dir() and (path / "__init__.py").is_file())
    assert packages == ["cli", "results", "study", "trial"]


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.") \
                    and node.module.rsplit(".", 1)[-1].startswith("test_"):
                offenders[str(path.relative_to(ROOT))] = node.module
    assert offenders == {}


def test_every_package_is_installed() -> None:
    """A sub-package missing from pyproject.toml's list works in a checkout and fails once pip-installed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for package in OURS
             for path in (ROOT / package).rglob("__init__.py")}
    assert found <= listed
