"""Where dev8's time goes, in the scenarios it loses: py-spy profiles of a running dev8.

    python3 benchmarks/profile.py            # after run.py has created benchmarks/.venvs

Cases: ``restart`` (40 SIGKILLs of a service, fastest settings), ``health`` (wrk on /health, one
connection), ``fanout`` (200 websocket subscribers, bursts of restarts), ``idle`` (30 s, 2
children). Each writes ``results/profiles/CASE.txt``: the frames holding the most samples,
inclusive and self, and the commit profiled.
py-spy samples without stopping dev8 (``--nonblocking``) and is installed into the report venv.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import envs, procs  # noqa: E402
from harness.context import Counts, Ctx, read_starts, run_client, wait_starts  # noqa: E402
from harness.tools import CLIENTS, make_tools  # noqa: E402
from run import build_child  # noqa: E402


def summarize(raw: Path, title: str, top: int = 30) -> str:
    """Inclusive and self sample counts per frame from py-spy's folded (raw) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"# {title}", f"samples: {total} (100 Hz per thread, idle threads excluded)", ""]
    lines += ["## inclusive (the frame or anything it called)"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "## self (the frame itself)"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


def spy(pyspy: Path, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [str(pyspy), "record", "-p", str(pid), "-r", "100", "-d", str(int(seconds)),
            "--nonblocking", "-f", "raw", "-o", str(out)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.track(process)
    time.sleep(1.0)  # attached
    return process


def finish(process: subprocess.Popen[bytes]) -> None:
    process.wait(120)
    procs.untrack(process)


def case_restart(ctx: Ctx, pyspy: Path, out: Path) -> str:
    with ctx.start("dev8", 1, variant="fastest", label="profile-restart") as run:
        wait_starts(run.starts, 1, timeout=60, process=run.process)
        sampler = spy(pyspy, run.pid, 12, out)
        for _ in range(40):
            starts = read_starts(run.starts)
            os.kill(starts[-1][0], signal.SIGKILL)
            wait_starts(run.starts, len(starts) + 1, timeout=30, process=run.process)
            time.sleep(0.1)
        finish(sampler)
    return summarize(out, "dev8: 40 crash-restarts of one service (fastest settings)")


def case_health(ctx: Ctx, pyspy: Path, out: Path) -> str:
    with ctx.start("dev8", 2, label="profile-health") as run:
        wait_starts(run.starts, 2, timeout=60, process=run.process)
        run_client(run.tool.client(run.port, "wait-ready", "60"), timeout=90)
        sampler = spy(pyspy, run.pid, 8, out)
        run_client(["wrk", "-t1", "-c1", "-d6s", f"http://127.0.0.1:{run.port}/health"], timeout=60)
        finish(sampler)
    return summarize(out, "dev8: GET /health, one keep-alive connection (wrk)")


def case_fanout(ctx: Ctx, pyspy: Path, out: Path) -> str:
    with ctx.start("dev8", 20, variant="fastest", label="profile-fanout") as run:
        wait_starts(run.starts, 20, timeout=60, process=run.process)
        run_client(run.tool.client(run.port, "wait-ready", "60"), timeout=90)
        client = subprocess.Popen(
            [sys.executable, str(CLIENTS / "fanout.py"), "--port", str(run.port),
             "--subscribers", "1000", "--slow", "0", "--bursts", "8", "--services", "20"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        procs.track(client)
        sampler = spy(pyspy, run.pid, 15, out)
        finish(sampler)
        client.wait(300)
        procs.untrack(client)
    return summarize(out, "dev8: 1,000 websocket subscribers, bursts of 60 events")


def case_idle(ctx: Ctx, pyspy: Path, out: Path) -> str:
    with ctx.start("dev8", 2, label="profile-idle") as run:
        wait_starts(run.starts, 2, timeout=60, process=run.process)
        time.sleep(3)
        sampler = spy(pyspy, run.pid, 30, out)
        finish(sampler)
    return summarize(out, "dev8: idle for 30 s with 2 children")


CASES = {"restart": case_restart, "health": case_health, "fanout": case_fanout, "idle": case_idle}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profiles")
    parser.add_argument("--venvs", type=Path, default=HERE / ".venvs")
    parser.add_argument("--only", default="", help=",".join(CASES))
    parser.add_argument("--dev8-source", choices=["head", "worktree"], default="head")
    args = parser.parse_args()
    procs.become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="dev8-profile-"))
    try:
        venvs = {name: envs.ensure_peer(args.venvs, name) for name in ("supervisord", "circus")}
        source, identity = envs.dev8_source(HERE.parent, work, args.dev8_source)
        venvs["dev8"] = envs.ensure_dev8(args.venvs, source, identity)
        report = envs.ensure_peer(args.venvs, "report")
        child, _ = build_child(work)
        ctx = Ctx(make_tools(venvs), venvs, child, work, HERE.parent, Counts(), quick=False)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in [c for c in args.only.split(",") if c] or list(CASES):
            text = CASES[name](ctx, report.bin("py-spy"), work / f"{name}.raw")
            text = text.replace("\n", f"\ncommit: {identity}\n", 1)
            (args.out / f"{name}.txt").write_text(text)
            print(text)
        return 0
    finally:
        procs.sweep()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
