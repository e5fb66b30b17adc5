"""The import graph keeps the house in order: no cycle in dev8/, `actors` never imports `dev8`,
and no private name (`_x`) or private module (`pkg._x`) is used outside the module or package
that owns it.

The graph is grimp's (the library import-linter is built on); the private-name scan reads the
source with `ast`. The ALLOWED sets below are empty: an exception needs an entry with its
reason, and a stale entry fails too, so the sets only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import grimp
import pytest
from support.source import REPO, module_name

PACKAGES = ("dev8", "actors")

#: Imports that still close a cycle (importer, imported), each with its reason: with these
#: removed, dev8 has no cycle. Remove the import, then its entry.
ALLOWED_CYCLE_IMPORTS: set[tuple[str, str]] = set()

#: (module, private name or private module it reaches for) still allowed, each with its reason.
ALLOWED_PRIVATE: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # No cache: it would be written into the tree and could hide a change.
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def import_cycles(graph: grimp.ImportGraph, package: str) -> dict[frozenset[str], list[str]]:
    """Every cycle through `package`'s modules: its set of modules -> the cycle, a -> b -> a."""
    found: dict[frozenset[str], list[str]] = {}
    for module in sorted(graph.find_descendants(package) | {package}):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                found.setdefault(frozenset(chain), [module, *chain])
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_names(tree: ast.AST) -> set[str]:
    """Names a module defines: functions, classes, variables, fields and attributes it sets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.id if isinstance(node, ast.Name) else node.attr)
    return names


def private_uses(tree: ast.AST, module: str, *, is_package: bool) -> Iterator[str]:
    """Private names imported (`from m import _x`), reached through an object other than
    self/cls (`obj._x`), and private modules imported from outside their package."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            yield from (alias.name for alias in node.names if is_private(alias.name))
            yield from private_module(target, module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield from private_module(alias.name, module)
        elif (
            isinstance(node, ast.Attribute)
            and is_private(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            yield node.attr


def private_module(target: str, importer: str) -> Iterator[str]:
    """`target` if it is (inside) a private module of a package `importer` is not part of."""
    parts = target.split(".")
    for index, part in enumerate(parts):
        if is_private(part):
            owner = ".".join(parts[:index])
            if importer != owner and not importer.startswith(owner + "."):
                yield ".".join(parts[: index + 1])
            return


def cross_module_private_uses() -> set[tuple[str, str]]:
    """(module, name) for each private name a dev8 module uses that another module of dev8 or
    actors defines and it does not (os._exit or a namedtuple's _replace are not ours)."""
    trees = {
        module_name(path): (ast.parse(path.read_text()), path.name == "__init__.py")
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }
    defined = {module: defined_names(tree) for module, (tree, _) in trees.items()}
    ours = set().union(*defined.values())
    found = set()
    for module, (tree, is_package) in trees.items():
        if not module.startswith("dev8"):
            continue
        for name in private_uses(tree, module, is_package=is_package):
            if "." in name or (name in ours and name not in defined[module]):
                found.add((module, name))
    return found


def test_the_private_name_scan_sees_every_form() -> None:
    source = "\n".join(
        [
            "from .board import _record, Board",
            "from actors._lifecycle import ChildExited",
            "import dev8.api._access",
            "from ._app import create_app",  # a private module of its own package: fine
            "from os import _exit",  # not ours
            "ctx._kill()",
            "self._own()",
            "x.__dict__",
        ]
    )
    found = set(private_uses(ast.parse(source), "dev8.api.routes", is_package=False))
    assert found == {"_record", "actors._lifecycle", "_kill"}
    found = set(private_uses(ast.parse(source), "dev8.app", is_package=False))
    assert found == {"_record", "actors._lifecycle", "dev8.api._access", "_kill"}
    # A package's own private module is its business; a private name is not.
    assert set(private_uses(ast.parse("from . import _x"), "dev8.api", is_package=True)) == {"_x"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p", imported="p.a")
    assert list(import_cycles(graph, "p")) == [frozenset({"p.a", "p.b", "p.c"})]


def test_no_import_cycle_but_through_the_allowed_imports() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.find_descendants("dev8")) > 50  # the scan really covers dev8
    for importer, imported in ALLOWED_CYCLE_IMPORTS:
        graph.remove_import(importer=importer, imported=imported)
    assert [" -> ".join(chain) for chain in import_cycles(graph, "dev8").values()] == []
    assert [" -> ".join(chain) for chain in import_cycles(graph, "actors").values()] == []


def test_every_allowed_import_still_closes_a_cycle(graph: grimp.ImportGraph) -> None:
    """An allowance no longer needed leaves ALLOWED_CYCLE_IMPORTS, so the set only shrinks."""
    stale = {
        (importer, imported)
        for importer, imported in ALLOWED_CYCLE_IMPORTS
        if not graph.direct_import_exists(importer=importer, imported=imported)
        or not graph.find_shortest_chain(importer=imported, imported=importer)
    }
    assert stale == set()


def test_actors_never_imports_dev8(graph: grimp.ImportGraph) -> None:
    assert len(graph.find_descendants("actors")) >= 8
    chain = graph.find_shortest_chains(importer="actors", imported="dev8", as_packages=True)
    assert chain == set()


def test_no_private_name_crosses_a_module() -> None:
    assert cross_module_private_uses() - ALLOWED_PRIVATE == set()


def test_every_allowed_private_use_still_exists() -> None:
    assert ALLOWED_PRIVATE - cross_module_private_uses() == set()
