"""Scenario 6: graceful shutdown with two children that ignore SIGTERM and a 2 s stop timeout.

SIGTERM to the supervisor; time until it has exited; then any child still alive is an orphan (the
harness is a subreaper, so a leftover child comes back to it and is counted, then killed).
The floor is the stop timeout: 2 s if the children are stopped in parallel, 4 s in sequence.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from . import procs
from .context import Ctx, log, read_starts, wait_starts
from .stats import metric
from .tools import TOOLS

STOP_TIMEOUT = 2.0


def one(ctx: Ctx, tool: str) -> tuple[float, int, int | None]:
    """(seconds to exit, orphans left, exit code)."""
    with ctx.start(tool, 2, ignore_term=True, stop_timeout=STOP_TIMEOUT, label="shutdown") as run:
        children = wait_starts(run.starts, 2, timeout=60, process=run.process)
        time.sleep(0.2 if ctx.quick else 1.5)  # past supervisord's startsecs: children RUNNING
        run.process.send_signal(signal.SIGTERM)
        took = procs.wait_exit(run.process, 60.0)
        pids = [pid for pid, _ in children] + [pid for pid, _ in read_starts(run.starts)]
        orphans = sum(procs.alive(pid) for pid in set(pids))
        code = run.process.returncode
    if took is None:
        raise RuntimeError(f"{tool} did not exit within 60 s of SIGTERM")
    return took, orphans, code


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    took: dict[str, list[float]] = {t: [] for t in TOOLS}
    orphans: dict[str, list[float]] = {t: [] for t in TOOLS}
    codes: dict[str, list[int | None]] = {t: [] for t in TOOLS}
    for round_index in range(ctx.counts.shutdown_rounds):
        for tool in ctx.order(round_index):
            seconds, left, code = one(ctx, tool)
            took[tool].append(seconds)
            orphans[tool].append(left)
            codes[tool].append(code)
    log(
        "shutdown: "
        + ", ".join(f"{t} {v[0]:.2f} s ({orphans[t][0]} orphans)" for t, v in took.items())
    )
    metrics = [
        metric(
            "shutdown",
            f"shutdown, 2 children ignoring SIGTERM, {STOP_TIMEOUT:g} s stop timeout",
            "s",
            took,
            note="floor: 2 s (parallel stop)",
        ),
        metric("shutdown", "orphans left after shutdown", "processes", orphans, digits=0),
    ]
    return metrics, {"seconds": took, "orphans": orphans, "exit_codes": codes}
