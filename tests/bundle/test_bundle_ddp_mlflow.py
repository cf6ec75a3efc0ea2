"""End-to-end: two-process DDP training (gloo, CPU) and `--tracking mlflow`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_helpers import MULTI_GPU, TINY, TRAIN, cli_args, run_cli

pytestmark = pytest.mark.slow


def test_two_process_ddp_training(tmp_path, demo_dir):
    overrides = {**TINY, "bundle_root": str(tmp_path), "data_cache_dir": demo_dir, "fm_name": "none"}
    config = repr([TRAIN, MULTI_GPU])
    proc = run_cli(["--config_file", config] + cli_args(overrides), torchrun=2, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # both ranks trained every step; only rank 0 validated and wrote files
    assert log.count("Engine run finished") >= 2
    assert (tmp_path / "models" / "model.pt").is_file()
    ckpt = torch.load(
        tmp_path / "outputs" / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True
    )
    assert ckpt["trainer"]["iteration"] == TINY["epochs"] * TINY["iterations_per_epoch"]
    # state dicts are the plain network's (no "module." prefix from DistributedDataParallel)
    assert not any(k.startswith("module.") for k in ckpt["network"])
    events = list((tmp_path / "outputs" / "tensorboard").glob("events.out.tfevents*"))
    writers = {f.name.split(".")[4] for f in events}  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert len(events) >= 1 and len(writers) == 1, events
    assert log.count("Got new best metric of val_mean_dice") >= 1


def test_tracking_mlflow(tmp_path, demo_dir):
    pytest.importorskip("mlflow")
    from monai.bundle.scripts import run

    overrides = {
        **TINY,
        "bundle_root": str(tmp_path),
        "data_cache_dir": demo_dir,
        "fm_name": "none",
        "epochs": 1,
        "iterations_per_epoch": 1,
    }
    run("training", config_file=TRAIN, tracking="mlflow", **overrides)
    db = Path(tmp_path) / "outputs" / "mlruns.db"
    assert db.is_file()
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    metrics = set().union(*(r.data.metrics for r in runs))
    assert "train_loss" in metrics and "val_mean_dice" in metrics, metrics
