"""scripts/benchmark_covid.py: the protocols load, the commands carry the COVID settings and the test scoring, and a
smoke run on a synthetic PNG data set goes through training, validation, test scoring and the report."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from vqseg_bundle.benchmarks.covid_report import protocol_markdown, run_date, slice_means
from vqseg_bundle.data.png_phantoms import make_png_dataset

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_covid", ROOT / "scripts" / "benchmark_covid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocols_and_dry_run(tmp_path, capsys):
    script = _script()
    cpu = script.PROTOCOLS["cpu"]
    overrides = cpu.schedule_overrides()
    assert overrides["labeled"] == "all" and overrides["num_classes"] == 2
    assert overrides["label_mapping"] == {0: 0, 255: 1} and cpu.image_size == 96 and cpu.threads == 1
    make_png_dataset(tmp_path / "data")
    bench = script.Benchmark()
    bench.run(dataset_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "res"), dry_run=True, seeds=[0, 2])
    assert [(r["variant"], r["seed"], r["status"]) for r in bench.records] == [
        (v, s, "dry_run") for s in (0, 2) for v in script.DEFAULT_VARIANTS
    ]
    test_cmd = bench.records[0]["test_command"]
    assert "--validation_split test" in test_cmd and "eval_test" in test_cmd


def test_slice_means_and_gain_table(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "case,class_index,class_name,dice,sensitivity,specificity,jaccard,hd95_vox,asd_vox\n"
        "a,1,infection,0.5,0.4,1.0,0.3,2,1\n"
        "b,1,infection,0.7,0.6,0.9,0.5,,\n"
    )
    means = slice_means(csv)
    assert means["dice"] == pytest.approx(0.6) and means["hd95_vox"] == 2.0 and means["slices"] == 2
    runs = [
        {"variant": v, "seed": s, "test": {**means, "dice": d}, "val_dice": math.nan, "train_min": 1.0}
        for v, s, d in [("labeled_only", 0, 0.5), ("labeled_only", 1, 0.6), ("unimatch", 0, 0.6), ("unimatch", 1, 0.8)]
    ]
    text = protocol_markdown("cpu", runs)
    assert "| `unimatch` | 60.0 (+10.0) | 80.0 (+20.0) | +15.0 (2 seeds) |" in text
    assert "Schedule:" not in text
    runs[0]["description"] = "96 px U-Net, 1000 iterations"
    assert "Schedule: 96 px U-Net, 1000 iterations." in protocol_markdown("cpu", runs)


def test_run_date_is_the_recorded_one_not_the_checkout_time(tmp_path):
    run_json = tmp_path / "run.json"
    run_json.write_text("{}")
    assert run_date({"environment": {"date": "2026-12-06T08:14:17+00:00"}}, run_json) == "2026-12-06"
    # a record without one falls back to the file's time, still an ISO date
    assert len(run_date({}, run_json).split("-")) == 3


@pytest.mark.slow
def test_smoke_run_trains_tests_and_reports(tmp_path, one_thread):
    make_png_dataset(tmp_path / "data", n_test=3)
    script = _script()
    bench = script.Benchmark()
    docs = tmp_path / "results.md"
    bench.run(
        protocol="smoke",
        variants=["unimatch"],
        seeds=[0],
        dataset_dir=str(tmp_path / "data"),
        work_dir=str(tmp_path / "work"),
        results_dir=str(tmp_path / "res"),
        docs_file=str(docs),
        extra={"label_mapping": {0: 0, 255: 1}},
    )
    assert [r["status"] for r in bench.records] == ["ok"], bench.records[0].get("error_tail")
    run_dir = tmp_path / "res" / "covid_smoke" / "labeled40" / "unimatch"
    assert len((run_dir / "test_metrics_per_case.csv").read_text().splitlines()[1:]) == 3
    text = docs.read_text()
    assert "<!-- covid-benchmark:start -->" in text and "| `unimatch` | 0 |" in text
