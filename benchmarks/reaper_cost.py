"""The reaper's cost per SIGCHLD against the number of live processes in the container.

Runs itself as PID 1 of a new PID namespace (root: `unshare`), starts N sleeping orphans, then
times one reaper pass that collects one exited orphan: `OwnPids._reap_orphans` (the kernel
names who exited, `waitid(WNOWAIT)`), beside the /proc scan it replaced
(`list_zombie_children`, which reads every child's stat file).

    .venv/bin/python benchmarks/reaper_cost.py [--live 0 1000 3000] [--passes 50]

Prints a Markdown table (median and p99 in microseconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dev8.pid1.reaper import OwnPids, list_zombie_children  # noqa: E402


def _others() -> int:
    return sum(1 for p in os.listdir("/proc") if p.isdigit() and p != "1")


def _orphans(count: int, command: str) -> None:
    """`count` orphans of PID 1 running `command` (their parent, sh, exits at once)."""
    subprocess.run(["sh", "-c", f"for i in $(seq {count}); do ({command}) & done"], check=True)


def _time_passes(passes: int, reap: bool) -> list[float]:
    own = OwnPids()
    spent = []
    for _ in range(passes):
        _orphans(1, "exit 3")
        # Wait (outside the timing) until it is a zombie of ours.
        while not list_zombie_children():
            time.sleep(0.001)
        start = time.perf_counter()
        reaped = own._reap_orphans(None) if reap else list_zombie_children()
        spent.append(time.perf_counter() - start)
        assert reaped, "nothing to reap"
        if not reap:
            own._reap_orphans(None)
    return spent


def _in_namespace(live: list[int], passes: int) -> None:
    assert os.getpid() == 1, "run me through main(): I need to be PID 1"
    print("| live processes | waitid pass, median µs | p99 µs | /proc scan, median µs | p99 µs |")
    print("|---:|---:|---:|---:|---:|")
    started = 0
    for count in sorted(live):
        _orphans(count - started, "exec sleep 1000")
        started = count
        while _others() < count:
            time.sleep(0.01)
        row = [str(count)]
        for reap in (True, False):
            spent = sorted(_time_passes(passes, reap))
            row += [
                f"{statistics.median(spent) * 1e6:.0f}",
                f"{spent[int(len(spent) * 0.99) - 1] * 1e6:.0f}",
            ]
        print("| " + " | ".join(row) + " |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, nargs="+", default=[0, 1000, 3000])
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        _in_namespace(args.live, args.passes)
        return 0
    command = [sys.executable, __file__, "--inside", "--passes", str(args.passes), "--live"]
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command,
         *map(str, args.live)],
        check=False,
    ).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
