"""Paired-seed comparisons of the ACDC benchmark (``configs/benchmarks/acdc_comparisons.yaml``): a candidate
(protocol, variant) against a reference over the same seeds, the validation mean Dice at the last iteration of
each run, the per-seed differences, and the targets each comparison names, checked automatically."""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import SPEC_DIR
from vqseg_bundle.benchmarks.spec import check_keys, read_spec, section
from vqseg_bundle.benchmarks.tabular import mean, number, read_csv
from vqseg_bundle.benchmarks.variants import run_name

COMPARISONS_FILE = SPEC_DIR / "acdc_comparisons.yaml"
TARGETS = ("mean_margin_min", "paired_wins_min", "seed_floor", "time_ratio_max")


def load_comparisons(path: Path = COMPARISONS_FILE) -> dict[str, dict[str, Any]]:
    """The comparisons of ``path``, checked: ``{name: {title, labeled, seeds, reference, candidate, targets}}``.

    Raises:
        ValueError: missing or unknown keys, a side without ``protocol`` / ``variant``, an unknown target.
    """
    entries = section(read_spec(path, ("comparisons",)), "comparisons", path)
    keys = ("title", "labeled", "seeds", "reference", "candidate", "targets")
    for name, entry in entries.items():
        where = f"{path}: comparison {name!r}"
        check_keys(where, entry, keys, ("title", "labeled", "seeds", "reference", "candidate"))
        for side in ("reference", "candidate"):
            check_keys(f"{where} {side}", entry[side], ("protocol", "variant"), ("protocol", "variant"))
        unknown = sorted(set(entry.get("targets") or {}) - set(TARGETS))
        if unknown:
            raise ValueError(f"{where}: unknown targets {unknown}; expected some of {TARGETS}")
    return entries


def final_dice(results_dir: Path, protocol: str, labeled: int, variant: str, seed: int) -> tuple[float, float]:
    """``(validation mean Dice in % at the run's last validated iteration, train seconds)`` of one finished run;
    NaNs when the run is absent or did not finish."""
    rdir = results_dir / f"acdc_{protocol}" / f"labeled{labeled}" / run_name(variant, seed)
    if not (rdir / "run.json").exists() or not (rdir / "curve.csv").exists():
        return math.nan, math.nan
    record = json.loads((rdir / "run.json").read_text())
    if record.get("status") != "ok":
        return math.nan, math.nan
    curve = [(int(r["iteration"]), number(r["val_mean_dice"])) for r in read_csv(rdir / "curve.csv")]
    curve = [(i, v) for i, v in curve if not math.isnan(v)]
    if not curve:
        return math.nan, math.nan
    return 100 * max(curve)[1], number(record.get("train_seconds"))


def _above_minus(value: float, floor: float) -> bool:
    """``value >= -floor`` (a target given as a positive distance below the reference)."""
    return value >= -floor


def evaluate(entry: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """Per-seed Dice of both sides, paired differences, means and each target's value and verdict."""
    ref, cand = entry["reference"], entry["candidate"]
    rows = []
    for seed in entry["seeds"]:
        r, rt = final_dice(results_dir, ref["protocol"], int(entry["labeled"]), ref["variant"], int(seed))
        c, ct = final_dice(results_dir, cand["protocol"], int(entry["labeled"]), cand["variant"], int(seed))
        rows.append({"seed": int(seed), "reference": r, "candidate": c, "ref_seconds": rt, "cand_seconds": ct})
    pairs = [row for row in rows if not (math.isnan(row["reference"]) or math.isnan(row["candidate"]))]
    out: dict[str, Any] = {"rows": rows, "pairs": len(pairs), "targets": []}
    if not pairs:
        return out
    ref_mean = mean([row["reference"] for row in pairs])
    cand_mean = mean([row["candidate"] for row in pairs])
    out.update(reference_mean=ref_mean, candidate_mean=cand_mean)
    complete = len(pairs) == len(rows)
    targets = entry.get("targets") or {}
    wins = sum(row["candidate"] > row["reference"] for row in pairs)
    floor = min(row["candidate"] for row in pairs) - min(row["reference"] for row in pairs)
    ratio = mean([row["cand_seconds"] for row in pairs]) / mean([row["ref_seconds"] for row in pairs])
    # target key: (what is shown, its value, how the value reads, how the bar reads, whether the value meets it)
    measures = {
        "mean_margin_min": ("mean margin", cand_mean - ref_mean, "{:+.1f} points", ">= {:+.1f}", operator.ge),
        "paired_wins_min": ("paired seeds won", wins, "{} of " + str(len(pairs)), ">= {}", operator.ge),
        "seed_floor": ("lowest seed - reference's lowest", floor, "{:+.1f} points", ">= -{:.1f}", _above_minus),
        "time_ratio_max": ("train time ratio", ratio, "{:.2f} x", "<= {:.2f} x", operator.le),
    }
    checks = [
        (name, shown.format(value), bar.format(targets[key]), meets(value, targets[key]))
        for key, (name, value, shown, bar, meets) in measures.items()
        if key in targets
    ]
    out["targets"] = [
        {"name": n, "value": v, "bar": b, "verdict": ("met" if ok else "missed") if complete else "pending"}
        for n, v, b, ok in checks
    ]
    return out


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def build_comparisons(results_dir: Path, path: Path = COMPARISONS_FILE) -> list[str]:
    """The report's "Paired comparisons" subsection (empty when no comparison has a finished pair)."""
    lines: list[str] = []
    for name, entry in load_comparisons(path).items():
        result = evaluate(entry, results_dir)
        if not result["pairs"]:
            continue
        ref, cand = entry["reference"], entry["candidate"]
        lines += [
            f"#### {entry['title']} (`{name}`)",
            "",
            f"{entry['labeled']} labeled patients; reference `{ref['variant']}` on `{ref['protocol']}`, candidate "
            f"`{cand['variant']}` on `{cand['protocol']}`; validation mean Dice (%) at the last iteration; train "
            "minutes of runs made two side by side (one thread each).",
            "",
            "| seed | reference | candidate | difference | reference min | candidate min |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["rows"]:
            diff = row["candidate"] - row["reference"]
            lines.append(
                f"| {row['seed']} | {_cell(row['reference'])} | {_cell(row['candidate'])} | "
                f"{'n/a' if math.isnan(diff) else f'{diff:+.1f}'} | {_cell(row['ref_seconds'] / 60)} | "
                f"{_cell(row['cand_seconds'] / 60)} |"
            )
        lines.append(
            f"| mean ({result['pairs']} of {len(result['rows'])} seeds) | {_cell(result['reference_mean'])} | "
            f"{_cell(result['candidate_mean'])} | {result['candidate_mean'] - result['reference_mean']:+.1f} | | |"
        )
        if result["targets"]:
            lines += ["", "Targets:", ""]
            lines += [f"* {t['name']}: {t['value']} (bar {t['bar']}): {t['verdict']}" for t in result["targets"]]
        lines.append("")
    if lines:
        lines = [
            "### Paired comparisons and their targets",
            "",
            "Generated from `configs/benchmarks/acdc_comparisons.yaml`; a verdict is *pending* until every listed "
            "seed of both sides has finished.",
            "",
            *lines,
        ]
    return lines
