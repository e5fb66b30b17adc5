"""Every test module has its kinds (unit, e2e, root, system), and every entry names a real test."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from support.kinds import KINDS, MODULES, TESTS, UNIT

TESTS_DIR = Path(__file__).resolve().parents[1]


def defined_tests(module: str) -> set[str]:
    """The test functions and Test classes defined at the top of a test module."""
    tree = ast.parse(next(TESTS_DIR.rglob(f"{module}.py")).read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        node.name
        for node in tree.body
        if isinstance(node, kinds) and node.name.lower().startswith("test")
    }


def test_every_test_module_is_classified_and_every_entry_exists() -> None:
    on_disk = {path.stem for path in TESTS_DIR.rglob("test_*.py")}
    assert sorted(on_disk - MODULES.keys()) == [], "add these modules to tests/support/kinds.py"
    assert sorted(MODULES.keys() - on_disk) == [], "these modules in kinds.py no longer exist"
    assert sorted(TESTS.keys() - MODULES.keys()) == []


def test_every_per_test_entry_names_a_test_of_its_module() -> None:
    missing = [
        f"{module}::{name}"
        for module, by_kinds in TESTS.items()
        for names in by_kinds.values()
        for name in names
        if name not in defined_tests(module)
    ]
    assert missing == []


def test_unit_is_never_combined_and_only_known_kinds_are_used() -> None:
    for kinds in [*MODULES.values(), *(k for by in TESTS.values() for k in by)]:
        assert kinds, "a module or test with no kind"
        assert kinds <= KINDS.keys()
        assert UNIT not in kinds or kinds == {UNIT}


def test_the_kinds_are_registered_with_pytest() -> None:
    pyproject = tomllib.loads((TESTS_DIR.parent / "pyproject.toml").read_text(encoding="utf-8"))
    options = pyproject["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0] for line in options["markers"]}
    assert KINDS.keys() <= registered
    assert "--strict-markers" in options["addopts"]
