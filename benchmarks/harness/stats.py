"""Summaries and the metric records every scenario returns."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max over repeated runs (and the count)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def metric(
    scenario: str,
    name: str,
    unit: str,
    values: Mapping[str, Sequence[float]],
    *,
    better: str = "lower",
    target: str | None = None,
    note: str | None = None,
    digits: int = 3,
) -> dict[str, Any]:
    """One row of the results table: a summary per tool that has a figure."""
    return {
        "scenario": scenario,
        "name": name,
        "unit": unit,
        "better": better,
        "target": target,
        "note": note,
        "tools": {tool: summary(list(v), digits) for tool, v in values.items() if v},
    }
