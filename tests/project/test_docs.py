"""The docs cannot rot: every fenced block marked ```` ```bash test ```` is run.

The blocks of README.md, CONTRIBUTING.md and docs/*.md run in order, each with
``bash -euo pipefail`` from the repository root with ``.venv/bin`` first in the PATH, against the
newcomer's demo: the real ``bash scripts/run-local`` (as whoever runs the tests), on free ports
that replace the documented ``127.0.0.1:9000`` (API) and ``127.0.0.1:8000`` (the demo's web
service) in the blocks' text. A block fails the test with its file, line and output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import trio
from support.dev8_harness import REPO_ROOT, fail_after, stop_process
from support.net import free_port

DOCS = [
    REPO_ROOT / "README.md",
    REPO_ROOT / "CONTRIBUTING.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
]
FENCE = re.compile(r"^```bash test\n(.*?)^```$", re.MULTILINE | re.DOTALL)
API, WEB = "127.0.0.1:9000", "127.0.0.1:8000"


@attrs.frozen
class Block:
    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(path, line, match.group(1)))
    return found


def test_every_guide_is_linked_from_the_readme_and_has_tested_commands() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    tested = {block.path.name for block in blocks()}
    for guide in ("troubleshooting.md", "operations.md", "github-copilot.md"):
        assert f"(docs/{guide})" in readme, f"README.md does not link docs/{guide}"
        assert guide in tested, f"docs/{guide} has no ```bash test block"
    assert "README.md" in tested
    assert "(CONTRIBUTING.md)" in readme


@contextlib.asynccontextmanager
async def running_demo(api_port: int, web_port: int) -> AsyncIterator[trio.Process]:
    """`bash scripts/run-local` on the given ports; stopped with SIGTERM, swept after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEV8_")}
    env["DEV8_API__BIND"] = f"127.0.0.1:{api_port}"
    web = ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(web_port)]
    env["DEV8_SERVICES__WEB__COMMAND"] = json.dumps(web)
    process = await trio.lowlevel.open_process(
        ["bash", "scripts/run-local"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = bytearray()

    async def pump() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            stderr.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                yield process
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)
                    nursery.cancel_scope.deadline = trio.current_time() + 5
    finally:
        copy = re.search(rb"from a copy in (/tmp/dev8-demo\.\w+)", stderr)
        if copy is not None:
            shutil.rmtree(copy.group(1).decode(), ignore_errors=True)


async def _stop(process: trio.Process) -> None:
    await stop_process(process, grace=30)  # run-local execs dev8: this is dev8


async def wait_healthy(process: trio.Process, api_port: int) -> None:
    """Until /health says every demo service runs (setup installs dev8 first: minutes at worst)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
        with fail_after(300, "the demo to be healthy"):
            while True:
                assert process.returncode is None, f"run-local exited {process.returncode}"
                with contextlib.suppress(httpx.TransportError):
                    health = (await http.get("/health")).json()
                    if health.get("services") == {"web": "running", "flaky": "running"}:
                        return
                await trio.sleep(0.2)


async def test_every_marked_block_runs_against_the_newcomers_demo() -> None:
    api_port, web_port = free_port(), free_port()
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEV8_")}
    env["PATH"] = f"{venv_bin}:{env.get('PATH', os.defpath)}"
    found = blocks()
    assert found
    async with running_demo(api_port, web_port) as demo:
        await wait_healthy(demo, api_port)
        for block in found:
            script = block.text.replace(API, f"127.0.0.1:{api_port}")
            script = script.replace(WEB, f"127.0.0.1:{web_port}")
            with fail_after(120, f"the block at {block}"):
                done = await trio.run_process(
                    ["bash", "-euo", "pipefail", "-c", script],
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            output = (done.stdout + done.stderr).decode(errors="replace")
            assert done.returncode == 0, f"{block} exited {done.returncode}:\n{output}"
            if block.path.name == "README.md" and "/health" in block.text:
                # The README's curl lines show healthy services.
                health, _end = json.JSONDecoder().raw_decode(done.stdout.decode())
                assert health["services"]["web"] == "running", output
