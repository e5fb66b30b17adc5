"""The lock files the images install from agree with what they lock, and carry hashes.

pip installs the images' Python packages with --require-hashes from the requirements locks
(uv pip compile --generate-hashes), npm installs their tools with `npm ci` from package-lock.json.
A dependency added to, removed from or re-bounded in pyproject.toml (or requirements.in,
package.json) without regenerating its lock fails here, before any image is built.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import attrs
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@attrs.frozen
class Pin:
    version: str
    hashes: int
    via: frozenset[str]


def parse_lock(path: Path) -> dict[str, Pin]:
    """name -> pin, from a `uv pip compile --generate-hashes` (or pip-compile) output."""
    pins: dict[str, Pin] = {}
    name: str | None = None
    version, hashes, via = "", 0, set[str]()

    def close() -> None:
        if name is not None:
            pins[name] = Pin(version, hashes, frozenset(via))

    for line in path.read_text().splitlines():
        pin = _PIN.match(line)
        if pin:
            close()
            name, version, hashes, via = canonicalize_name(pin["name"]), pin["version"], 0, set()
            continue
        hashes += len(_HASH.findall(line))
        comment = line.strip().removeprefix("#").strip()
        if line.startswith("    #") and comment not in ("", "via"):
            via.add(comment.removeprefix("via").strip())
    close()
    return pins


def check_lock(lock: Path, requirements: list[str], source: str) -> None:
    """Every requirement pinned within its bounds and hashed; nothing locked for a dropped one."""
    pins = parse_lock(lock)
    assert pins, f"{lock} pins nothing"
    problems = []
    wanted = {}
    for text in requirements:
        req = Requirement(text)
        wanted[canonicalize_name(req.name)] = req
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is required by {source} but not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} in the lock is outside {req.specifier}")
    for name, pin in pins.items():
        if pin.hashes == 0:
            problems.append(f"{name}=={pin.version} has no --hash")
        direct = any(source in via for via in pin.via)
        if direct and name not in wanted:
            problems.append(f"{name} is locked for {source}, which no longer requires it")
        parents = {canonicalize_name(via.split()[0]) for via in pin.via if source not in via}
        if not direct and not parents & set(pins):
            problems.append(f"{name} is locked, and nothing in the lock requires it")
    assert not problems, f"{lock.name} disagrees with {source}: " + "; ".join(problems)


def test_dev8s_lock_agrees_with_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    check_lock(REPO / "requirements.lock", project["project"]["dependencies"], "pyproject.toml")


def test_the_build_backends_lock_agrees_with_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    lock = REPO / "containers" / "base" / "build-requirements.lock"
    requires = project["build-system"]["requires"]
    listed = (REPO / "containers" / "base" / "build-requirements.in").read_text().split("\n")
    assert sorted(requires) == sorted(
        line for line in listed if line and not line.startswith("#")
    ), "build-requirements.in must list pyproject.toml's [build-system] requires"
    check_lock(lock, requires, "build-requirements.in")


def test_the_python_images_tool_lock_agrees_with_its_requirements() -> None:
    directory = REPO / "containers" / "python"
    listed = [
        line.strip()
        for line in (directory / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {canonicalize_name(Requirement(r).name) for r in listed} >= {
        "flake8", "ipython", "jupyter", "pipenv"
    }  # fmt: skip
    check_lock(directory / "requirements.lock", listed, "requirements.in")


@pytest.mark.parametrize("directory", ["containers/nodejs/tools", "tests/vsce"])
def test_npm_locks_agree_with_their_package_json(directory: str) -> None:
    package = json.loads((REPO / directory / "package.json").read_text())
    lock = json.loads((REPO / directory / "package-lock.json").read_text())
    assert lock["lockfileVersion"] >= 2
    assert lock["packages"][""]["dependencies"] == package["dependencies"], (
        f"{directory}/package-lock.json is not package.json's: run npm install --package-lock-only"
    )
    for name, wanted in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", wanted), f"{name}: pin an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == wanted
    for path, entry in lock["packages"].items():
        if path and not entry.get("link"):
            assert entry.get("integrity", "").startswith("sha512-"), f"{path} has no integrity"


def test_a_lock_that_disagrees_is_caught(tmp_path: Path) -> None:
    """The check itself: a raised bound, a new dependency and a dropped one all fail."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "attrs==26.1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via dev8 (pyproject.toml)\n"
        "trio==0.31.0 \\\n    --hash=sha256:" + "b" * 64 + "\n    # via dev8 (pyproject.toml)\n"
    )
    check_lock(lock, ["attrs>=24", "trio>=0.31"], "pyproject.toml")
    with pytest.raises(AssertionError, match=r"trio==0\.31\.0 in the lock is outside >=0\.32"):
        check_lock(lock, ["attrs>=24", "trio>=0.32"], "pyproject.toml")
    with pytest.raises(AssertionError, match=r"httpx is required by pyproject\.toml but not in"):
        check_lock(lock, ["attrs>=24", "trio>=0.31", "httpx"], "pyproject.toml")
    with pytest.raises(
        AssertionError, match=r"trio is locked for pyproject\.toml, which no longer"
    ):
        check_lock(lock, ["attrs>=24"], "pyproject.toml")
