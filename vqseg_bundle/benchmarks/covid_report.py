"""The COVID-SemiSeg benchmark's report: the test-slice scores of every run under
``<results_dir>/covid_<protocol>/labeled<N>/<run>/`` as a Markdown section of ``docs/results.md``.

Per run, the infection class of ``test_metrics_per_case.csv`` (one row per test slice) is averaged over the slices
(Inf-Net's way: Dice, sensitivity, specificity per slice, then the mean; Jaccard, HD95 and ASD in pixels likewise,
over the slices where they are defined); per variant, the mean and standard deviation over its seeds; and the
semi-supervised gain of each variant over ``labeled_only`` in test Dice, seed by seed (same seed, same data order).
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import relative
from vqseg_bundle.benchmarks.publish import write_section
from vqseg_bundle.benchmarks.tabular import cell, number, read_csv
from vqseg_bundle.benchmarks.variants import variant_of

MARK_START = "<!-- covid-benchmark:start -->"
MARK_END = "<!-- covid-benchmark:end -->"
HEADING = "COVID-SemiSeg benchmark (chest CT lung infection, 2D slices)"
#: the per-slice columns averaged, and their report headers (percentages for the first four)
TEST_METRICS = (
    ("dice", "Dice"),
    ("sensitivity", "Sen."),
    ("specificity", "Spec."),
    ("jaccard", "Jaccard"),
    ("hd95_vox", "HD95 px"),
    ("asd_vox", "ASD px"),
)
_PERCENT = ("dice", "sensitivity", "specificity", "jaccard")
BASELINE = "labeled_only"


def slice_means(per_case_csv: Path, class_index: int = 1) -> dict[str, float]:
    """The mean over test slices of each :data:`TEST_METRICS` column for ``class_index``, NaN values left out;
    plus ``"slices"`` (rows read)."""
    rows = [r for r in read_csv(per_case_csv) if int(number(r["class_index"])) == class_index]
    out: dict[str, float] = {"slices": float(len(rows))}
    for key, _ in TEST_METRICS:
        values = [number(r.get(key)) for r in rows]
        values = [v for v in values if not math.isnan(v)]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def run_date(record: dict[str, Any], run_json: Path) -> str:
    """The ISO date a run was made: its ``environment.date`` (the file's modification time changes with every
    checkout, so it is only the fallback of a record without one)."""
    stamp = record.get("environment", {}).get("date")
    if stamp:
        return datetime.datetime.fromisoformat(stamp).date().isoformat()
    return datetime.date.fromtimestamp(run_json.stat().st_mtime).isoformat()


def collect(protocol_dir: Path) -> list[dict[str, Any]]:
    """One record per finished run (``run.json`` status ok with test scores) under ``protocol_dir``."""
    runs = []
    for run_json in sorted(protocol_dir.glob("labeled*/*/run.json")):
        record = json.loads(run_json.read_text())
        test_csv = run_json.parent / "test_metrics_per_case.csv"
        if record.get("status") != "ok" or not test_csv.exists():
            continue
        variant, seed = variant_of(run_json.parent.name)
        summary = run_json.parent / "metrics_summary.csv"
        val_rows = read_csv(summary) if summary.exists() else []
        val = [number(r.get("dice_mean")) for r in val_rows if r.get("class_name") == "mean"]
        runs.append(
            {
                "variant": variant,
                "seed": int(record.get("seed", seed)),
                "test": slice_means(test_csv),
                "val_dice": val[0] if val else math.nan,
                "train_min": number(record.get("train_seconds")) / 60,
                "machine": record.get("machine", ""),
                "train_command": record.get("train_command", ""),
                "test_command": record.get("test_command", ""),
                "description": record.get("protocol_description", ""),
                "date": run_date(record, run_json),
            }
        )
    return runs


def _mean_std(values: list[float], scale: float, digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return cell(values[0], scale, digits)
    return f"{cell(statistics.mean(values), scale, digits)} ± {cell(statistics.stdev(values), scale, digits)}"


def protocol_markdown(protocol: str, runs: list[dict[str, Any]]) -> str:
    """The tables of one protocol: per variant over seeds, per seed, and the gain over ``labeled_only``."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    head = "| variant | seeds | " + " | ".join(h for _, h in TEST_METRICS) + " | val Dice | train min |"
    descriptions = sorted({r["description"] for r in runs if r.get("description")})
    lines = [f"### Protocol `{protocol}`", ""]
    if descriptions:
        lines += [f"Schedule: {'; '.join(descriptions)}.", ""]
    lines += [head, "|" + " --- |" * (len(TEST_METRICS) + 4)]
    for v in variants:
        mine = sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"])
        cells = [_mean_std([r["test"][k] for r in mine], 100.0 if k in _PERCENT else 1.0) for k, _ in TEST_METRICS]
        seeds = ",".join(str(r["seed"]) for r in mine)
        lines.append(
            f"| `{v}` | {seeds} | "
            + " | ".join(cells)
            + f" | {_mean_std([r['val_dice'] for r in mine], 100.0)} | {_mean_std([r['train_min'] for r in mine], 1.0)} |"
        )
    lines += ["", "Test Dice (%) per seed, and the semi-supervised gain over `labeled_only` at the same seed:", ""]
    seeds = sorted({r["seed"] for r in runs})
    lines += [
        "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean gain |",
        "|" + " --- |" * (len(seeds) + 2),
    ]
    base = {r["seed"]: r["test"]["dice"] for r in runs if r["variant"] == BASELINE}
    for v in variants:
        by_seed = {r["seed"]: r["test"]["dice"] for r in runs if r["variant"] == v}
        cells, gains = [], []
        for s in seeds:
            if s not in by_seed:
                cells.append("")
                continue
            text = cell(by_seed[s], 100.0)
            if v != BASELINE and s in base:
                gains.append(by_seed[s] - base[s])
                text += f" ({gains[-1] * 100:+.1f})"
            cells.append(text)
        gain = f"{statistics.mean(gains) * 100:+.1f} ({len(gains)} seeds)" if gains else ""
        lines.append(f"| `{v}` | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines) + "\n"


def report_markdown(results_dir: Path) -> str:
    """The whole section: every ``covid_<protocol>`` folder of ``results_dir``, with the commands and machine."""
    parts = [
        "Test scores on the 48 COVID-SemiSeg test slices (infection class; per slice, then averaged over the slices, "
        "as Inf-Net reports them; mean ± std over seeds), measured by `python scripts/benchmark_covid.py run`; "
        "the model of each run is the one selected on the 10 validation slices. HD95 / ASD in pixels of the original "
        f"slices. Artefacts: `{relative(results_dir)}/covid_<protocol>/`.",
        "",
        "No published anchor rows: the Inf-Net / Semi-Inf-Net figures on these 48 slices (Fan et al., IEEE TMI 2020, "
        "its table of infection segmentation results) could not be read from a source here, so they are left out "
        "rather than quoted from memory.",
        "",
    ]
    found = False
    for pdir in sorted(p for p in results_dir.glob("covid_*") if p.is_dir()):
        runs = collect(pdir)
        if not runs:
            continue
        found = True
        parts.append(protocol_markdown(pdir.name[len("covid_") :], runs))
        machines = sorted({r["machine"] for r in runs if r["machine"]})
        dates = sorted(r["date"] for r in runs)
        parts += [f"Machine: {'; '.join(machines) or 'n/a'}. Runs dated {dates[0]} to {dates[-1]}.", ""]
        example = next((r for r in runs if r["train_command"]), None)
        if example:
            parts += ["Commands of one run (the others differ in variant and seed):", "", "```"]
            parts += [example["train_command"], example["test_command"], "```", ""]
    if not found:
        parts.append("No finished run yet (`python scripts/benchmark_covid.py run` writes them).\n")
    return "\n".join(parts)


def write_covid_report(results_dir: Path, docs_file: Path) -> None:
    """Rewrite the COVID-SemiSeg section of ``docs_file`` (between :data:`MARK_START` and :data:`MARK_END`)."""
    write_section(docs_file, report_markdown(results_dir), MARK_START, MARK_END, HEADING)
