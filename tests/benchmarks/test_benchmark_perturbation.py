"""Tests of scripts/benchmark_perturbation.py: the settings, the response measure and the report section."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from vqseg_bundle.networks import FeatureDropout, QuantizedPerturbation, VQSegUNet

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_perturbation.py"


@pytest.fixture(scope="module")
def bp():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("benchmark_perturbation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _net(vq: bool) -> VQSegUNet:
    torch.manual_seed(0)
    kwargs = (
        dict(vq_levels="all", codebook_size=32, perturbation=QuantizedPerturbation())
        if vq
        else dict(vq_levels=[], perturbation=FeatureDropout())
    )
    return VQSegUNet(features=(4, 8, 16), reconstruction=False, **kwargs).eval()


def test_settings_cover_dropout_and_every_qpm_mode(bp):
    assert {s["kind"] for s in bp.settings(False)} == {"dropout"}
    qpm = [s for s in bp.settings(True) if s["kind"] == "qpm"]
    assert {s["mode"] for s in qpm} == {"kernel", "shuffle"}
    assert {s["eps"] for s in qpm} == set(bp.EPS)
    assert {s.get("temperature") for s in qpm if s["mode"] == "kernel"} == set(bp.TEMPERATURES)
    assert len({bp.label(s) for s in bp.settings(True)}) == len(bp.settings(True))


def test_response_is_zero_without_perturbation_and_grows_with_strength(bp):
    net = _net(vq=True)
    x = torch.rand(6, 1, 16, 16)
    none = bp.measure(net, x, {"kind": "qpm", "mode": "kernel", "eps": 0.0, "temperature": 1.0}, seed=0)
    assert none["changed"] == 0.0 and none["kl"] == pytest.approx(0.0, abs=1e-7)
    weak = bp.measure(net, x, {"kind": "dropout", "p": 0.1}, seed=0)
    strong = bp.measure(net, x, {"kind": "dropout", "p": 0.9}, seed=0)
    assert strong["kl"] > weak["kl"] > 0
    qpm = bp.measure(net, x, {"kind": "qpm", "mode": "shuffle", "eps": 0.9}, seed=0)
    assert qpm["kl"] > 0  # every level is quantized, so index changes reach the output
    assert net.feature_perturbation is None and net.perturb_levels == net.vq_levels


def test_report_writes_a_table_and_a_plot(bp, tmp_path):
    rows = [
        {**s, "fg_changed": 0.1 * i, "changed": 0.01, "kl": 0.001, "foreground_pixels": 10}
        for i, s in enumerate(bp.settings(True))
    ]
    result = {
        "name": "tiny",
        "vq_levels": [4],
        "slices": 3,
        "image_size": 16,
        "date": "2026-12-02",
        "machine": "test",
        "command": "python scripts/benchmark_perturbation.py run ...",
        "rows": rows,
    }
    out = tmp_path / "res"
    out.mkdir()
    (out / "tiny.json").write_text(json.dumps(result))
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n")
    bp.Cli().report(out_dir=str(out), docs_file=str(docs), plot=str(tmp_path / "p.png"))
    text = docs.read_text()
    assert bp.MARK_START in text and "| dropout (fg changed / KL) |" in text and "QPM shuffle" in text
    assert (tmp_path / "p.png").stat().st_size > 0
    bp.Cli().report(out_dir=str(out), docs_file=str(docs), plot=str(tmp_path / "p.png"))
    assert docs.read_text().count(bp.MARK_START) == 1  # rewritten in place


def test_own_setting_restores_the_trained_perturbation(bp):
    net = _net(vq=True)
    own_qpm = net.qpm
    assert bp.settings(True, "qpm")[0] == {"kind": "own", "name": "qpm"}
    assert all(s["kind"] != "own" for s in bp.settings(True))
    bp.configure(net, {"kind": "dropout", "p": 0.5})
    assert net.qpm is None and isinstance(net.feature_perturbation, FeatureDropout)
    bp.configure(net, {"kind": "own", "name": "qpm"})
    assert net.qpm is own_qpm and net.feature_perturbation is None
    stats = bp.measure(net, torch.randn(2, 1, 16, 16), {"kind": "own", "name": "qpm"}, seed=0)
    assert 0.0 <= stats["fg_changed"] <= 1.0
