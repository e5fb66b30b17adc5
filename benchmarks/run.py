"""Benchmarks: dev8 against supervisord and Circus, side by side, in one run.

    python3 benchmarks/run.py            # the full suite (about 12 minutes on 2 cores)
    python3 benchmarks/run.py --quick    # the smoke mode: tiny counts, about a minute once the
                                         # venvs exist (benchmarks/.venvs, reused across runs)

Writes results.json, results.md and PNG plots to benchmarks/results/ (or --out). Standard library
only: each tool runs from its own venv, which this script creates.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    envs,
    procs,
    report,
    scenario_api,
    scenario_crash,
    scenario_fanout,
    scenario_idle,
    scenario_many,
    scenario_secrets,
    scenario_shutdown,
    scenario_startup,
)
from harness.context import Counts, Ctx, log  # noqa: E402
from harness.tools import make_tools  # noqa: E402

SCENARIOS = {
    "crash": scenario_crash.run,
    "many": scenario_many.run,
    "idle": scenario_idle.run,
    "api": scenario_api.run,
    "startup": scenario_startup.run,
    "shutdown": scenario_shutdown.run,
    "fanout": scenario_fanout.run,
    "secrets": scenario_secrets.run,
}


def build_child(work: Path) -> tuple[list[str], str]:
    """The supervised child: C when a compiler exists (fork+exec is then the floor)."""
    source = HERE / "harness" / "child.c"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler:
        binary = work / "child"
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True, timeout=120)
        return [str(binary)], "c"
    log("no C compiler: the child is a Python script (its start-up adds ~15 ms to each restart)")
    return [sys.executable, "-S", "-I", str(HERE / "harness" / "child.py")], "python"


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": procs.loadavg(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny counts")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--venvs", type=Path, default=HERE / ".venvs")
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS)
    )
    parser.add_argument(
        "--dev8-source",
        choices=["head", "worktree"],
        default="head",
        help="install dev8 from the committed HEAD (default) or the working tree",
    )
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    selected = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(selected) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")

    procs.become_subreaper()
    atexit.register(procs.sweep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    repo = HERE.parent
    work = Path(tempfile.mkdtemp(prefix="dev8-bench-"))
    try:
        source, identity = envs.dev8_source(repo, work, args.dev8_source)
        venvs = {name: envs.ensure_peer(args.venvs, name) for name in ("supervisord", "circus")}
        venvs["dev8"] = envs.ensure_dev8(args.venvs, source, identity)
        if not args.no_plots:
            venvs["report"] = envs.ensure_peer(args.venvs, "report")
        child, child_kind = build_child(work)
        meta: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": envs.git(repo, "rev-parse", "HEAD"),
            "dev8_source": args.dev8_source,
            "dev8_identity": identity,
            "quick": args.quick,
            "machine": machine(),
            "child": child_kind,
            "versions": {
                "dev8": venvs["dev8"].version_of("dev8"),
                "supervisor": venvs["supervisord"].version_of("supervisor"),
                "circus": venvs["circus"].version_of("circus"),
            },
            "wrk": shutil.which("wrk") is not None,
        }
        log(f"commit {meta['commit'][:12]}, load average {meta['machine']['loadavg_start']}")
        ctx = Ctx(
            tools=make_tools(venvs),
            envs=venvs,
            child=child,
            work=work,
            repo=repo,
            counts=Counts.quick() if args.quick else Counts(),
            quick=args.quick,
        )
        metrics: list[dict[str, Any]] = []
        raw: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for name in selected:
            log(f"scenario {name}")
            started = time.monotonic()
            try:
                found, raw[name] = SCENARIOS[name](ctx)
                metrics += found
            except Exception:
                failed[name] = traceback.format_exc()
                log(f"scenario {name} FAILED:\n{failed[name]}")
            procs.reap_orphans()
            raw.setdefault(name, {})["duration_s"] = round(time.monotonic() - started, 1)
        meta["machine"]["loadavg_end"] = procs.loadavg()
        meta["duration_s"] = round(time.monotonic() - began, 1)
        results = {"meta": meta, "metrics": metrics, "raw": raw, "failed": failed}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "results.md").write_text(report.markdown(results))
        if not args.no_plots:
            subprocess.run(
                [
                    str(venvs["report"].python),
                    str(HERE / "harness" / "plots.py"),
                    str(args.out / "results.json"),
                    str(args.out),
                ],
                check=True,
                timeout=300,
            )
        log(f"done in {meta['duration_s']:.0f} s: {args.out / 'results.md'}")
        return 1 if failed else 0
    finally:
        procs.sweep()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
