"""Summaries, CSV files and a printable table of per-case metrics.

The summary has one row per class and one ``"mean"`` row (the "mean of classes" of the papers):

* per class: mean and (population, ``ddof=0``) standard deviation over cases of each metric,
  ``<metric>_n`` the number of cases the statistic is over (NaN values, i.e. HD95/ASD of a
  ``pred_empty`` / ``gt_empty`` case under the ``"nan"`` policy, are excluded, and counted), and
  the number of cases per status (``n_both_empty``, ``n_pred_empty``, ``n_gt_empty``);
* ``"mean"``: per case, the mean over classes, then mean and std over cases. A case with a NaN
  in any class has a NaN class-mean, so it is excluded from that metric's overall statistics
  and ``<metric>_n`` shows it; the status counts are summed over classes.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from vqseg_bundle.metrics.case_metrics import METRIC_NAMES, STATUSES, CaseClassMetrics

__all__ = ["summarize", "write_case_csv", "write_summary_csv", "format_summary_table", "OVERALL"]

OVERALL = "mean"


def _records(records: Iterable[CaseClassMetrics | Mapping[str, object]]) -> list[dict[str, object]]:
    return [r.as_dict() if isinstance(r, CaseClassMetrics) else dict(r) for r in records]


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std()), int(arr.size)


def summarize(
    records: Iterable[CaseClassMetrics | Mapping[str, object]], metrics: Sequence[str] = METRIC_NAMES
) -> list[dict[str, object]]:
    """Per-class and overall statistics of per-case records (see the module docstring).

    Args:
        records: output of :func:`~vqseg_bundle.metrics.compute_case_metrics` for any number of cases.
        metrics: metric columns to summarise.

    Returns:
        rows ``{"class_name", "class_index", "n_cases", "n_both_empty", "n_pred_empty", "n_gt_empty",
        "<metric>_mean", "<metric>_std", "<metric>_n", ...}``, classes in index order, then ``"mean"``
        (``class_index`` -1). Empty list for no records.
    """
    rows = _records(records)
    if not rows:
        return []
    classes = sorted({(int(r["class_index"]), str(r["class_name"])) for r in rows})
    cases = list(dict.fromkeys(str(r["case"]) for r in rows))
    out = []
    for ci, cname in classes:
        sel = [r for r in rows if int(r["class_index"]) == ci]
        row: dict[str, object] = {"class_name": cname, "class_index": ci, "n_cases": len(sel)}
        for s in STATUSES[1:]:
            row[f"n_{s}"] = sum(r["status"] == s for r in sel)
        for m in metrics:
            values = [float(r[m]) for r in sel]  # type: ignore[arg-type]
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = _stats(values)
        out.append(row)
    overall: dict[str, object] = {"class_name": OVERALL, "class_index": -1, "n_cases": len(cases)}
    for s in STATUSES[1:]:
        overall[f"n_{s}"] = sum(r["status"] == s for r in rows)
    for m in metrics:
        per_case = []
        for case in cases:
            vals = [float(r[m]) for r in rows if str(r["case"]) == case]  # type: ignore[arg-type]
            per_case.append(float(np.mean(vals)) if vals else math.nan)  # NaN propagates on purpose
        overall[f"{m}_mean"], overall[f"{m}_std"], overall[f"{m}_n"] = _stats(per_case)
    out.append(overall)
    return out


def _write_csv(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    import io

    from vqseg_bundle.fileio import atomic_write_text

    path = Path(path)
    fields = list(rows[0].keys()) if rows else []
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    # a temporary file in the same folder, fsync, rename: a crash never leaves a truncated CSV
    return atomic_write_text(path, buffer.getvalue())


def write_case_csv(records: Iterable[CaseClassMetrics | Mapping[str, object]], path: str | os.PathLike) -> Path:
    """Write one row per case and class (columns of :class:`CaseClassMetrics`); returns the path."""
    return _write_csv(_records(records), path)


def write_summary_csv(summary: list[dict[str, object]], path: str | os.PathLike) -> Path:
    """Write the rows of :func:`summarize`; returns the path."""
    return _write_csv(summary, path)


def format_summary_table(
    summary: list[dict[str, object]],
    metrics: Sequence[str] = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm"),
) -> str:
    """A fixed-width text table: one line per class and ``mean``, ``mean ± std`` per metric, with
    the per-status counts and, when some values were NaN (empty masks), ``[n=<valid>]``.

    Metrics whose values are all NaN (e.g. millimetre metrics without spacing) are left out.
    """
    if not summary:
        return "(no cases)"
    # metrics with no valid value at all (e.g. millimetres without spacing) are left out
    shown = [m for m in metrics if any(int(r.get(f"{m}_n", 0)) > 0 for r in summary)]  # type: ignore
    header = ["class", "cases", "missed", "spurious", "both_empty"] + list(shown)
    lines = []
    for r in summary:
        cells = [
            str(r["class_name"]),
            str(r["n_cases"]),
            str(r["n_pred_empty"]),
            str(r["n_gt_empty"]),
            str(r["n_both_empty"]),
        ]
        for m in shown:
            mean, std, n = r[f"{m}_mean"], r[f"{m}_std"], int(r[f"{m}_n"])  # type: ignore[call-overload]
            cell = "nan" if n == 0 else f"{mean:.4f} ± {std:.4f}"
            if 0 < n < int(r["n_cases"]):  # type: ignore[call-overload]
                cell += f" [n={n}]"
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])
