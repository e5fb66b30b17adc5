"""The resource sampler's cost, side by side in one run:

1. **1,000 services**: 1,000 process trees (a leader and one child each, every leader in its own
   session as dev8 starts them), sampled as the sampler does: a kept ``ProcessSampler`` (each
   service process's CPU clock; stats read again only for what ran, plus the slice it re-reads)
   and the cgroup's files. CPU time per sample (this process, all threads) while the trees sleep,
   and what it comes to at the default interval (10 s) as a share of one core; beside it, a full
   read (every process's stat and fd directory: the first sample, and every sample before the
   clocks). The goal: idle dev8 at 0.0 % of a core.
2. **Idle, 2 services**: `dev8 run` with two sleeping services at the default interval, its CPU
   over a minute measured from /proc (utime+stime of dev8, all threads). The goal: about 0.

    .venv/bin/python benchmarks/resources_cost.py [--services 1000] [--samples 20] [--idle 60]

Prints a Markdown table; the figures of a run on this machine are in results/resources.md.
"""

from __future__ import annotations

import argparse
import os
import pwd
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dev8.resources.cgroups import CgroupFiles  # noqa: E402
from dev8.resources.sampler import ProcessSampler, service_figures  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def _start_trees(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` leaders in their own sessions, each with one child (two processes a service)."""
    return [
        subprocess.Popen(
            ["sh", "-c", "sleep 600 & exec sleep 600"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def sampler_cost(services: int, samples: int) -> dict[str, float]:
    trees = _start_trees(services)
    try:
        leaders = {tree.pid: f"svc{i}" for i, tree in enumerate(trees)}
        time.sleep(1.0)  # let every shell start its child
        cgroup = CgroupFiles.detect()
        found = service_figures(leaders)
        processes = sum(f.processes for f in found.values())
        full = _cpu_per_sample(lambda: (service_figures(leaders), cgroup.container()), samples)
        sampler = ProcessSampler()
        sampler.sample(leaders)  # the first: a full read
        stats_read = []

        def kept() -> None:
            sampler.sample(leaders)
            cgroup.container()
            stats_read.append(sampler.stats_read)

        idle = _cpu_per_sample(kept, samples)
        return {
            "services": services,
            "processes": processes,
            "full_ms_median": statistics.median(full[0]) * 1000,
            "full_ms_max": max(full[0]) * 1000,
            "full_wall_ms_median": statistics.median(full[1]) * 1000,
            "cpu_ms_median": statistics.median(idle[0]) * 1000,
            "cpu_ms_max": max(idle[0]) * 1000,
            "wall_ms_median": statistics.median(idle[1]) * 1000,
            "stats_read_median": statistics.median(stats_read),
            "core_share_at_10s": statistics.median(idle[0]) / 10.0 * 100,
        }
    finally:
        for tree in trees:
            os.killpg(tree.pid, 9)
        for tree in trees:
            tree.wait()


def _cpu_per_sample(sample: Callable[[], object], samples: int) -> tuple[list[float], list[float]]:
    """CPU and wall seconds of each of ``samples`` calls."""
    cpu, wall = [], []
    for _ in range(samples):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        sample()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return cpu, wall


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def idle_cost(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "dev8.yaml"
        config.write_text(
            f"workspace: {{dir: {work}, user: {pwd.getpwuid(os.geteuid()).pw_name}}}\n"
            f"api: {{bind: '127.0.0.1:{_free_port()}'}}\n"
            "services:\n"
            "  one: {command: [sleep, '3600']}\n"
            "  two: {command: [sleep, '3600']}\n",
            encoding="utf-8",
        )
        dev8 = subprocess.Popen(
            [sys.executable, "-m", "dev8", "run", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(5.0)  # start-up over
            before = _cpu_seconds(dev8.pid)
            time.sleep(seconds)
            spent = _cpu_seconds(dev8.pid) - before
        finally:
            dev8.terminate()
            dev8.wait(30)
    return {"seconds": seconds, "cpu_seconds": spent, "core_share": spent / seconds * 100}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    cost = sampler_cost(args.services, args.samples)
    idle = idle_cost(args.idle)
    print("| scenario | figure | result | goal |")
    print("|---|---|---|---|")
    print(
        f"| {cost['services']:.0f} services ({cost['processes']:.0f} processes) | full read: "
        f"CPU per sample, median (max) | {cost['full_ms_median']:.1f} ms "
        f"({cost['full_ms_max']:.1f} ms); wall {cost['full_wall_ms_median']:.1f} ms | |"
    )
    print(
        f"| {cost['services']:.0f} services, asleep | kept sampler: CPU per sample, median (max) "
        f"| {cost['cpu_ms_median']:.2f} ms ({cost['cpu_ms_max']:.2f} ms); wall "
        f"{cost['wall_ms_median']:.2f} ms; {cost['stats_read_median']:.0f} stats read | |"
    )
    print(
        f"| {cost['services']:.0f} services, asleep | share of one core at the 10 s interval "
        f"| {cost['core_share_at_10s']:.3f} % | 0.0 % |"
    )
    print(
        f"| dev8 idle, 2 services, default interval | CPU over {idle['seconds']:.0f} s "
        f"| {idle['cpu_seconds']:.2f} s ({idle['core_share']:.2f} % of a core) | ~0 |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
