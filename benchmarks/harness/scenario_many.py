"""Scenario 2: many processes (N children): time until all run, then the cost of holding them.

"Running" is the child's own record, the same for every tool. After the first round the
supervisor is left idle and sampled in windows: RSS, CPU seconds, context switches.
"""

from __future__ import annotations

import time
from typing import Any

from . import procs
from .context import Ctx, log, wait_starts
from .stats import metric
from .tools import TOOLS


def idle_windows(pid: int, duration: float, window: float) -> dict[str, list[float]]:
    """CPU % of one core, context switches per second, RSS MB, per window."""
    out: dict[str, list[float]] = {
        "cpu_pct": [],
        "ctx_per_s": [],
        "wakeups_per_s": [],
        "rss_mb": [],
    }
    before = procs.sample(pid)
    end = time.monotonic() + duration
    while time.monotonic() < end - window / 2:
        time.sleep(window)
        after = procs.sample(pid)
        elapsed = after.at - before.at
        out["cpu_pct"].append(100 * (after.cpu_s - before.cpu_s) / elapsed)
        voluntary, involuntary = after.switches_since(before)
        out["ctx_per_s"].append((voluntary + involuntary) / elapsed)
        out["wakeups_per_s"].append(voluntary / elapsed)
        out["rss_mb"].append(after.rss_kb / 1024)
        before = after
    return out


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counts = ctx.counts
    metrics: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    for n in counts.many:
        ready: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        idle: dict[str, dict[str, list[float]]] = {}
        for round_index in range(counts.many_rounds):
            for tool in ctx.order(round_index):
                with ctx.start(tool, n, label=f"many{n}") as run:
                    starts = wait_starts(
                        run.starts, n, timeout=300, interval=0.005, process=run.process
                    )
                    ready[tool].append((max(ns for _, ns in starts) - run.launched_ns) / 1e9)
                    if round_index == 0:
                        time.sleep(min(1.0, counts.many_idle / 10))  # let start-up settle
                        cpu_before = procs.sample(run.pid).cpu_s
                        idle[tool] = idle_windows(run.pid, counts.many_idle, counts.many_window)
                        idle[tool]["cpu_s_total"] = [procs.sample(run.pid).cpu_s - cpu_before]
                    log(f"many N={n} {tool}: all running after {ready[tool][-1]:.2f} s")
        raw[f"n{n}"] = {"ready_s": ready, "idle": idle}
        label = f"N = {n}"
        metrics += [
            metric("many", f"{label}: time until all running", "s", ready),
            metric(
                "many",
                f"{label}: supervisor RSS",
                "MB",
                {t: v["rss_mb"] for t, v in idle.items()},
                digits=1,
            ),
            metric(
                "many",
                f"{label}: idle CPU (over {counts.many_idle:g} s)",
                "% of a core",
                {t: v["cpu_pct"] for t, v in idle.items()},
                target="< 1 %" if n >= 1000 else None,
            ),
            metric(
                "many",
                f"{label}: idle context switches",
                "per s",
                {t: v["ctx_per_s"] for t, v in idle.items()},
                digits=1,
            ),
        ]
    return metrics, raw
