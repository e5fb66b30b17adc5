"""The markdown table: each figure as median (min-max), and dev8 as a ratio to each peer."""

from __future__ import annotations

import re
from typing import Any

from .tools import TOOLS

DASH = "\u2013"
TIMES = "\u00d7"


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cell(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("median") is None:
        return DASH
    if summary["n"] == 1 or summary["min"] == summary["max"]:
        return _number(summary["median"])
    return (
        f"{_number(summary['median'])} ({_number(summary['min'])}{DASH}{_number(summary['max'])})"
    )


def ratio(row: dict[str, Any], peer: str) -> str:
    """dev8 ÷ peer (medians); bold when dev8 is worse."""
    mine, theirs = row["tools"].get("dev8"), row["tools"].get(peer)
    if not mine or not theirs or mine["median"] is None or theirs["median"] is None:
        return DASH
    if theirs["median"] == 0:
        return DASH if mine["median"] == 0 else "**∞**"
    value = mine["median"] / theirs["median"]
    text = f"{value:.2g}{TIMES}" if value < 10 else f"{value:.0f}{TIMES}"
    worse = value > 1 if row["better"] == "lower" else value < 1
    return f"**{text}**" if worse and mine["median"] != theirs["median"] else text


def target_met(row: dict[str, Any]) -> str:
    target: str | None = row.get("target")
    if not target:
        return ""
    mine = row["tools"].get("dev8")
    found = re.match(r"<\s*([\d.,]+)", target)
    if not mine or mine["median"] is None or not found:
        return target
    met = mine["median"] < float(found.group(1).replace(",", ""))
    return f"{target} {'met' if met else '**missed**'}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    versions = meta["versions"]
    lines = [
        "# Benchmark results"
        + (" (quick smoke run: counts too small to mean anything)" if meta["quick"] else ""),
        "",
        f"- commit measured: `{meta['commit']}` (dev8 installed from {meta['dev8_source']}: "
        f"`{meta['dev8_identity'][:12]}`), {meta['date']}",
        f"- machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gb']} GB, "
        f"Linux {machine['kernel']}, Python {machine['python']}; load average at start "
        f"{' / '.join(map(str, machine['loadavg_start']))}, at end "
        f"{' / '.join(map(str, machine.get('loadavg_end', [])))}",
        f"- versions: dev8 {versions['dev8']}, supervisor {versions['supervisor']}, "
        f"circus {versions['circus']}; child program: {meta['child']}; "
        f"run took {meta.get('duration_s', 0):.0f} s",
        f"- cells: median (min{DASH}max) over repeated runs; ratio = dev8 ÷ peer (medians), "
        "**bold** where dev8 is worse",
        "",
        "| scenario | figure | unit | dev8 | supervisord | Circus "
        "| dev8÷supervisord | dev8÷Circus | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["metrics"]:
        cells = [cell(row["tools"].get(tool)) for tool in TOOLS]
        lines.append(
            f"| {row['scenario']} | {row['name']} | {row['unit']} | {' | '.join(cells)} | "
            f"{ratio(row, 'supervisord')} | {ratio(row, 'circus')} | {target_met(row)} |"
        )
    notes = sorted({row["note"] for row in results["metrics"] if row.get("note")})
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    raw = results.get("raw", {})
    floor = raw.get("crash", {}).get("floor_ms")
    if floor:
        lines += [
            "",
            f"- fork+exec floor (the harness starting the same child): "
            f"{_number(sorted(floor)[len(floor) // 2])} ms median",
        ]
    imports = raw.get("startup", {}).get("dev8_import_ms")
    if imports:
        top = ", ".join(f"{name} {ms:.0f}" for name, ms in list(imports.items())[:8])
        lines += [
            "- dev8 start-up imports (ms, self times by package, `-X importtime` of `dev8 run` "
            f"until its API answered): {top}"
        ]
    steps = raw.get("startup", {}).get("dev8_import_rss")
    if steps:
        parts = [f"{label} {rss:.0f} MB" for label, rss, _ in steps if not isinstance(rss, bool)]
        lines += ["- dev8 RSS after each import step: " + " → ".join(parts)]
    if results.get("failed"):
        lines += ["", "Failed scenarios: " + ", ".join(sorted(results["failed"]))]
    return "\n".join(lines) + "\n"
