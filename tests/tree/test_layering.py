"""Dependencies point one way: ``dev8`` uses ``actors``, never the reverse, and only the
composition (``dev8/app.py``, ``dev8/cli.py``) imports ``dev8.api``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from support.source import REPO, module_name

#: The modules allowed to import the API: they compose the program.
API_IMPORTERS = {"dev8/app.py", "dev8/cli.py"}


def imported_modules(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module ``source`` imports, relative imports resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # `from dev8 import api` imports dev8.api
                yield f"{target}.{alias.name}"


def imports_of(path: Path) -> set[str]:
    return set(
        imported_modules(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    )


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_the_import_scanner_sees_every_form() -> None:
    src = "\n".join(
        [
            "import dev8.config",
            "from dev8 import api",
            "from ..api import routes",
            "from . import api",
            "def f():",
            "    import dev8.api.server",
        ]
    )
    found = set(imported_modules(src, "dev8.health.probe"))
    assert {"dev8.config", "dev8.api", "dev8.api.routes", "dev8.health.api"} <= found
    assert "dev8.api.server" in found
    assert set(imported_modules("from .x import y", "dev8", is_package=True)) >= {"dev8.x"}
    assert not any(within(name, "dev8") for name in imported_modules("import dev8x", "a.b"))


def test_actors_imports_nothing_of_dev8() -> None:
    files = python_files("actors")
    assert len(files) >= 8  # the scan really covers the library
    offenders = {
        str(path.relative_to(REPO)): sorted(n for n in imports_of(path) if within(n, "dev8"))
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_composition_imports_the_api() -> None:
    # Before dev8/api exists this still holds: nothing may reach for it.
    offenders = {}
    for path in python_files("dev8"):
        rel = path.relative_to(REPO).as_posix()
        if rel in API_IMPORTERS or rel.startswith("dev8/api/"):
            continue
        bad = sorted(name for name in imports_of(path) if within(name, "dev8.api"))
        if bad:
            offenders[rel] = bad
    assert offenders == {}


def test_dev8_run_starts_without_the_imports_it_needs_only_later() -> None:
    """Start-up time is mostly imports: these load on first use (a websocket, an HTTP probe, a
    scrape, a Key Vault fetch, an operator command, the first request Quart serves, a secrets
    provider being configured), never before the API answers."""
    import subprocess
    import sys

    later = [
        "wsproto",
        "httpx",
        "prometheus_client",
        "trio_websocket",
        "azure",
        "importlib.metadata",
        "dev8.client",
        "quart",
        "dev8.api._app",
        "dev8.secrets.rotator",
        "dev8.secrets.injector",
        "dev8.secrets.providers",
        "dotenv",
    ]
    code = (
        "import sys, dev8.cli, dev8.app, dev8.api\n"
        "from dev8.config import load_config\n"
        "load_config(sys.argv[1])\n"
        f"print([m for m in {later!r} if m in sys.modules])"
    )
    local = REPO / "examples" / "local.yaml"  # no secrets provider
    result = subprocess.run(
        [sys.executable, "-c", code, str(local)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert result.stdout.strip() == "[]"
