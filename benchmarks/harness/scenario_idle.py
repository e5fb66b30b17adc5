"""Scenario 3: idle cost with 2 children: RSS, CPU, wakeups.

The three supervisors idle side by side for the same minute (idle processes do not disturb each
other), sampled in windows; wakeups are voluntary context switches, summed over threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from .context import Ctx, log, wait_starts
from .scenario_many import idle_windows
from .stats import metric
from .tools import TOOLS


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counts = ctx.counts
    results: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        running = {tool: stack.enter_context(ctx.start(tool, 2, label="idle")) for tool in TOOLS}
        for run in running.values():
            wait_starts(run.starts, 2, timeout=60, process=run.process)
        time.sleep(min(2.0, counts.idle / 10))  # let start-up settle

        def sample(tool: str) -> None:
            results[tool] = idle_windows(running[tool].pid, counts.idle, counts.idle_window)

        threads = [threading.Thread(target=sample, args=(tool,)) for tool in TOOLS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    log("idle: " + ", ".join(f"{t} {v['rss_mb'][-1]:.1f} MB" for t, v in results.items()))
    metrics = [
        metric(
            "idle",
            "RSS with 2 children",
            "MB",
            {t: v["rss_mb"] for t, v in results.items()},
            digits=1,
        ),
        metric(
            "idle",
            f"idle CPU with 2 children (over {counts.idle:g} s)",
            "% of a core",
            {t: v["cpu_pct"] for t, v in results.items()},
        ),
        metric(
            "idle",
            "idle wakeups with 2 children",
            "per s",
            {t: v["wakeups_per_s"] for t, v in results.items()},
            digits=1,
        ),
    ]
    return metrics, results
