"""Small helpers of the benchmark's CSV files and report cells: reading rows, numbers, means, formatting."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of the CSV file ``path`` as dicts keyed by its header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(value: Any) -> float:
    """``value`` as a float; NaN when it is empty or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def short_float(value: float | None) -> str:
    """A CSV cell of ``value`` (6 significant digits; empty for ``None``)."""
    return "" if value is None else f"{value:.6g}"


def cell(value: float, scale: float = 1.0, digits: int = 1) -> str:
    """A report cell: ``value * scale`` with ``digits`` decimals, ``n/a`` for a missing value."""
    return "n/a" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def mean(values: list[float]) -> float:
    """The mean of the values that are not NaN (NaN when there is none)."""
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def mean_range(values: list[float]) -> str:
    """``mean (min-max)`` of the values that are not NaN (the mean alone for one value, empty for none)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return ""
    avg = sum(values) / len(values)
    return f"{avg:.1f}" if len(values) == 1 else f"{avg:.1f} ({min(values):.1f}-{max(values):.1f})"
