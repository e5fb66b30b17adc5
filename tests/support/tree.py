"""The supervision tree as /status shows it: nodes with a path and children."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Json = dict[str, Any]


def walk(node: Json) -> Iterator[Json]:
    """`node` and every node below it, depth first, parents before their children."""
    yield node
    for child in node["children"]:
        yield from walk(child)


def find_node(tree: Json, path: str) -> Json:
    """The node at `path` ("dev8/services/web") of the /status tree."""
    for node in walk(tree):
        if node["path"] == path:
            return node
    raise AssertionError(f"no node {path!r} in the status tree")
