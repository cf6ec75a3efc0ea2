"""End-to-end: `python -m monai.bundle run training` on the demo data, model.pt, resume, properties, errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from bundle_helpers import DINOV2, MULTI_GPU, PAPER, TINY, TINY_VIT, TRAIN, cli_args, error_chain, run_cli
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

pytestmark = pytest.mark.slow


def _overrides(tmp: Path, demo_dir: str, vit: bool = False, **extra) -> dict:
    base = {k: v for k, v in TINY.items() if not (vit and k == "network_def#features")}
    if vit:
        base.update(TINY_VIT)
        base["fm_kwargs#vit_kwargs"] = TINY_VIT["vit_kwargs"]
    return {**base, "bundle_root": str(tmp), "data_cache_dir": demo_dir, **extra}


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory, demo_dir):
    """One real CLI training run of the U-Net with the paper's recipe (configs/recipe_paper.yaml: quantized
    bottleneck, QPM, reconstruction) and the EfficientNet-Lite0 PFA foundation model."""
    tmp = tmp_path_factory.mktemp("unet_run")
    args = ["--config_file", repr([TRAIN, PAPER])] + cli_args(_overrides(tmp, demo_dir, fm_name="efficientnet_lite0"))
    proc = run_cli(args)
    return tmp, proc


def test_cli_training_writes_flat_teacher_and_logs_terms(unet_run, demo_dir):
    tmp, proc = unet_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for term in ("loss_sup", "loss_unsup", "loss_rec", "loss_align", "loss_vq", "mask_ratio", "codebook_usage"):
        assert term in log, term
    assert "val_mean_dice" in log
    # models/model.pt: a flat state dict of network_def (the EMA teacher), loadable strictly
    state = torch.load(tmp / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    parser = ConfigParser()
    parser.read_config([TRAIN, PAPER])
    parser.update(_overrides(tmp, demo_dir, fm_name="efficientnet_lite0"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(state, strict=True)
    # resumable checkpoint under output_dir with everything needed to continue
    ckpt = torch.load(tmp / "outputs" / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert {"network", "teacher", "optimizer", "lr_scheduler", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == TINY["epochs"] * TINY["iterations_per_epoch"]
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp / "outputs" / "tensorboard").iterdir())


def _workflow(tmp: Path, demo_dir: str, files=(TRAIN,), **extra) -> ConfigWorkflow:
    overrides = _overrides(tmp, demo_dir, vit=DINOV2 in files, **extra)
    wf = ConfigWorkflow(config_file=list(files), workflow_type="train", **overrides)
    wf.initialize()
    return wf


def _record_lr(trainer, lrs: dict):
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: lrs.update({e.state.iteration: float(e.state.output[0]["lr"])})
    )


def test_resume_continues_schedule_and_step_count(tmp_path, demo_dir):
    epochs, length, lr0, power = 2, 2, 0.01, 0.9
    total = epochs * length
    extra = dict(fm_name="none", val_interval=10)
    # run 1: stopped after 3 of 4 iterations (mid-epoch); the final checkpoint is written on the way out
    wf = _workflow(tmp_path, demo_dir, **extra)
    trainer = wf.parser.get_parsed_content("train#trainer")
    lrs: dict = {}
    _record_lr(trainer, lrs)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
    wf.run()
    wf.finalize()
    assert trainer.state.iteration == 3
    # run 2: --resume true picks the latest checkpoint and continues to the planned end
    wf2 = _workflow(tmp_path, demo_dir, resume=True, **extra)
    trainer2 = wf2.parser.get_parsed_content("train#trainer")
    _record_lr(trainer2, lrs)
    first = []
    trainer2.add_event_handler(Events.ITERATION_STARTED(once=4), lambda e: first.append(e.state.iteration))
    wf2.run()
    wf2.finalize()
    assert first == [4]  # step 4 is the first step of the resumed run: no step repeated or lost
    assert trainer2.state.iteration == total and trainer2.state.epoch == epochs
    # the learning rate of every step follows one uninterrupted poly schedule
    expected = {t: lr0 * (1 - (t - 1) / total) ** power for t in range(1, total + 1)}
    assert sorted(lrs) == list(range(1, total + 1))
    for t in expected:
        assert math.isclose(lrs[t], expected[t], rel_tol=1e-6, abs_tol=1e-12), (t, lrs[t], expected[t])


def test_vit_variant_trains_with_explicit_random_weights(tmp_path, demo_dir):
    from monai.bundle.scripts import run

    overrides = _overrides(tmp_path, demo_dir, vit=True, epochs=1, val_interval=1)
    run("training", config_file=[TRAIN, DINOV2], **overrides)
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("backbone.") for k in state)


def test_vit_without_weights_fails_clearly(tmp_path, demo_dir):
    wf = _workflow(
        tmp_path, demo_dir, files=(TRAIN, DINOV2), pretrained=True, dinov2_weights=str(tmp_path / "missing.pth")
    )
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("network_def")
    chain = error_chain(info.value)
    assert any("missing.pth" in m for m in chain), chain
    # issue 23 item 7: the message names the flag that sets the file, not only the file
    assert any("missing.pth" in m and "--dinov2_weights" in m for m in chain), chain


@pytest.mark.parametrize("files", [(TRAIN,), (TRAIN, DINOV2), (TRAIN, MULTI_GPU)], ids=["unet", "dinov2", "ddp"])
def test_check_properties(tmp_path, demo_dir, files, monkeypatch):
    extra = dict(fm_name="none")
    if MULTI_GPU in files:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(29400 + os.getpid() % 500))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("LOCAL_RANK", "0")
    wf = _workflow(tmp_path, demo_dir, files=files, **extra)
    try:
        assert wf.check_properties() == []
    finally:
        wf.finalize()


def test_empty_dataset_fails_before_training(tmp_path, demo_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception) as info:
        _workflow(tmp_path, demo_dir, dataset_dir=str(empty))
    chain, e = [], info.value
    while e is not None:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    assert any("DataIntegrityError" in m and str(empty) in m for m in chain), chain


def test_label_out_of_range_fails_before_training(tmp_path, demo_dir):
    import nibabel as nib
    import numpy as np
    from vqseg_bundle.data import make_demo_dataset

    data = tmp_path / "data"
    make_demo_dataset(str(data), num_labeled=3, num_unlabeled=2, num_validation=1, shape=(32, 32, 4))
    spec = json.loads((data / "dataset.json").read_text())
    label_file = data / spec["training"][0]["label"]
    img = nib.load(str(label_file))
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(arr, img.affine), str(label_file))
    with pytest.raises(Exception) as info:
        _workflow(tmp_path, demo_dir, dataset_dir=str(data))
    chain, e = [], info.value
    while e is not None:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    assert any("DataIntegrityError" in m and "9" in m for m in chain), chain


def test_resume_keeps_best_metric_and_model_pt(tmp_path, demo_dir):
    """A resumed run must not overwrite models/model.pt with a teacher that validates worse than the best so far."""
    extra = dict(fm_name="none", val_interval=1)
    wf = _workflow(tmp_path, demo_dir, epochs=1, **extra)
    wf.run()
    wf.finalize()
    ckpt_file = tmp_path / "outputs" / "checkpoints" / "checkpoint_final.pt"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    assert ckpt["validation"]["best_metric_epoch"] == 1 and 0.0 <= ckpt["validation"]["best_metric"] <= 1.0
    # pretend the first run had reached a score no later validation can beat
    ckpt["validation"]["best_metric"] = 2.0
    torch.save(ckpt, ckpt_file)
    model_pt = tmp_path / "models" / "model.pt"
    before = model_pt.read_bytes()
    wf2 = _workflow(tmp_path, demo_dir, epochs=2, resume=True, **extra)
    wf2.run()
    evaluator = wf2.parser.get_parsed_content("validate#evaluator")
    wf2.finalize()
    assert evaluator.state.best_metric == 2.0 and evaluator.state.best_metric_epoch == 1
    assert model_pt.read_bytes() == before


def test_short_run_writes_its_model_and_other_data_moves_the_old_one_aside(tmp_path, demo_dir):
    """Issue 23 items 4 and 3 through configs/train.yaml. A run of fewer epochs than val_interval validated nothing
    and wrote no model: it is validated after its last iteration. A run on other validation data in the same bundle
    folder was blocked by the old model's score: the old one is moved aside and the new one written."""
    import shutil

    wf = _workflow(tmp_path, demo_dir, fm_name="none", epochs=1, val_interval=5)
    wf.run()
    wf.finalize()
    models = tmp_path / "models"
    first = json.loads((models / "model.json").read_text())
    assert first["metric"]["epoch"] == 1 and first["validation_data"]["volumes"] == 4
    assert first["validation_data"]["data"] == os.path.join(demo_dir, "dataset.json")
    # other validation data: the demo files without one validation volume, in another folder
    other = tmp_path / "other"
    shutil.copytree(demo_dir, other)
    listing = json.loads((other / "dataset.json").read_text())
    listing["validation"] = listing["validation"][1:]
    listing["numValidation"] = len(listing["validation"])
    (other / "dataset.json").write_text(json.dumps(listing))
    wf2 = _workflow(tmp_path, demo_dir, fm_name="none", epochs=1, val_interval=5, dataset_dir=str(other))
    wf2.run()
    wf2.finalize()
    second = json.loads((models / "model.json").read_text())
    assert second["validation_data"]["volumes"] == 3 and second["validation_data"]["data"] == str(
        other / "dataset.json"
    )
    aside = sorted(models.glob("model.replaced-*.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["sha256"] == first["sha256"]
    assert aside[0].with_suffix(".pt").is_file()


def test_best_metric_state_rejects_incomplete_state():
    from types import SimpleNamespace

    from vqseg_bundle.engines import BestMetricState

    state = BestMetricState(SimpleNamespace(state=SimpleNamespace(best_metric=-1, best_metric_epoch=-1)))
    assert state.state_dict() == {"best_metric": -1.0, "best_metric_epoch": -1}
    with pytest.raises(ValueError, match="best_metric_epoch"):
        state.load_state_dict({"best_metric": 0.5})
    state.load_state_dict({"best_metric": 0.5, "best_metric_epoch": 3})
    assert state.evaluator.state.best_metric == 0.5 and state.evaluator.state.best_metric_epoch == 3
