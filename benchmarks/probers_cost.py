"""The probers' idle cost: `dev8 run` with N probed services and nothing happening.

Each service is `sleep 3600` with a `process` liveness probe whose interval (an hour) does not
come round during the measurement, so what is measured is what the probers cost while they wait:
with probers that hear their services' starts and exits (no polling) it should be about 0; a
prober that looked at its service's pid every 0.5 s cost N x 2 wake-ups a second. The connection
tracker and the resource sampler are set to an hour too, so they do not blur the figure.

    .venv/bin/python benchmarks/probers_cost.py [--services 1000] [--idle 30]

Prints a Markdown table (the same services without probes first, for comparison); the figures
of a run on this machine are in results/probers.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_and_wakeups(pid: int) -> tuple[float, int]:
    """dev8's utime+stime (seconds, all threads) and its event loop's (the main thread's)
    voluntary context switches: the loop's wake-ups (worker threads come and go)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        fields = handle.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    wakeups = 0
    with open(f"/proc/{pid}/task/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                wakeups = int(line.split()[1])
    return cpu, wakeups


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{entry}/stat", encoding="utf-8") as stat,
            ):
                if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _running(port: int) -> int:
    """How many services /status shows running (0 while the API does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
            services = json.load(answer)["services"]
    except OSError:
        return 0
    return sum(1 for service in services.values() if service["state"] == "running")


def idle_cost(services: int, seconds: float, *, probed: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        port = _free_port()
        user = pwd.getpwuid(os.geteuid()).pw_name
        probe = {"type": "process", "interval": 3600}
        config = {
            "workspace": {"dir": work, "user": user},
            "api": {"bind": f"127.0.0.1:{port}"},
            "connections": {"interval": 3600},
            "resources": {"interval": 3600},
            "services": {
                f"s{i}": {
                    "command": ["sleep", "3600"],
                    "user": user,
                    **({"probes": {"liveness": probe}} if probed else {}),
                }
                for i in range(services)
            },
        }
        path = Path(work) / "dev8.yaml"
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        dev8 = subprocess.Popen(
            [sys.executable, "-m", "dev8", "run", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while _running(port) < services:
                if time.monotonic() > deadline or dev8.poll() is not None:
                    raise RuntimeError("the services did not all start within 120 s")
                time.sleep(0.5)
            time.sleep(5.0)  # the probers' first checks and start-up are over
            cpu_before, wakeups_before = _cpu_and_wakeups(dev8.pid)
            time.sleep(seconds)
            cpu_after, wakeups_after = _cpu_and_wakeups(dev8.pid)
        finally:
            dev8.terminate()
            try:
                dev8.wait(120)
            except subprocess.TimeoutExpired:  # too busy to stop: its services go first
                for child in _children(dev8.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                dev8.kill()
                dev8.wait()
    return {
        "services": services,
        "seconds": seconds,
        "cpu_seconds": cpu_after - cpu_before,
        "core_share": (cpu_after - cpu_before) / seconds * 100,
        "wakeups_per_s": (wakeups_after - wakeups_before) / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    print("| services | probes | idle | dev8 CPU | share of a core | loop wake-ups/s |")
    print("|---|---|---|---|---|---|")
    for probed in (False, True):
        cost = idle_cost(args.services, args.idle, probed=probed)
        print(
            f"| {cost['services']:.0f} | {'liveness' if probed else 'none'} "
            f"| {cost['seconds']:.0f} s | {cost['cpu_seconds']:.2f} s "
            f"| {cost['core_share']:.2f} % | {cost['wakeups_per_s']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
