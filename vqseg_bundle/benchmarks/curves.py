"""A run's TensorBoard scalars as the benchmark's CSV files: validation curve and training terms."""

from __future__ import annotations

import csv
from pathlib import Path

from vqseg_bundle.benchmarks.tabular import short_float


def read_tensorboard(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under ``log_dir``: ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    if not log_dir.exists():
        return {}
    for event_file in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                series.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return {tag: sorted(values.items()) for tag, values in series.items()}


def write_curves(series: dict[str, list[tuple[int, float]]], iterations_per_epoch: int, out_dir: Path) -> None:
    """``curve.csv`` (validation metrics per iteration) and ``train_scalars.csv`` (training terms)."""
    val_tags = sorted(t for t in series if t.startswith("val_"))
    epochs = sorted({s for t in val_tags for s, _ in series[t]})
    with open(out_dir / "curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", *val_tags])
        for ep in epochs:
            row = [ep * iterations_per_epoch]
            for t in val_tags:
                row.append(dict(series[t]).get(ep, ""))
            w.writerow(row)
    train_tags = sorted(t for t in series if not t.startswith("val_") and "/" not in t.split("train_", 1)[-1])
    steps = sorted({s for t in train_tags for s, _ in series[t]})
    with open(out_dir / "train_scalars.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", *train_tags])
        lookup = {t: dict(series[t]) for t in train_tags}
        for s in steps:
            w.writerow([s, *[short_float(lookup[t].get(s)) for t in train_tags]])
