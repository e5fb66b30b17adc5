"""The platform's agent is written in Go: a real Go client (tests/go) against a real `dev8 run`.

It decodes every answer into strict typed structs (unknown keys and missing keys both fail),
restarts a service with the token, follows /events with gorilla/websocket, loses its connection
and resumes with since= without a gap or a duplicate, then notices by bootId that dev8 was
restarted under it. Go 1.19 and gorilla/websocket come from Debian (scripts/setup), GOPATH mode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from support.dev8_harness import NO_BACKOFF, fail_after, open_dev8, shell_service, write_config

from dev8.event_catalog import event_classes

GO_SOURCES = Path(__file__).resolve().parents[1] / "go"
GOPATH_SYSTEM = "/usr/share/gocode"
SLEEPER = "echo up; exec sleep 1000"
TOKEN = "go-agent-token-0123456789abcdef"


@pytest.fixture(scope="session")
def go_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent built from source, offline, in GOPATH mode."""
    go = shutil.which("go")
    assert go is not None, "Go is installed by scripts/setup (apt: golang-go)"
    assert Path(GOPATH_SYSTEM, "src/github.com/gorilla/websocket").is_dir(), (
        "apt: golang-github-gorilla-websocket-dev"
    )
    out = tmp_path_factory.mktemp("go")
    binary = out / "dev8agent"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{GO_SOURCES}:{GOPATH_SYSTEM}",
        "GOCACHE": str(out / "cache"),
        "GOFLAGS": "-mod=",
        "GOPROXY": "off",
    }
    subprocess.run([go, "vet", "dev8agent"], env=env, check=True, timeout=300)
    unformatted = subprocess.run(
        ["gofmt", "-l", str(GO_SOURCES)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert not unformatted, f"gofmt would change: {unformatted}"
    subprocess.run([go, "build", "-o", str(binary), "dev8agent"], env=env, check=True, timeout=300)
    return binary


def config(tmp_path: Path, port: int, marker: str) -> Path:
    path = write_config(
        tmp_path / "dev8.yaml",
        {"web": shell_service(SLEEPER, marker, backoff=dict(NO_BACKOFF))},
        port=port,
    )
    data = yaml.safe_load(path.read_text())
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    data["api"]["token_file"] = str(token_file)
    path.write_text(yaml.safe_dump(data))
    return path


class Agent:
    """The Go process and its progress lines."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._buffer = b""

    async def next_line(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        entry: dict[str, Any] = json.loads(line)
        self.lines.append(entry)
        return entry

    async def wait_step(self, step: str) -> dict[str, Any]:
        while True:
            entry = await self.next_line()
            assert entry is not None, f"the agent ended before {step!r}: {self.lines}"
            assert "fail" not in entry, f"the agent failed: {entry['fail']}\n{self.lines}"
            if entry.get("step") == step:
                return entry

    def step(self, name: str) -> dict[str, Any]:
        return next(line for line in self.lines if line.get("step") == name)


def agent_command(binary: Path, port: int, tmp_path: Path, *extra: str) -> list[str]:
    return [
        str(binary),
        "-url",
        f"http://127.0.0.1:{port}",
        "-token-file",
        str(tmp_path / "token"),
        "-service",
        "web",
        "-restart-timeout",
        "60s",
        "-lag",
        "120s",
        *extra,
    ]


@pytest.mark.slow
async def test_the_go_agent_decodes_everything_strictly_and_follows_events_across_a_restart(
    go_agent: Path, api_port: int, tmp_path: Path, marker: str
) -> None:
    command = agent_command(go_agent, api_port, tmp_path)
    path = config(tmp_path, api_port, marker)
    async with open_dev8(path, port=api_port, marker=marker) as first:
        first.http.headers["Authorization"] = f"Bearer {TOKEN}"
        first_boot = (await first.status())["bootId"]
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        agent = Agent(process)
        try:
            with fail_after(180, "the agent to follow, drop, lag and resume", first.tail):
                await agent.wait_step("waiting_for_restart")
        except BaseException:
            process.kill()
            await process.wait()
            raise
    # dev8 is gone (SIGTERM, reaped); the same config on the same port is a new boot.
    try:
        async with open_dev8(path, port=api_port, marker=marker) as second:
            second.http.headers["Authorization"] = f"Bearer {TOKEN}"
            second_boot = (await second.status())["bootId"]
            with fail_after(60, "the agent to notice the restart", second.tail):
                await agent.wait_step("done")
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    assert code == 0, agent.lines

    assert first_boot != second_boot
    assert agent.step("livez")["bootId"] == first_boot
    # It decodes exactly the kinds of event /openapi.json documents, and resync.
    assert agent.step("openapi")["eventKinds"] == len(event_classes()) + 1
    assert agent.step("status")["secretsNull"] is True  # no provider: present, and null
    assert agent.step("status")["probesNull"] is True
    assert agent.step("errors") == {
        "step": "errors",
        "notFound": "unknown_service",
        "badRequest": "bad_request",
        "unauthorized": "unauthorized",
    }
    assert agent.step("restarted")["state"] == "running"
    kinds = agent.step("events")["kinds"]
    assert {"child_stopping", "child_exited", "child_started", "restart_scheduled"} <= set(kinds)
    dropped, resumed = agent.step("dropped"), agent.step("resumed")
    assert resumed["last"] > dropped["last"]  # what happened while away came, without a gap
    # Not reading while the service restarts over and over: dev8 cut it off (4001) with the
    # resume point in the close reason (checked against what it had read), and it caught up.
    assert agent.step("caught_up")["cutOff"] is True, agent.step("flooded")
    assert agent.step("cut_off")["resumeFrom"] == agent.step("cut_off")["last"]
    noticed = agent.step("restart_noticed")
    assert (noticed["oldBootId"], noticed["newBootId"]) == (first_boot, second_boot)
    # It came back with the old boot's resume point: dev8 answered a resync (its /status).
    assert noticed["resync"] is True
    assert agent.step("done")["events"] >= resumed["events"]
