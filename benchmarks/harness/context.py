"""What every scenario needs: the tools, the child program, scratch space, and the counts."""

from __future__ import annotations

import contextlib
import itertools
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import procs
from .envs import Env
from .tools import TOOLS, Program, Tool, free_port


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Counts:
    """How much each scenario does; ``--quick`` shrinks all of it."""

    kills_fastest: int = 30
    kills_defaults: int = 10
    settle_defaults: float = 10.5
    many: tuple[int, ...] = (200, 1000)
    many_rounds: int = 2
    many_idle: float = 30.0
    many_window: float = 5.0
    idle: float = 60.0
    idle_window: float = 10.0
    status_calls: int = 1000
    status_rounds: int = 3
    load_concurrency: tuple[int, ...] = (1, 4, 16, 64)
    load_duration: float = 5.0
    fixed_rates: tuple[int, ...] = (100, 500, 1000)
    startup_rounds: int = 10
    shutdown_rounds: int = 3
    subscribers: int = 1000
    #: The second fan-out run: a few subscribers (the issue's "under 20 ms to 10").
    few_subscribers: int = 10
    slow_subscribers: int = 10
    fanout_services: int = 20
    bursts: int = 3
    secrets_cold: int = 5
    secrets_warm: int = 20

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            kills_fastest=2,
            kills_defaults=1,
            settle_defaults=0.2,
            many=(5,),
            many_rounds=1,
            many_idle=1.0,
            many_window=0.5,
            idle=1.0,
            idle_window=0.5,
            status_calls=50,
            status_rounds=1,
            load_concurrency=(1, 4),
            load_duration=1.0,
            fixed_rates=(100,),
            startup_rounds=1,
            shutdown_rounds=1,
            subscribers=10,
            few_subscribers=3,
            slow_subscribers=1,
            fanout_services=3,
            bursts=2,
            secrets_cold=1,
            secrets_warm=2,
        )


@dataclass
class Running:
    tool: Tool
    process: subprocess.Popen[bytes]
    port: int
    starts: Path
    launched_ns: int
    run_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Ctx:
    tools: dict[str, Tool]
    envs: dict[str, Env]
    child: list[str]
    work: Path
    repo: Path
    counts: Counts
    quick: bool
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def order(self, round_index: int) -> list[str]:
        """The tools rotated by round, so none is always first."""
        shift = round_index % len(TOOLS)
        return list(TOOLS[shift:] + TOOLS[:shift])

    def run_dir(self, label: str) -> Path:
        path = self.work / f"{next(self._serial):04d}-{label}"
        path.mkdir(parents=True)
        return path

    def programs(
        self,
        count: int,
        starts: Path,
        *,
        ignore_term: bool = False,
        stop_timeout: float | None = None,
    ) -> list[Program]:
        extra = ["--ignore-term"] if ignore_term else []
        return [
            Program(f"p{i:04d}", [*self.child, str(starts), *extra], stop_timeout=stop_timeout)
            for i in range(count)
        ]

    @contextlib.contextmanager
    def start(
        self,
        tool_name: str,
        count: int,
        *,
        variant: str = "defaults",
        ignore_term: bool = False,
        stop_timeout: float | None = None,
        label: str = "",
    ) -> Iterator[Running]:
        tool = self.tools[tool_name]
        run_dir = self.run_dir(f"{label}-{tool_name}")
        starts = run_dir / "starts.txt"
        programs = self.programs(count, starts, ignore_term=ignore_term, stop_timeout=stop_timeout)
        port = free_port()
        argv = tool.argv(run_dir, programs, variant=variant, port=port)
        launched = time.time_ns()
        with procs.running(argv, log=run_dir / "supervisor.log") as process:
            yield Running(tool, process, port, starts, launched, run_dir)


def read_starts(path: Path) -> list[tuple[int, int]]:
    """(pid, start ns) of every child start recorded so far, complete lines only."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    result = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            pid, ns = line.split()
            result.append((int(pid), int(ns)))
    return result


def wait_starts(
    path: Path,
    count: int,
    *,
    timeout: float,
    interval: float = 0.001,
    process: subprocess.Popen[bytes] | None = None,
) -> list[tuple[int, int]]:
    """Poll until ``count`` starts are recorded; raise on timeout or if the supervisor died."""
    deadline = time.monotonic() + timeout
    while True:
        starts = read_starts(path)
        if len(starts) >= count:
            return starts
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"supervisor exited ({process.returncode}) before {count} starts; its log ends:\n"
                + log_tail(path.parent)
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(starts)} of {count} starts after {timeout} s in {path}")
        time.sleep(interval)


def log_tail(run_dir: Path, lines: int = 15) -> str:
    try:
        text = (run_dir / "supervisor.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def read_line(stream: IO[str], process: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line of a client's output, or "" if it does not come or ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.05)
        if ready:
            return stream.readline()
        if process.poll() is not None:
            return ""
    return ""


def run_client(argv: list[str], *, timeout: float) -> str:
    """Run a client script to completion and return its stdout (its stderr is shown on failure)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.track(process)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    finally:
        procs.untrack(process)
    if process.returncode != 0:
        raise RuntimeError(f"{argv[1:3]} failed ({process.returncode}): {err.decode()[-2000:]}")
    return out.decode()
