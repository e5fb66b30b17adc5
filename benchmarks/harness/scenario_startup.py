"""Scenario 5: startup, from launch until the control API answers (and until both children run).

A status client in the tool's venv is loaded and polling before the supervisor is launched; it
reports the wall-clock time of the first answer. For dev8, ``-X importtime`` of one more start-up
(until its API answered) shows which imports it pays for; benchmarks/results/startup.md has the
profile of the rest.
"""

from __future__ import annotations

import ast
import re
import subprocess
import time
from typing import Any

from . import procs
from .context import Ctx, log, log_tail, read_line, wait_starts
from .stats import metric
from .tools import TOOLS, free_port


def one(ctx: Ctx, tool: str) -> tuple[float, float]:
    """(seconds until the API answered, seconds until both children ran)."""
    run_dir = ctx.run_dir(f"startup-{tool}")
    starts = run_dir / "starts.txt"
    port = free_port()
    argv = ctx.tools[tool].argv(run_dir, ctx.programs(2, starts), variant="defaults", port=port)
    client = subprocess.Popen(
        ctx.tools[tool].client(port, "wait-ready", "60"), stdout=subprocess.PIPE, text=True
    )
    procs.track(client)
    try:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "polling":
            raise RuntimeError("the status client did not start")
        launched = time.time_ns()
        with procs.running(argv, log=run_dir / "supervisor.log") as process:
            line = read_line(client.stdout, process, 60).split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"{tool} API never answered; its log ends:\n{log_tail(run_dir)}")
            children = wait_starts(starts, 2, timeout=60, process=process)
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        if client.stdout is not None:
            client.stdout.close()
        procs.untrack(client)
    api = (int(line[1]) - launched) / 1e9
    running = (max(ns for _, ns in children) - launched) / 1e9
    return api, running


def import_costs(ctx: Ctx) -> dict[str, float]:
    """Import time (ms) of one ``dev8 run`` (2 services) from its launch until its API answered,
    by top-level package: each module's own time (``-X importtime`` self column) added to its
    package, heaviest first. Only what that start-up imports: Quart, httpx, prometheus_client
    and the like load later (on first use), so they are absent."""
    run_dir = ctx.run_dir("startup-importtime")
    starts = run_dir / "starts.txt"
    port = free_port()
    argv = ctx.tools["dev8"].argv(run_dir, ctx.programs(2, starts), variant="defaults", port=port)
    # `dev8 run ...` as `python -X importtime -m dev8 run ...`: the same entry (dev8.__main__).
    argv = [str(ctx.envs["dev8"].python), "-X", "importtime", "-m", "dev8", *argv[1:]]
    client = subprocess.Popen(
        ctx.tools["dev8"].client(port, "wait-ready", "60"), stdout=subprocess.PIPE, text=True
    )
    procs.track(client)
    log_path = run_dir / "supervisor.log"
    try:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "polling":
            raise RuntimeError("the status client did not start")
        with procs.running(argv, log=log_path) as process:
            line = read_line(client.stdout, process, 60).split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"dev8 API never answered; its log ends:\n{log_tail(run_dir)}")
            # Each import's line is written (unbuffered) as it ends: what the log holds now is
            # what was imported before the answer.
            answered_at = log_path.stat().st_size
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        if client.stdout is not None:
            client.stdout.close()
        procs.untrack(client)
    costs: dict[str, float] = {}
    with log_path.open("rb") as log_file:
        before_answer = log_file.read(answered_at).decode(errors="replace")
    for text in before_answer.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", text)
        if found:
            package = found.group(2).split(".")[0]
            costs[package] = costs.get(package, 0.0) + int(found.group(1)) / 1000
    total = sum(costs.values())
    top = dict(sorted(costs.items(), key=lambda item: -item[1])[:15])
    return {"total": round(total, 1), **{k: round(v, 1) for k, v in top.items()}}


#: Imported in this order in a fresh dev8 interpreter; RSS is read after each step.
IMPORT_STEPS = (
    ("python", ""),
    ("trio", "import trio"),
    ("attrs, cattrs, yaml", "import attrs, cattrs, yaml"),
    ("structlog", "import structlog"),
    ("actors", "import actors"),
    ("dev8.config, process, init", "import dev8.config, dev8.services.process, dev8.pid1.reaper"),
    ("hypercorn.trio", "import hypercorn.trio"),
    ("dev8.api", "import dev8.api"),
    ("dev8.cli, dev8.app (all dev8 run imports)", "import dev8.cli, dev8.app"),
    ("quart, quart_trio (on the first request Quart serves)", "import quart, quart_trio"),
    ("prometheus_client (on the first /metrics)", "import prometheus_client"),
    ("httpx (on the first HTTP probe)", "import httpx"),
)
_RSS_PROBE = """
import sys, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
out = []
for label, code in STEPS:
    start = time.perf_counter()
    exec(code)
    out.append((label, round(rss(), 1), round((time.perf_counter() - start) * 1000, 1)))
out.append(('azure SDK loaded by then', any(m.startswith('azure') for m in sys.modules), 0))
print(repr(out))
"""


def import_rss(ctx: Ctx) -> list[tuple[str, float, float]]:
    """(step, RSS MB after it, ms it took) for dev8's imports, heaviest stack last."""
    code = f"STEPS = {IMPORT_STEPS!r}\n{_RSS_PROBE}"
    out = subprocess.run(
        [str(ctx.envs["dev8"].python), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    steps: list[tuple[str, float, float]] = ast.literal_eval(out.stdout.strip())
    return steps


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    api: dict[str, list[float]] = {t: [] for t in TOOLS}
    running: dict[str, list[float]] = {t: [] for t in TOOLS}
    for tool in [] if ctx.quick else TOOLS:  # one unmeasured start each: warm caches and .pyc
        one(ctx, tool)
    for round_index in range(ctx.counts.startup_rounds):
        for tool in ctx.order(round_index):
            a, r = one(ctx, tool)
            api[tool].append(a)
            running[tool].append(r)
    log(
        "startup to API: "
        + ", ".join(f"{t} {sorted(v)[len(v) // 2]:.3f} s" for t, v in api.items())
    )
    imports = import_costs(ctx)
    rss_steps = import_rss(ctx)
    metrics = [
        metric("startup", "startup: launch to API answering", "s", api, target="< 0.5 s"),
        metric("startup", "startup: launch to both children running", "s", running),
    ]
    return metrics, {
        "api_s": api,
        "children_s": running,
        "dev8_import_ms": imports,
        "dev8_import_rss": rss_steps,
    }
