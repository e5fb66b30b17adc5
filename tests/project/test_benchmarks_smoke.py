"""The benchmark harness in smoke mode, so it cannot rot: every scenario runs against every tool
and yields numbers. No timing is judged here; the figures are for benchmarks/README.md.

The first run creates the tools' venvs under benchmarks/.venvs (a few minutes of pip); later runs
reuse them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS = {"dev8", "supervisord", "circus"}
#: Scenario -> the tools each of its figures must have.
EXPECTED = {
    "crash": PEERS,
    "many": PEERS,
    "idle": PEERS,
    "startup": PEERS,
    "shutdown": PEERS,
    "fanout": {"dev8"},
    "secrets": {"dev8"},
}


def test_quick_run_measures_every_scenario_for_every_tool(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(out),
         "--dev8-source", "worktree"],
        check=False, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == {}

    metrics = results["metrics"]
    assert {m["scenario"] for m in metrics} == set(EXPECTED) | {"api"}
    for row in metrics:
        for summary in row["tools"].values():
            assert summary["n"] >= 1, row
            for key in ("median", "min", "max"):
                assert isinstance(summary[key], int | float), row
                assert math.isfinite(summary[key]), row
        if row["scenario"] in EXPECTED:
            assert set(row["tools"]) == EXPECTED[row["scenario"]], row["name"]

    api = {m["name"]: set(m["tools"]) for m in metrics if m["scenario"] == "api"}
    sequential = [name for name in api if name.startswith("status call")]
    assert len(sequential) == 2
    assert all(api[name] == PEERS for name in sequential)
    assert any("(wrk)" in name for name in api), "wrk is needed: apt-get install wrk"
    assert any("fixed rate" in name for name in api)

    raw = results["raw"]
    assert len(raw["crash"]["fastest_ms"]["dev8"]) == 2  # the quick counts were used
    assert set(raw["shutdown"]["orphans"]) == PEERS
    assert raw["fanout"]["subscribers"] == 10
    assert len(raw["secrets"]["files_written"]) == 8

    meta = results["meta"]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", meta["commit"] + "^{commit}"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert commit.stdout.strip() == meta["commit"], "the measured commit is a commit of this repo"
    assert meta["machine"]["nproc"] >= 1
    assert len(meta["machine"]["loadavg_start"]) == 3

    table = (out / "results.md").read_text()
    assert "| crash | crash-to-restart, fastest settings | ms |" in table
    for plot in ("crash", "many", "idle", "api", "startup", "shutdown", "fanout", "secrets"):
        assert (out / f"{plot}.png").stat().st_size > 1000
