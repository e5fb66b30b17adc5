"""Scenario 1: crash-to-restart latency.

The child records its own start (CLOCK_REALTIME, ns). The harness notes the time, SIGKILLs it,
and waits for the next start line: latency = new start - kill time. All three supervisors run at
once and are killed in turn, so the load on the machine is the same for each. ``defaults`` waits
``settle_defaults`` seconds between two kills of one tool (dev8's backoff resets after 10 s of
running, supervisord counts a start as good after 1 s), so every kill is a first crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

from .context import Ctx, log, read_starts, wait_starts
from .stats import metric
from .tools import CIRCUS_FAST_CHECK_DELAY, TOOLS

RESTART_TIMEOUT = 30.0


def fork_exec_floor(ctx: Ctx, count: int) -> list[float]:
    """What the harness itself needs to start the child (subprocess, fork+exec): the floor."""
    starts = ctx.run_dir("floor") / "starts.txt"
    floor: list[float] = []
    for _ in range(count):
        before = time.time_ns()
        child = subprocess.Popen([*ctx.child, str(starts)])
        try:
            _, started = wait_starts(starts, len(floor) + 1, timeout=10)[-1]
        finally:
            child.kill()
            child.wait()
        floor.append((started - before) / 1e6)
    return floor


def _kill_and_time(path: Any, process: subprocess.Popen[bytes]) -> float:
    starts = read_starts(path)
    pid = starts[-1][0]
    killed = time.time_ns()
    os.kill(pid, signal.SIGKILL)
    new = wait_starts(path, len(starts) + 1, timeout=RESTART_TIMEOUT, process=process)
    return (new[-1][1] - killed) / 1e6


def measure(ctx: Ctx, variant: str, kills: int, settle: float) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    with contextlib.ExitStack() as stack:
        running = {
            tool: stack.enter_context(ctx.start(tool, 1, variant=variant, label=f"crash-{variant}"))
            for tool in TOOLS
        }
        last_start: dict[str, float] = {}
        for tool, run in running.items():
            wait_starts(run.starts, 1, timeout=60, process=run.process)
            last_start[tool] = time.monotonic()
        for index in range(kills):
            for tool in ctx.order(index):
                run = running[tool]
                time.sleep(max(0.0, last_start[tool] + settle - time.monotonic()))
                latencies[tool].append(_kill_and_time(run.starts, run.process))
                last_start[tool] = time.monotonic()
        log(
            f"crash {variant}: "
            + ", ".join(f"{t} {sorted(v)[len(v) // 2]:.1f} ms" for t, v in latencies.items())
        )
    return latencies


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counts = ctx.counts
    floor = fork_exec_floor(ctx, 5 if ctx.quick else 30)
    fastest = measure(ctx, "fastest", counts.kills_fastest, 0.1)
    defaults = measure(ctx, "defaults", counts.kills_defaults, counts.settle_defaults)
    metrics = [
        metric(
            "crash",
            "crash-to-restart, fastest settings",
            "ms",
            fastest,
            target="< 5 ms",
            note=f"Circus with check_delay={CIRCUS_FAST_CHECK_DELAY}",
        ),
        metric("crash", "crash-to-restart, defaults", "ms", defaults),
    ]
    raw = {"floor_ms": floor, "fastest_ms": fastest, "defaults_ms": defaults}
    return metrics, raw
