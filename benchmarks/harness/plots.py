"""PNG plots from results.json (run with the report venv, which has matplotlib).

    python plots.py results.json OUTDIR

One figure per scenario (a bar per tool: median, whiskers min to max), plus the distribution of
every crash-to-restart latency and the CDF of the sequential status calls.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib  # type: ignore[import-not-found]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found]

TOOLS = ("dev8", "supervisord", "circus")
COLORS = {"dev8": "#2a7ab0", "supervisord": "#c0504d", "circus": "#9bbb59"}


def bars(ax: Any, row: dict[str, Any]) -> None:
    tools = [t for t in TOOLS if t in row["tools"]]
    medians = [row["tools"][t]["median"] for t in tools]
    low = [m - row["tools"][t]["min"] for t, m in zip(tools, medians, strict=True)]
    high = [row["tools"][t]["max"] - m for t, m in zip(tools, medians, strict=True)]
    ax.bar(tools, medians, yerr=[low, high], color=[COLORS[t] for t in tools], capsize=4)
    positive = [m for m in medians if m and m > 0]
    if len(positive) > 1 and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    for x, value in enumerate(medians):
        ax.annotate(f"{value:.3g}", (x, value), ha="center", va="bottom", fontsize=8)
    ax.set_title(row["name"], fontsize=9, wrap=True)
    ax.set_ylabel(row["unit"], fontsize=8)
    ax.tick_params(labelsize=8)


def scenario_figures(results: dict[str, Any], out: Path) -> list[Path]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results["metrics"]:
        grouped[row["scenario"]].append(row)
    written = []
    for scenario, rows in grouped.items():
        columns = min(3, len(rows))
        lines = math.ceil(len(rows) / columns)
        fig, axes = plt.subplots(
            lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False
        )
        for ax, row in zip(axes.flat, rows, strict=False):
            bars(ax, row)
        for ax in list(axes.flat)[len(rows) :]:
            ax.axis("off")
        fig.suptitle(f"{scenario} (median, whiskers min to max)", fontsize=11)
        fig.tight_layout()
        path = out / f"{scenario}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def crash_distribution(results: dict[str, Any], out: Path) -> Path | None:
    raw = results["raw"].get("crash", {})
    if "fastest_ms" not in raw:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key in zip(axes, ("fastest_ms", "defaults_ms"), strict=True):
        data = [raw[key][t] for t in TOOLS]
        ax.boxplot(data, whis=(0, 100))
        ax.set_xticks(range(1, len(TOOLS) + 1), list(TOOLS))
        for x, values in enumerate(data, start=1):
            ax.scatter([x] * len(values), values, s=8, alpha=0.5, color=COLORS[TOOLS[x - 1]])
        ax.set_yscale("log")
        ax.set_title(f"crash-to-restart, {key.removesuffix('_ms')}")
        ax.set_ylabel("ms (log)")
        ax.axhline(5, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    path = out / "crash_distribution.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def status_cdf(results: dict[str, Any], out: Path) -> Path | None:
    raw = results["raw"].get("api", {}).get("sequential_ms")
    if not raw:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for tool in TOOLS:
        values = sorted(raw[tool]["all"])
        if values:
            ax.plot(
                values,
                [i / len(values) for i in range(len(values))],
                label=tool,
                color=COLORS[tool],
            )
    ax.set_xscale("log")
    ax.set_xlabel("status call latency, ms (log)")
    ax.set_ylabel("fraction of calls")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "api_status_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    written = scenario_figures(results, out)
    written += [p for p in (crash_distribution(results, out), status_cdf(results, out)) if p]
    print("\n".join(str(p) for p in written))


if __name__ == "__main__":
    main()
