"""The repository's own Python source, as tests that read it (layering, imports) see it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def module_name(path: Path) -> str:
    """The dotted module name of a .py file in the repository (a package for __init__.py)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
