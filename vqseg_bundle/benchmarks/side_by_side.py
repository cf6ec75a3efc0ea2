"""The report's comparison of the bundle's ``cpu_peer`` runs with the UniMatch peer's own runs: validation mean
Dice at equal iteration counts, the targets of "Semi-supervision that works", one learning-curve plot per
labeled count."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import PEER_RESULTS, labeled_dirs
from vqseg_bundle.benchmarks.protocols import PROTOCOLS
from vqseg_bundle.benchmarks.publish import pyplot, save_figure
from vqseg_bundle.benchmarks.tabular import mean, mean_range, number, read_csv
from vqseg_bundle.benchmarks.variants import VARIANTS, variant_of

SIDE_BY_SIDE_PROTOCOL = "cpu_peer"
SIDE_BY_SIDE_POINTS = (500, 1000, 1500, 2000)
#: peer rows: (label, file stem); files ``<stem>_s<seed>.csv`` (3 patients) and ``<stem>_l7.csv`` (7 patients, seed 0)
PEER_ROWS = (("peer supervised", "supervised_64"), ("peer UniMatch", "unimatch_64"))


def _peer_curves(peers_dir: Path, stem: str, labeled: int) -> tuple[list[dict[int, float]], list[float]]:
    """Mean-Dice curves (%) of the peer's own runs, one ``{iteration: dice}`` per seed, and their wall minutes
    (the CSV's ``seconds`` at the last row)."""
    files = (
        sorted(peers_dir.glob(f"{stem}_s*.csv")) if labeled == 3 else sorted(peers_dir.glob(f"{stem}_l{labeled}.csv"))
    )
    curves, minutes = [], []
    for f in files:
        rows = [r for r in read_csv(f) if r.get("iter", "").isdigit()]
        curves.append({int(r["iter"]): number(r["mean"]) for r in rows})
        minutes.append(number(rows[-1].get("seconds")) / 60 if rows else float("nan"))
    return curves, minutes


def _bundle_curves(ldir: Path) -> dict[str, list[tuple[dict[int, float], dict[str, Any]]]]:
    """``{variant: [(curve {iteration: dice %}, run.json), ...]}`` over the seeds finished under ``ldir``."""
    out: dict[str, list] = {}
    for rdir in sorted(ldir.iterdir()) if ldir.exists() else []:
        rec_path = rdir / "run.json"
        if not rec_path.exists() or not (rdir / "curve.csv").exists():
            continue
        rec = json.loads(rec_path.read_text())
        if rec.get("status") != "ok":
            continue
        curve = {
            int(r["iteration"]): 100 * number(r["val_mean_dice"])
            for r in read_csv(rdir / "curve.csv")
            if r.get("val_mean_dice")
        }
        out.setdefault(variant_of(rdir.name)[0], []).append((curve, rec))
    return out


def build_side_by_side(results_dir: Path, docs_dir: Path, docs_file: Path, peers_dir: Path = PEER_RESULTS) -> list[str]:
    """The bundle's ``cpu_peer`` runs beside the peer's own runs: validation mean Dice (%) at equal iteration
    counts (mean and range over seeds), the issue's targets, and a learning-curve plot per labeled count."""
    pdir = results_dir / f"acdc_{SIDE_BY_SIDE_PROTOCOL}"
    if not pdir.exists():
        return []
    lines = [
        "### Side by side with the UniMatch peer (protocol `cpu_peer`)",
        "",
        f"{PROTOCOLS[SIDE_BY_SIDE_PROTOCOL].description}. Validation mean Dice (%) on the 20 volumes at the given "
        "iteration, mean over seeds (range in brackets); *best* = the best validation point of each run, averaged. "
        "**Peer rows are the peer's own code** (`../shared/peers/run_unimatch_cpu.py`, curves in "
        "`../shared/peers/results/`); bundle rows are `python scripts/benchmark_acdc.py run --protocol cpu_peer "
        "--variants \"['<variant>']\" --seed <N>` (commands in each `run.json`).",
        "",
    ]
    for ldir in labeled_dirs(pdir):
        labeled = int(ldir.name[len("labeled") :])
        bundle = _bundle_curves(ldir)
        rows: list[tuple[str, str, list[dict[int, float]], list[float]]] = []
        for label, stem in PEER_ROWS:
            curves, minutes = _peer_curves(peers_dir, stem, labeled)
            if curves:
                rows.append((label, "peer's own code", curves, minutes))
        order = list(VARIANTS)
        for variant in sorted(bundle, key=lambda v: order.index(v) if v in order else len(order)):
            runs = bundle[variant]
            rows.append(
                (variant, "bundle", [c for c, _ in runs], [r.get("train_seconds", float("nan")) / 60 for _, r in runs])
            )
        lines += [
            f"#### {labeled} labeled patients",
            "",
            "| row | code | seeds | " + " | ".join(str(p) for p in SIDE_BY_SIDE_POINTS) + " | best | train min |",
            "| --- | --- | --- | " + " | ".join("---" for _ in SIDE_BY_SIDE_POINTS) + " | --- | --- |",
        ]
        finals: dict[str, float] = {}
        for label, code, curves, minutes in rows:
            cells = [mean_range([c.get(p, float("nan")) for c in curves]) for p in SIDE_BY_SIDE_POINTS]
            best = mean_range([max(c.values()) for c in curves if c])
            finals[label] = mean([c.get(SIDE_BY_SIDE_POINTS[-1], float("nan")) for c in curves])
            lines.append(
                f"| {label} | {code} | {len(curves)} | " + " | ".join(cells) + f" | {best} | {mean_range(minutes)} |"
            )
        lines += ["", *_side_by_side_targets(finals, labeled), ""]
        png = docs_dir / f"acdc_side_by_side_{labeled}.png"
        _plot_side_by_side(rows, labeled, png)
        lines += [f"![side by side]({os.path.relpath(png, docs_file.parent)})", ""]
    return lines


def _side_by_side_targets(finals: dict[str, float], labeled: int) -> list[str]:
    """The targets of "Semi-supervision that works", on the means at the last iteration (points)."""
    out = ["Targets (means at the last iteration):", ""]

    def check(text: str, value: float, ok: bool) -> None:
        if not math.isnan(value):
            out.append(f"* {text}: {value:+.1f} points: {'met' if ok else 'missed'}")

    sup, uni = finals.get("peer supervised", math.nan), finals.get("peer UniMatch", math.nan)
    lab, bun = finals.get("labeled_only", math.nan), finals.get("unimatch", math.nan)
    vq = {k: v for k, v in finals.items() if k.startswith("vq") and not math.isnan(v)}
    if labeled == 3:
        check("bundle labeled_only - peer supervised (within 3)", lab - sup, abs(lab - sup) <= 3)
        check("bundle unimatch - peer UniMatch (within 2)", bun - uni, abs(bun - uni) <= 2)
        check("bundle unimatch - bundle labeled_only (>= +10)", bun - lab, bun - lab >= 10)
        if vq:
            best = max(vq, key=vq.get)
            check(f"best VQ-Seg variant ({best}) - bundle unimatch (>= +2)", vq[best] - bun, vq[best] - bun >= 2)
            worst = min(vq, key=vq.get)
            check(f"worst VQ-Seg variant ({worst}) - labeled_only (>= 0)", vq[worst] - lab, vq[worst] - lab >= 0)
    else:
        semi = {
            k: v for k, v in finals.items() if not k.startswith("peer") and k != "labeled_only" and not math.isnan(v)
        }
        for k, v in semi.items():
            check(f"{k} - labeled_only (>= 0)", v - lab, v - lab >= 0)
    return out if len(out) > 2 else []


def _plot_side_by_side(rows: list, labeled: int, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for label, code, curves, _ in rows:
        points = sorted({p for c in curves for p in c})
        means = [mean([c.get(p, float("nan")) for c in curves]) for p in points]
        ax.plot(
            points,
            means,
            marker="o",
            linestyle="--" if code.startswith("peer") else "-",
            label=f"{label} ({len(curves)})",
        )
    ax.set(
        xlabel="iteration",
        ylabel="validation mean Dice (%)",
        title=f"ACDC, {labeled} labeled, 64 px, batch 4 + 4, SGD (dashed: peer's own code)",
    )
    save_figure(fig, [ax], path)
