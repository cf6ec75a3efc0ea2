"""configs/evaluate.yaml layered on a train config: on a minimal train.yaml built from the config-id
contract (docs/ARCHITECTURE.md) with NIfTI volumes, and on the real configs/train.yaml (demo data)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
EVALUATE = BUNDLE_ROOT / "configs" / "evaluate.yaml"
TRAIN = BUNDLE_ROOT / "configs" / "train.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def phantom(shape):
    lab = np.zeros(shape, np.uint8)
    h, w = shape[:2]
    lab[h // 8 : h // 2, w // 8 : w // 2] = 1
    lab[h // 2 + 1 : h - 2, w // 3 : w - 2] = 2
    lab[2 : h // 3, w // 2 + 2 : w - 1] = 3
    return lab


def minimal_train_yaml(root: Path, items: list[dict], roi: list[int]) -> Path:
    """Only the ids of the contract, a 1x1-conv oracle network and a CheckpointSaver that must be replaced."""
    cfg = {
        "imports": ["$import torch"],
        "bundle_root": str(root),
        "device": "$torch.device('cpu')",
        "dataset_dir": str(root),
        "output_dir": str(root / "out"),
        "ckpt_dir": str(root / "models"),
        "image_size": roi[0],
        "num_classes": 4,
        "in_channels": 1,
        "class_names": ["RV", "Myo", "LV"],
        "network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 1},
        "network": "$@network_def.to(@device)",
        "splits": {"validation": items},
        "validate": {
            "preprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": True},
                    {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
                    {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
                ],
            },
            "dataset": {"_target_": "Dataset", "data": "@splits#validation", "transform": "@validate#preprocessing"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "num_workers": 0},
            "inferer": {"_target_": "vqseg_bundle.inferers.ResizedSliceInferer", "roi_size": roi},
            "postprocessing": {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            "key_metric": {
                "val_mean_dice": {
                    "_target_": "MeanDice",
                    "include_background": False,
                    "num_classes": 4,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },
            "handlers": [
                {
                    "_target_": "CheckpointSaver",
                    "save_dir": "@ckpt_dir",
                    "save_dict": {"model": "@network"},
                    "save_key_metric": True,
                    "key_metric_filename": "model.pt",
                }
            ],
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "val_handlers": "@validate#handlers",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$print('training would run here')"],
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def oracle_ckpt(path: Path) -> Path:
    c = torch.arange(4, dtype=torch.float32) / 3
    torch.save({"weight": (200 * c).view(4, 1, 1, 1), "bias": -(c**2) * 100}, path)
    return path


@pytest.fixture
def nifti_cases(tmp_path):
    """Two oblique 1.4 x 1.4 x 10 mm volumes: 'exact' (label = image classes) and 'shifted' (the label
    moved one voxel along the first axis, i.e. 1.4 mm)."""
    affine = np.eye(4)
    c, s = np.cos(0.5), np.sin(0.5)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.4, 1.4, 10.0])
    affine[:3, 3] = [4.0, -7.0, 12.0]
    lab = phantom((33, 27, 4))
    items = []
    for name, truth in (("exact", lab), ("shifted", np.roll(lab, 1, axis=0))):
        nib.save(nib.Nifti1Image(100 + 500 * lab.astype(np.float32) / 3, affine), tmp_path / f"{name}_img.nii.gz")
        nib.save(nib.Nifti1Image(truth, affine), tmp_path / f"{name}_lab.nii.gz")
        items.append(
            {"image": str(tmp_path / f"{name}_img.nii.gz"), "label": str(tmp_path / f"{name}_lab.nii.gz"), "name": name}
        )
    return items


def run_workflow(configs, **override):
    wf = ConfigWorkflow(config_file=[str(c) for c in configs], workflow_type="eval", **override)
    wf.initialize()
    wf.run()
    return wf


def test_evaluate_on_minimal_contract_train_yaml(tmp_path, nifti_cases):
    train = minimal_train_yaml(tmp_path, nifti_cases, [33, 27])
    ckpt = oracle_ckpt(tmp_path / "oracle.pt")
    # a weights file without a settings file: the slice size is given explicitly (issue 23 item 2)
    wf = run_workflow([train, EVALUATE], ckpt_path=str(ckpt), image_size=33)
    assert not (tmp_path / "models" / "model.pt").exists()  # train's CheckpointSaver was replaced
    rows = list(csv.DictReader(open(tmp_path / "out" / "eval" / "metrics_per_case.csv")))
    assert [(r["case"], r["class_name"]) for r in rows] == [
        (n, c) for n in ("exact", "shifted") for c in ("RV", "Myo", "LV")
    ]
    for r in rows:
        assert r["status"] == "ok" and r["spacing"] == "1.4x1.4x10"  # spacing from the NIfTI affine
        if r["case"] == "exact":
            assert float(r["dice"]) == 1.0 and float(r["hd95_vox"]) == 0.0 and float(r["hd95_mm"]) == 0.0
        else:
            assert float(r["dice"]) < 1.0 and float(r["hd95_vox"]) > 0.0
            # a shift along the 1.4 mm axis only: millimetres are 1.4 x voxels
            assert float(r["hd95_mm"]) == pytest.approx(1.4 * float(r["hd95_vox"]), rel=1e-4)
            assert float(r["asd_mm"]) == pytest.approx(1.4 * float(r["asd_vox"]), rel=1e-4)
    summary = {r["class_name"]: r for r in csv.DictReader(open(tmp_path / "out" / "eval" / "metrics_summary.csv"))}
    assert list(summary) == ["RV", "Myo", "LV", "mean"]
    # our overall Dice equals MONAI's MeanDice key metric on the same predictions
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert metrics["case_dice"] == pytest.approx(metrics["val_mean_dice"], abs=1e-6)


def test_evaluate_missing_or_wrong_checkpoint(tmp_path, nifti_cases):
    train = minimal_train_yaml(tmp_path, nifti_cases, [33, 27])
    with pytest.raises(Exception) as err:
        run_workflow([train, EVALUATE], ckpt_path=str(tmp_path / "absent.pt"))
    assert "absent.pt" in repr(err.value.__cause__ or err.value)
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), tmp_path / "k2.pt")
    with pytest.raises(Exception) as err:
        run_workflow([train, EVALUATE], ckpt_path=str(tmp_path / "k2.pt"), image_size=33)
    assert "shape" in repr(err.value.__cause__ or err.value)


def test_evaluate_never_guesses_the_slice_size_of_weights_without_settings(tmp_path, nifti_cases):
    """Issue 23 item 2: a weights file without its settings file was evaluated at the train config's size (256 px
    for configs/train.yaml, whatever the model was trained at). Now the run stops, naming the missing settings
    file and --image_size, before anything is evaluated."""
    from vqseg_bundle.inferers import ModelSettingsMissingError

    train = minimal_train_yaml(tmp_path, nifti_cases, [33, 27])
    ckpt = oracle_ckpt(tmp_path / "oracle.pt")
    with pytest.raises(Exception) as err:
        run_workflow([train, EVALUATE], ckpt_path=str(ckpt))
    e = err.value
    while e.__cause__ is not None:
        e = e.__cause__
    assert isinstance(e, ModelSettingsMissingError)
    assert str(tmp_path / "oracle.json") in str(e) and "--image_size" in str(e)
    assert not (tmp_path / "out" / "eval").exists()


def test_evaluate_uses_the_model_slice_size_everywhere_and_names_the_model(tmp_path, caplog):
    """Issue 23 items 2 and 7: evaluating a 32 px model with configs/train.yaml (default 256) and no override runs
    at 32 px, the data summary says "training slices resized to 32x32" (it said 256x256), and a log line names
    the model file loaded and its settings file."""
    import logging
    from types import SimpleNamespace

    from vqseg_bundle.engines import BestModelSaver

    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({"codebook_size": 16, "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network_def")
    settings = {"image_size": 32, "in_channels": 1, "num_classes": 4, "class_names": ["RV", "Myo", "LV"]}
    settings["network_def"] = parser.get_parsed_content("model_settings#network_def")
    BestModelSaver(tmp_path / "models", net, settings=settings)(
        SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": 0.5}, epoch=1, key_metric_name="val_mean_dice"))
    )
    with caplog.at_level(logging.INFO):
        wf = ConfigWorkflow(
            config_file=[str(TRAIN), str(EVALUATE)],
            workflow_type="eval",
            logging_file=False,
            bundle_root=str(tmp_path),
            data_cache_dir=str(tmp_path / "demo"),
            num_threads=0,
            num_workers=0,
        )
        wf.initialize()
        wf.run()
    assert wf.parser.get_parsed_content("validate#evaluator").inferer.roi_size == (32, 32)
    assert "training slices resized to 32x32" in caplog.text and "256x256" not in caplog.text
    assert f"model loaded: {tmp_path / 'models' / 'model.pt'}" in caplog.text
    assert str(tmp_path / "models" / "model.json") in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(not TRAIN.exists(), reason="configs/train.yaml not written yet")
def test_evaluate_on_real_train_yaml_demo_data(tmp_path):
    """The real train.yaml (synthetic demo data), small settings, random weights: the pipeline runs."""
    override = {
        "image_size": 32,
        "codebook_size": 16,
        "data_cache_dir": str(tmp_path / "demo"),
        "output_dir": str(tmp_path / "out"),
        "ckpt_dir": str(tmp_path / "models"),
        "num_threads": 0,
    }
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update(override)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "random.pt")
    wf = run_workflow([TRAIN, EVALUATE], ckpt_path=str(tmp_path / "random.pt"), **override)
    rows = list(csv.DictReader(open(tmp_path / "out" / "eval" / "metrics_per_case.csv")))
    n_cases = len({r["case"] for r in rows})
    assert n_cases >= 1 and len(rows) == 3 * n_cases
    assert {r["class_name"] for r in rows} == {"RV", "Myo", "LV"}
    # the demo volumes are NIfTI files: their voxel size reaches the metrics (HD95 / ASD in mm too)
    assert all(r["spacing"] for r in rows)
    for r in rows:  # random weights may miss a structure (NaN distances); a measured one has mm too
        if r["hd95_vox"].lower() not in ("", "nan"):
            assert r["hd95_mm"].lower() not in ("", "nan"), r
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert metrics["case_dice"] == pytest.approx(metrics["val_mean_dice"], abs=1e-5)
    assert not (tmp_path / "models" / "model.pt").exists()
