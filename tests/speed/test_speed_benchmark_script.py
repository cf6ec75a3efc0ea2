"""scripts/benchmark_speed.py: argument checks, table, and one tiny real run through the bundle config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("benchmark_speed", ROOT / "scripts" / "benchmark_speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

TINY_UNET = (
    '{"image_size": 32, "codebook_size": 32, "network_def#features": [4, 8, 16, 32, 32], '
    '"batch_size_labeled": 2, "batch_size_unlabeled": 2, "fm_name": "none"}'
)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backbone", "resnet"], "backbone"),
        (["--variants", "fp8"], "variants"),
        (["--data", "dali"], "data"),
        (["--iterations", "0"], "iterations"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench._parse_args(argv)
    assert message in capsys.readouterr().err


def test_table_has_one_row_per_result_and_marks_errors():
    rows = [
        {
            "backbone": "unet",
            "batch": "12+12x2",
            "image_size": 256,
            "eps": 0.7,
            "variant": "fp32",
            "data": "batched",
            "ms_per_it": 12.5,
            "peak_mib": 100.0,
            "shares": {p: 100 / 7 for p in bench.PARTS},
            "val_ms": None,
        },
        {"backbone": "vit", "eps": 0.1, "variant": "compile", "data": "batched", "error": "boom"},
    ]
    table = bench.format_table(rows).splitlines()
    assert len(table) == 4 and "12.5" in table[2] and "error: boom" in table[3]


def test_tiny_run_drives_the_bundle_trainer(tmp_path):
    results = bench.main(
        [
            "--backbone",
            "unet",
            "--eps",
            "0.7",
            "--warmup",
            "1",
            "--iterations",
            "2",
            "--inprocess",
            "--threads",
            "1",
            "--set",
            TINY_UNET,
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    (r,) = results
    assert "error" not in r, r
    assert r["n_timed"] == 2 and r["ms_per_it"] > 0 and r["batch"] == "2+2x2" and r["image_size"] == 32
    shares = r["shares"]
    assert set(shares) == set(bench.PARTS)
    # the ranges partition the iteration (qpm is inside student); each is a real share
    assert abs(sum(v for k, v in shares.items() if k != "qpm") - 100.0) < 1e-6
    assert shares["student"] > 0 and shares["teacher"] > 0 and shares["backward"] > 0 and shares["data"] > 0
    assert 0 < shares["qpm"] <= shares["student"]
    assert (tmp_path / "r.json").exists()
