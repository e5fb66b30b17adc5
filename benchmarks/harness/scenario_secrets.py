"""Scenario 8: secret injection from a local Key Vault-compatible endpoint (dev8 only).

Neither peer fetches secrets: with supervisord or Circus an operator injects them before the
supervisor starts (an entrypoint script calling ``az keyvault secret show`` and writing files).
"""

from __future__ import annotations

import json
from typing import Any

from .context import Ctx, log, run_client
from .stats import metric
from .tools import CLIENTS

PEERS_NOTE = "no equivalent in supervisord or Circus (done outside them, before they start)"


def run(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counts = ctx.counts
    argv = [
        str(ctx.envs["dev8"].python),
        str(CLIENTS / "secrets_bench.py"),
        "--tests",
        str(ctx.repo / "tests"),
        "--cold",
        str(counts.secrets_cold),
        "--warm",
        str(counts.secrets_warm),
    ]
    result: dict[str, Any] = json.loads(run_client(argv, timeout=900))
    cold = sorted(result["cold_s"])[len(result["cold_s"]) // 2]
    log(f"secrets: cold {cold:.2f} s, {len(result['files_written'])} files")
    metrics = [
        metric(
            "secrets",
            "secrets: process launch to 5 secrets fetched and 8 files written",
            "s",
            {"dev8": result["cold_s"]},
            note=PEERS_NOTE,
        ),
        metric(
            "secrets",
            "secrets: forced refresh in a running dev8 (5 fetches, compare, write)",
            "ms",
            {"dev8": [s * 1000 for s in result["refresh_s"]]},
        ),
    ]
    return metrics, result
