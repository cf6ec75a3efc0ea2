"""Paired-seed comparisons of the ACDC report (vqseg_bundle/benchmarks/comparisons.py) and their targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vqseg_bundle.benchmarks.comparisons import build_comparisons, evaluate, load_comparisons


def _run(root: Path, protocol: str, name: str, dice: float, seconds: float = 600.0, status: str = "ok") -> None:
    rdir = root / f"acdc_{protocol}" / "labeled3" / name
    rdir.mkdir(parents=True)
    (rdir / "run.json").write_text(json.dumps({"status": status, "train_seconds": seconds}))
    # the last iteration counts, not the best one
    (rdir / "curve.csv").write_text(f"iteration,val_mean_dice\n1000,0.9\n2000,{dice / 100}\n")


ENTRY = {
    "title": "t",
    "labeled": 3,
    "seeds": [0, 1, 2],
    "reference": {"protocol": "p", "variant": "ref"},
    "candidate": {"protocol": "p", "variant": "cand"},
    "targets": {"mean_margin_min": 2.0, "paired_wins_min": 2, "seed_floor": 2.0, "time_ratio_max": 1.25},
}


def _verdicts(result):
    return {t["name"]: t["verdict"] for t in result["targets"]}


def test_targets_met_and_missed(tmp_path):
    for seed, (r, c) in enumerate([(60.0, 64.0), (62.0, 61.0), (64.0, 67.0)]):
        suffix = "" if seed == 0 else f"_seed{seed}"
        _run(tmp_path, "p", f"ref{suffix}", r, 600)
        _run(tmp_path, "p", f"cand{suffix}", c, 800)
    result = evaluate(ENTRY, tmp_path)
    assert result["pairs"] == 3
    assert result["candidate_mean"] - result["reference_mean"] == pytest.approx(2.0)
    assert _verdicts(result) == {
        "mean margin": "met",
        "paired seeds won": "met",
        "lowest seed - reference's lowest": "met",
        "train time ratio": "missed",  # 800 / 600 = 1.33
    }


def test_incomplete_seeds_are_pending_and_unfinished_runs_do_not_count(tmp_path):
    _run(tmp_path, "p", "ref", 60.0)
    _run(tmp_path, "p", "cand", 70.0)
    _run(tmp_path, "p", "ref_seed1", 60.0)
    _run(tmp_path, "p", "cand_seed1", 70.0, status="failed")
    result = evaluate(ENTRY, tmp_path)
    assert result["pairs"] == 1
    assert set(_verdicts(result).values()) == {"pending"}


def test_report_lists_the_shipped_comparisons_and_skips_empty_ones(tmp_path):
    comparisons = load_comparisons()
    assert "vqseg_default" in comparisons and "fast_path" in comparisons
    assert build_comparisons(tmp_path) == []
    ref, cand = comparisons["fast_path"]["reference"], comparisons["fast_path"]["candidate"]
    _run(tmp_path, ref["protocol"], ref["variant"], 63.0)
    _run(tmp_path, cand["protocol"], cand["variant"], 62.0, 300)
    text = "\n".join(build_comparisons(tmp_path))
    assert "`fast_path`" in text and "| 0 | 63.0 | 62.0 | -1.0 |" in text and "pending" in text


def test_unknown_target_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    entry = dict(ENTRY, targets={"mean_margin": 1})
    path.write_text(json.dumps({"comparisons": {"x": entry}}))
    with pytest.raises(ValueError, match="unknown targets"):
        load_comparisons(path)
