"""One virtual environment per tool, created by the harness and reused while still valid.

A venv is rebuilt only when what it was built from changed (a marker file records it), so the
smoke test pays the pip installs once per machine. dev8 is installed from a snapshot of the commit
being measured (``git archive HEAD``), not from the working tree others may be editing, unless
``--dev8-source worktree`` is asked for.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PEERS = {
    "supervisord": ["supervisor==4.3.0"],
    "circus": ["circus==0.19.0"],
    "report": ["matplotlib>=3.8", "py-spy>=0.3"],
}
_PIP_TIMEOUT = 900


@dataclass(frozen=True)
class Env:
    name: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def version_of(self, distribution: str) -> str:
        out = subprocess.run(
            [
                str(self.python),
                "-c",
                f"import importlib.metadata as m; print(m.version({distribution!r}))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip()


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _pip(env: Env, *args: str) -> None:
    done = subprocess.run(
        [str(env.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        timeout=_PIP_TIMEOUT,
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _marker(env: Env) -> dict[str, str]:
    try:
        data = json.loads((env.root / ".bench-marker.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(env: Env, data: dict[str, str]) -> None:
    (env.root / ".bench-marker.json").write_text(json.dumps(data, indent=1))


def _fresh(env: Env) -> None:
    shutil.rmtree(env.root, ignore_errors=True)
    env.root.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(env.root)], check=True, timeout=300)


def ensure_peer(root: Path, name: str) -> Env:
    env = Env(name, root / name)
    wanted = {"python": sys.version, "requirements": " ".join(PEERS[name])}
    if _marker(env) != wanted or not env.python.exists():
        _log(f"creating the {name} venv ({' '.join(PEERS[name])})")
        _fresh(env)
        _pip(env, *PEERS[name])
        _write_marker(env, wanted)
    return env


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(path.parent)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def dev8_source(repo: Path, scratch: Path, mode: str) -> tuple[Path, str]:
    """The tree to install dev8 from, and its identity (a commit, or a hash of the tree)."""
    if mode == "head":
        commit = git(repo, "rev-parse", "HEAD")
        tree = scratch / "dev8-src"
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "HEAD"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        subprocess.run(
            ["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=120
        )
        return tree, commit
    return repo, "worktree-" + _digest([repo / "pyproject.toml", repo / "dev8", repo / "actors"])


def ensure_dev8(root: Path, source: Path, identity: str) -> Env:
    env = Env("dev8", root / "dev8")
    deps = _digest([source / "pyproject.toml"])
    marker = _marker(env)
    if marker.get("python") != sys.version or marker.get("deps") != deps or not env.python.exists():
        _log("creating the dev8 venv (dev8 and its dependencies)")
        _fresh(env)
        _pip(env, str(source))
        marker = {"python": sys.version, "deps": deps, "dev8": identity}
        _write_marker(env, marker)
    if marker.get("dev8") != identity:
        _log(f"installing dev8 {identity[:12]} into its venv")
        _pip(env, "--no-deps", "--force-reinstall", str(source))
        _write_marker(env, {**marker, "dev8": identity})
    return env


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()
