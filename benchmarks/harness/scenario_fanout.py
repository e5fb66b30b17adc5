"""Scenario 7: event fan-out (dev8 only) to many websocket subscribers, and a slow subscriber.

The peers' nearest equivalents are not comparable figures: supervisord's event listeners are
child processes fed one event at a time over stdin, each blocking the next until it answers
``RESULT``; Circus publishes events on a ZeroMQ PUB socket (``pubsub_endpoint``), where a slow
subscriber's messages are dropped at its high-water mark, without telling it.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
from typing import Any

from . import procs
from .context import Ctx, log, run_client, wait_starts
from .stats import metric
from .tools import CLIENTS

PEERS_NOTE = (
    "supervisord: event listeners (child processes, one event at a time, serial); "
    "Circus: ZeroMQ PUB/SUB on pubsub_endpoint (slow subscribers silently dropped at the HWM)"
)


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counts = ctx.counts
    with ctx.start("dev8", counts.fanout_services, variant="fastest", label="fanout") as run:
        wait_starts(run.starts, counts.fanout_services, timeout=60, process=run.process)
        run_client(run.tool.client(run.port, "wait-ready", "60"), timeout=90)
        rss: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.25):
                rss.append(procs.sample(run.pid).rss_kb / 1024)

        watcher = threading.Thread(target=watch)
        before = procs.sample(run.pid)
        watcher.start()
        try:
            argv = [
                sys.executable,
                str(CLIENTS / "fanout.py"),
                "--port",
                str(run.port),
                "--subscribers",
                str(counts.subscribers),
                "--slow",
                str(counts.slow_subscribers),
                "--bursts",
                str(counts.bursts),
                "--services",
                str(counts.fanout_services),
                "--server-pid",
                str(run.pid),
            ]
            result: dict[str, Any] = json.loads(run_client(argv, timeout=1800))
            # Then a few subscribers only (a fresh client; the 1,000 have left).
            few_argv = [*argv]
            few_argv[few_argv.index("--subscribers") + 1] = str(counts.few_subscribers)
            few_argv[few_argv.index("--slow") + 1] = "0"
            few: dict[str, Any] = json.loads(run_client(few_argv, timeout=600))
            result["few"] = few
        finally:
            stop.set()
            watcher.join()
        after = procs.sample(run.pid)
    result["dev8_rss_mb"] = {
        "before": round(before.rss_kb / 1024, 1),
        "peak": round(max(rss, default=0), 1),
    }
    result["dev8_cpu_s"] = round(after.cpu_s - before.cpu_s, 2)
    result["peers"] = PEERS_NOTE
    n = result["subscribers"]
    per_burst = statistics.median([b["messages"] for b in result["baseline"]]) / max(n, 1)
    m = few["subscribers"]
    per_event = [b.get("frames", 0) / max(b["messages"], 1) for b in result["baseline"]]
    log(
        f"fan-out to {m}: p99 {statistics.median(b['p99_ms'] for b in few['baseline']):.1f} ms; "
        f"messages per event to {n}: {statistics.median(per_event):.2f}"
    )
    log(
        f"fan-out to {n}: p99 {statistics.median(b['p99_ms'] for b in result['baseline']):.1f} ms "
        f"(with slow: {statistics.median(b['p99_ms'] for b in result['with_slow']):.1f} ms), "
        f"slow closed 4001: {result['slow']['closed_4001']}/{result['slow']['count']}"
    )
    bursts = result["baseline"] + result["with_slow"]
    incomplete = sum(not b["complete"] for b in bursts)
    note = PEERS_NOTE
    if incomplete:
        note += f"; {incomplete} of {len(bursts)} bursts not fully delivered within the timeout"
    metrics = [
        metric(
            "fanout",
            f"a burst of {per_burst:g} events fully delivered to {n} subscribers",
            "s",
            {"dev8": [b["seconds"] for b in result["baseline"]]},
            note=note,
        ),
        metric(
            "fanout",
            f"event delivery p50, {n} subscribers, {per_burst:g} events/burst",
            "ms",
            {"dev8": [b["p50_ms"] for b in result["baseline"]]},
        ),
        metric(
            "fanout",
            f"event delivery p99, {n} subscribers",
            "ms",
            {"dev8": [b["p99_ms"] for b in result["baseline"]]},
            target="< 150 ms",
        ),
        metric(
            "fanout",
            f"websocket messages per event and subscriber, {n} subscribers (batching)",
            "messages",
            {"dev8": per_event},
        ),
        metric(
            "fanout",
            f"dev8 CPU per burst of {per_burst:g} events to {n} subscribers (restarts and sends)",
            "s",
            {"dev8": [b["server_cpu_s"] for b in result["baseline"]]},
        ),
        metric(
            "fanout",
            f"dev8 CPU per burst of {per_burst:g} events to {m} subscribers (restarts and sends)",
            "s",
            {"dev8": [b["server_cpu_s"] for b in few["baseline"]]},
        ),
        metric(
            "fanout",
            f"event delivery p50, {m} subscribers",
            "ms",
            {"dev8": [b["p50_ms"] for b in few["baseline"]]},
        ),
        metric(
            "fanout",
            f"event delivery p99, {m} subscribers",
            "ms",
            {"dev8": [b["p99_ms"] for b in few["baseline"]]},
            target="< 20 ms",
        ),
        metric(
            "fanout",
            f"event delivery p99, {n} subscribers + {counts.slow_subscribers} stalled",
            "ms",
            {"dev8": [b["p99_ms"] for b in result["with_slow"]]},
            target="< 150 ms",
        ),
        metric("fanout", f"time to connect {n} subscribers", "s", {"dev8": [result["connect_s"]]}),
    ]
    return metrics, result
