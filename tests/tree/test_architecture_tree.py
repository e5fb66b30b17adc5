"""The supervision tree drawn in docs/ARCHITECTURE.md, README.md and dev8/tree.py's docstring is
the tree dev8 builds (dev8/tree.py composes it).

dev8 runs on a config with every optional branch switched on (a secrets provider, a probed
service and one without probes) but webhooks; its /status tree is compared with the drawn one:
the supervisor's children in their order, which of them are supervisors, and one child of
`services` per service and of `health` per probed service. dev8/tree.py draws webhooks too, as a
child that exists "only with" its setting.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
import yaml
from support.dev8_harness import REPO_ROOT, open_dev8, python_service, write_config
from support.tree import Json

from dev8 import tree as composition

ARCHITECTURE = REPO_ROOT / "docs" / "ARCHITECTURE.md"

SLEEPER = "import time\ntime.sleep(1000)\n"
#: The marker line above each drawn tree that this test keeps in step.
MARK = "<!-- supervision-tree: tests/tree/test_architecture_tree.py keeps this drawing true -->"
BRANCH = re.compile(r"[├└]── (?P<name>[\w-]+|…)\s*(?P<note>.*)$")


def drawn_tree(path: Path) -> dict[str, list[tuple[str, str]]]:
    """parent name -> [(child name, its note)] of the marked drawing in `path` (root: dev8)."""
    text = path.read_text(encoding="utf-8")
    assert MARK in text, f"{path.name} has no marked supervision tree"
    return branches(text.split(MARK, 1)[1].split("```", 2)[1])


def branches(block: str) -> dict[str, list[tuple[str, str]]]:
    """parent name -> [(child name, its note)] of a drawing (root: dev8)."""
    tree: dict[str, list[tuple[str, str]]] = {}
    open_branches: list[tuple[int, str]] = []  # (column of the branch, name), outermost first
    for line in block.splitlines():
        match = BRANCH.search(line)
        if match is None:
            continue
        column = match.start()
        while open_branches and open_branches[-1][0] >= column:
            open_branches.pop()
        parent = open_branches[-1][1] if open_branches else "dev8"
        tree.setdefault(parent, []).append((match["name"], match["note"].strip()))
        open_branches.append((column, match["name"]))
    return tree


def shape(node: Json) -> dict[str, list[tuple[str, str]]]:
    """parent name -> [(child name, kind)] of the /status tree."""
    out: dict[str, list[tuple[str, str]]] = {}
    for child in node["children"]:
        out.setdefault(node["name"], []).append((child["name"], child["kind"]))
        out.update(shape(child))
    return out


def kind_in_note(note: str) -> str:
    return "supervisor" if note.startswith("supervisor") else "worker"


async def test_the_drawn_trees_are_the_tree_dev8_builds(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    store = tmp_path / "secrets"
    store.mkdir(mode=0o700)
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "probed": python_service(
                SLEEPER, marker, probes={"liveness": {"type": "process", "interval": 5.0}}
            ),
            "plain": python_service(SLEEPER, marker),
        },
        port=api_port,
    )
    data = yaml.safe_load(config.read_text())
    data["secrets"] = {"provider": "directory", "directory": str(store)}
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        # Until the whole tree has booted (the API can answer before the last actor has started);
        # bounded, and the assertions below then say what differs.
        drawn = [(name, kind_in_note(note)) for name, note in drawn_tree(ARCHITECTURE)["dev8"]]
        with trio.move_on_after(20):
            while True:
                built = shape((await dev8.status())["tree"])
                if built.get("dev8") == drawn and [
                    len(built.get(n, [])) for n in ("services", "health")
                ] == [2, 1]:
                    break
                await trio.sleep(0.05)

    assert [name for name, _ in built["services"]] == ["probed", "plain"]
    assert [name for name, _ in built["health"]] == ["probed"]
    for doc in (ARCHITECTURE, REPO_ROOT / "README.md"):
        drawn = drawn_tree(doc)
        assert [(name, kind_in_note(note)) for name, note in drawn["dev8"]] == built["dev8"], doc
        assert drawn.get("services"), f"{doc}: services draws no process actor"
    in_code = branches(composition.__doc__ or "")["dev8"]
    built_names = {name for name, _ in built["dev8"]}
    assert [(name, kind_in_note(note)) for name, note in in_code if name in built_names] == built[
        "dev8"
    ]
    assert all("only with" in note for name, note in in_code if name not in built_names)
