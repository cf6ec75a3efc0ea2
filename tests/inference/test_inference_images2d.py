"""2D image data sets end to end: PNG inputs segmented at their own size (PNG or NIfTI), listed in
segmentations.csv; a tiny PNG data set trained, validated and inferred through the bundle's configs."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_helpers import BUNDLE_ROOT, INFERENCE_CONFIG, ORACLE_DEF, oracle_state_dict, phantom_label
from monai.bundle import ConfigWorkflow, run
from PIL import Image
from vqseg_bundle.data.png_phantoms import PNG_LABEL_MAPPING, make_png_dataset

TRAIN = str(BUNDLE_ROOT / "configs" / "train.yaml")
EVALUATE = str(BUNDLE_ROOT / "configs" / "evaluate.yaml")


@pytest.fixture
def oracle_ckpt(tmp_path) -> Path:
    ckpt = tmp_path / "oracle.pt"
    torch.save(oracle_state_dict(), ckpt)
    return ckpt


def _infer(input_glob: str, output_dir: Path, ckpt: Path, **override) -> None:
    run(
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(BUNDLE_ROOT),
        input_glob=input_glob,
        output_dir=str(output_dir),
        ckpt_path=str(ckpt),
        network_def=dict(ORACLE_DEF),
        num_workers=0,
        **override,
    )


def _mapping(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "segmentations.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_png_segmented_at_its_own_size_in_display_order(tmp_path, oracle_ckpt):
    """No resize (roi = the image's size): the oracle's mask equals the label pixel for pixel in the written PNG,
    so the reorientation into the network's view is undone exactly; an RGB input is converted to grey."""
    label = phantom_label((30, 44))
    (tmp_path / "in").mkdir()
    Image.fromarray((label * 85).astype(np.uint8)).save(tmp_path / "in" / "grey.png")
    rgb = np.repeat((label * 85).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "in" / "colour.png")
    roi = {"_target_": "vqseg_bundle.inferers.ResizedSliceInferer", "roi_size": [30, 44]}
    _infer(str(tmp_path / "in" / "*.png"), tmp_path / "out", oracle_ckpt, slice_inferer=roi, output_values=[0, 1, 2, 3])
    for name in ("grey", "colour"):
        pred = np.asarray(Image.open(tmp_path / "out" / f"{name}_seg.png"))
        assert pred.shape == label.shape and pred.dtype == np.uint8
        np.testing.assert_array_equal(pred, label)
    rows = _mapping(tmp_path / "out")
    assert [(Path(r["input"]).name, Path(r["output"]).name, r["status"]) for r in rows] == [
        ("colour.png", "colour_seg.png", "written"),
        ("grey.png", "grey_seg.png", "written"),
    ]


def test_png_resized_nifti_output_and_values(tmp_path, oracle_ckpt):
    label = phantom_label((36, 28))
    (tmp_path / "in").mkdir()
    Image.fromarray((label * 85).astype(np.uint8)).save(tmp_path / "in" / "a.png")
    _infer(str(tmp_path / "in" / "*.png"), tmp_path / "png", oracle_ckpt, image_size=32, output_values=[0, 1, 2, 255])
    pred = np.asarray(Image.open(tmp_path / "png" / "a_seg.png"))
    assert pred.shape == (36, 28) and set(np.unique(pred).tolist()) <= {0, 1, 2, 255}
    assert np.mean(pred == np.array([0, 1, 2, 255])[label]) > 0.9
    _infer(str(tmp_path / "in" / "*.png"), tmp_path / "nii", oracle_ckpt, image_size=32, output_ext_2d=".nii.gz")
    nii = np.asarray(nib.load(str(tmp_path / "nii" / "a_seg.nii.gz")).dataobj)
    assert nii.shape == (28, 36)  # MONAI's (W, H) array order of the image, as for NIfTI inputs
    assert np.mean(nii.T == label) > 0.9


def _chain(error: BaseException) -> str:
    """The messages of an exception and its causes (the bundle runner wraps errors in RuntimeError)."""
    out = []
    while error is not None:
        out.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(out)


def test_empty_folder_and_bad_png_are_named(tmp_path, oracle_ckpt):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as err:
        _infer(str(tmp_path / "empty" / "*.png"), tmp_path / "out", oracle_ckpt, image_size=32)
    assert f"the folder {str(tmp_path / 'empty')!r} holds no files" in _chain(err.value)
    (tmp_path / "pngs").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "pngs" / "ok.png")
    with pytest.raises(Exception) as err:
        _infer(str(tmp_path / "pngs" / "*.nii.gz"), tmp_path / "out", oracle_ckpt, image_size=32)
    assert "holds 1 .png file(s): --input_glob '" in _chain(err.value)
    (tmp_path / "pngs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(Exception) as err:
        _infer(str(tmp_path / "pngs" / "*.png"), tmp_path / "out", oracle_ckpt, image_size=32)
    assert "broken.png" in _chain(err.value)
    rows = {Path(r["input"]).name: r for r in _mapping(tmp_path / "out")}
    assert rows["broken.png"]["status"] == "rejected" and rows["ok.png"]["status"] == "written"


@pytest.mark.slow
def test_png_dataset_trains_validates_and_infers(tmp_path, one_thread):
    """A tiny PNG data set (varying sizes, 0 / 255 masks) through train.yaml, evaluate.yaml on its test pairs and
    inference.yaml on its test folder."""
    make_png_dataset(tmp_path / "data")
    common = {
        "bundle_root": str(tmp_path),
        "dataset_dir": str(tmp_path / "data"),
        "labeled": "all",
        "num_classes": 2,
        "class_names": ["lesion"],
        "label_mapping": PNG_LABEL_MAPPING,
        "image_size": 32,
        "batch_size_labeled": 2,
        "batch_size_unlabeled": 2,
        "num_workers": 0,
        "num_threads": 1,
        "progress_bar": False,
        "network_def#features": [8, 16, 32, 64, 64],
        "orientation_training#iterations": 3,
        "orientation_training#batch_size": 4,
    }
    train = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", epochs=2, iterations_per_epoch=2, val_interval=1, **common
    )
    train.initialize()
    train.run()
    assert (tmp_path / "models" / "model.pt").is_file()
    train.finalize()

    evaluate = ConfigWorkflow(config_file=[TRAIN, EVALUATE], workflow_type="train", validation_split="test", **common)
    evaluate.initialize()
    evaluate.run()
    with open(tmp_path / "outputs" / "eval" / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == ["test_000", "test_001"]
    assert all(0.0 <= float(r["sensitivity"]) <= 1.0 and 0.0 <= float(r["specificity"]) <= 1.0 for r in rows)

    run(
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(BUNDLE_ROOT),
        input_glob=str(tmp_path / "data" / "imagesTs" / "*.png"),
        output_dir=str(tmp_path / "seg"),
        ckpt_path=str(tmp_path / "models" / "model.pt"),
        num_workers=0,
        output_values=[0, 255],
    )
    for row in _mapping(tmp_path / "seg"):
        assert row["status"] == "written"
        mask = np.asarray(Image.open(row["output"]))
        assert mask.shape == np.asarray(Image.open(row["input"])).shape
        assert set(np.unique(mask).tolist()) <= {0, 255}
