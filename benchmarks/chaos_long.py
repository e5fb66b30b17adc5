"""The long chaos run: the seeded chaos suite of tests/tree/test_chaos.py for many rounds, with
figures.

    sudo .venv/bin/python benchmarks/chaos_long.py --rounds 1000 [--seed N]

Needs root (a PID and mount namespace, a tmpfs). Writes benchmarks/results/chaos.md (or --out):
faults injected by kind and target, invariant violations (must be none), worst and mean time to
recover. Exits 1 if any invariant was violated. Reproduce a run with the same --seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "tree")]

from test_chaos import FAULT_WEIGHTS, ChaosReport, run_chaos  # noqa: E402


def code_version() -> str:
    """The commit the run exercised, and whether the working tree differed from it."""
    repo = HERE.parent

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=30
        )
        return result.stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "actors", "dev8", "tests")
    return f"{commit} with uncommitted changes" if dirty else commit


def render(report: ChaosReport, *, command: str, started: str, code: str) -> str:
    mean = {
        kind: report.recovery_total[kind] / count
        for kind, count in report.faults.items()
        if count and kind in report.recovery_total
    }
    lines = [
        "# Chaos: long run",
        "",
        f"`{command}` — {started}, {report.duration / 60:.1f} min on {os.cpu_count()} cores "
        f"({platform.system()} {platform.release()}, Python {platform.python_version()}).",
        "",
        f"Code: {code}.",
        "",
        "dev8 runs as PID 1 of its own PID and mount namespace (the workspace is an 8 MiB tmpfs), "
        "with two services (`web`: an HTTP server gated by a readiness probe; `worker`: a shell "
        "loop that forks all the time and orphans a child each loop) and its secrets in a fake "
        "Key Vault over HTTPS. One fault per round, then the invariants "
        "(tests/tree/test_chaos.py).",
        "",
        f"- seed **{report.seed}**, rounds **{report.rounds}**",
        f"- invariant violations: **{len(report.violations)}**",
        f"- worst time to recover: **{report.worst_recovery:.3f} s**",
        f"- events followed without a gap: {report.events_seen} "
        f"(websocket reconnections, while the API actor was down: {report.reconnects}; "
        f"dropped as lagging: {report.lagged})",
        f"- API requests checked: {report.requests}",
        f"- dev8's open fds: {report.fd_baseline} after warm-up, at most {report.fd_max}, "
        f"{report.fd_end} at the end",
        f"- exit code after SIGTERM at the end: {report.exit_code}",
        "",
        "| fault | injected | worst recovery (s) | mean recovery (s) |",
        "|---|---:|---:|---:|",
    ]
    for kind in sorted(FAULT_WEIGHTS):
        lines.append(
            f"| {kind} | {report.faults.get(kind, 0)} | {report.recovery.get(kind, 0.0):.3f} "
            f"| {mean.get(kind, 0.0):.3f} |"
        )
    lines += ["", "| fault and target | injected |", "|---|---:|"]
    lines += [f"| {target} | {count} |" for target, count in sorted(report.targets.items())]
    lines += ["", "## Violations", ""]
    lines += [f"- {v}" for v in report.violations] or ["none"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "chaos.md")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    print(f"chaos seed={seed} rounds={args.rounds}", flush=True)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    code = code_version()
    began = time.monotonic()

    async def go() -> ChaosReport:
        with tempfile.TemporaryDirectory(prefix="dev8-chaos-") as directory:
            return await run_chaos(
                Path(directory),
                seed=seed,
                rounds=args.rounds,
                progress=lambda line: print(
                    f"[{time.monotonic() - began:7.1f}s] {line}", flush=True
                ),
            )

    report = trio.run(go)
    print(report.summary(), flush=True)
    for violation in report.violations:
        print(f"  {violation}", flush=True)
    command = f"python benchmarks/chaos_long.py --rounds {args.rounds} --seed {seed}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        render(report, command=command, started=started, code=code), encoding="utf-8"
    )
    print(f"wrote {args.out}", flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
