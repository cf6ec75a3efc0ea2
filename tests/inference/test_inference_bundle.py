"""configs/inference.yaml end to end through ``monai.bundle run``: geometry, names, dtype, perfect
prediction."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_helpers import BUNDLE_ROOT, INFERENCE_CONFIG, NUM_CLASSES, ORACLE_DEF, canonical_shape
from monai.bundle import ConfigWorkflow, run
from vqseg_bundle.metrics import compute_case_metrics


def run_inference(dataset_dir: Path, output_dir: Path, ckpt: Path, **override) -> None:
    run(
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(BUNDLE_ROOT),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        ckpt_path=str(ckpt),
        network_def=dict(ORACLE_DEF),
        num_workers=0,
        **override,
    )


def segmentations(folder: Path) -> list[str]:
    """The segmentation files of an output folder (besides them: segmentations.csv, the input -> output map)."""
    return sorted(f for f in os.listdir(folder) if f.endswith(".nii.gz"))


def check_output(path: Path, label: np.ndarray, affine: np.ndarray) -> np.ndarray:
    assert path.is_file(), f"missing {path}"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8
    assert data.shape == label.shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_allclose(
        img.header.get_zooms()[: label.ndim], np.linalg.norm(affine[:3, : label.ndim], axis=0), atol=1e-4
    )
    return data


def test_perfect_prediction_keeps_geometry_and_scores_perfectly(scans, tmp_path):
    """No resize (roi = in-plane size of the reoriented volume): the oracle reproduces the label voxel for
    voxel, written back in the input's array order and affine."""
    data_dir = tmp_path / "in"
    data_dir.mkdir()
    os.symlink(scans["nifti_dir"] / "oblique.nii.gz", data_dir / "oblique.nii.gz")
    label, affine = scans["labels"]["oblique"], scans["affines"]["oblique"]
    run_inference(
        data_dir,
        tmp_path / "out",
        scans["oracle_ckpt"],
        slice_inferer={
            "_target_": "vqseg_bundle.inferers.ResizedSliceInferer",
            "roi_size": list(canonical_shape(label.shape, affine)[:2]),
        },
    )
    pred = check_output(tmp_path / "out" / "oblique_seg.nii.gz", label, affine)
    np.testing.assert_array_equal(pred, label)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for r in compute_case_metrics(pred[None], label[None], NUM_CLASSES, spacing=spacing):
        assert r.status == "ok"
        assert r.dice == 1.0 and r.jaccard == 1.0
        assert r.hd95_vox == 0.0 and r.asd_vox == 0.0 and r.hd95_mm == 0.0 and r.asd_mm == 0.0


def test_resized_inference_on_2d_and_3d_nifti(scans, tmp_path):
    """With resizing: same shape / affine as each input, one file per input, labels close to the truth."""
    run_inference(scans["nifti_dir"], tmp_path / "out", scans["oracle_ckpt"], image_size=48, flip_tta=True)
    assert segmentations(tmp_path / "out") == ["flat2d_seg.nii.gz", "oblique_seg.nii.gz"]
    for name in ("oblique", "flat2d"):
        label = scans["labels"][name]
        pred = check_output(tmp_path / "out" / f"{name}_seg.nii.gz", label, scans["affines"][name])
        dice = [r.dice for r in compute_case_metrics(pred[None], label[None], NUM_CLASSES)]
        assert min(dice) > 0.75, (name, dice)  # boundaries blur through the two resizes


def test_metaimage_input_through_itk(scans, tmp_path):
    run_inference(
        scans["mha_dir"],
        tmp_path / "out",
        scans["oracle_ckpt"],
        input_glob=str(scans["mha_dir"] / "*.mha"),
        image_size=19,
        slice_inferer={
            "_target_": "vqseg_bundle.inferers.ResizedSliceInferer",
            # the (19, 27, 3) volume in "PLS" (its RAS codes are "LPS"): (27, 19, 3)
            "roi_size": list(canonical_shape(scans["labels"]["lps"].shape, scans["affines"]["lps"])[:2]),
            "sw_batch_size": 2,
        },
    )
    label = scans["labels"]["lps"]
    # the affine expected is derived by hand from ITK's spacing / origin / direction (LPS -> RAS)
    pred = check_output(tmp_path / "out" / "lps_seg.nii.gz", label, scans["affines"]["lps"])
    np.testing.assert_array_equal(pred, label)


def test_datalist_input(scans, tmp_path, caplog):
    (tmp_path / "list.json").write_text('{"test": ["%s"]}' % (scans["nifti_dir"] / "flat2d.nii.gz"))
    with caplog.at_level(logging.INFO):
        run_inference(
            tmp_path,
            tmp_path / "out",
            scans["oracle_ckpt"],
            datalist=str(tmp_path / "list.json"),
            image_size=16,
            logging_file=False,
        )
    assert segmentations(tmp_path / "out") == ["flat2d_seg.nii.gz"]
    # issue 23 item 7: the log names the model file loaded, its slice size, and that it had no settings file
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model loaded:")]
    assert len(said) == 1 and str(scans["oracle_ckpt"]) in said[0] and "slice size 16" in said[0]
    assert "no settings file" in said[0]


def test_missing_weights_and_inputs_are_clear_errors(scans, tmp_path):
    with pytest.raises(Exception) as err:
        run_inference(scans["nifti_dir"], tmp_path / "out", tmp_path / "no_such_model.pt")
    assert "no_such_model.pt" in repr(err.value.__cause__ or err.value)
    with pytest.raises(Exception) as err:
        run_inference(tmp_path / "empty", tmp_path / "out", scans["oracle_ckpt"], image_size=16)
    assert "No input image found" in repr(err.value.__cause__ or err.value)
    wrong = tmp_path / "k3.pt"
    import torch

    torch.save(torch.nn.Conv2d(1, 3, 1).state_dict(), wrong)
    with pytest.raises(Exception) as err:
        run_inference(scans["nifti_dir"], tmp_path / "out", wrong, image_size=16)
    assert "k3.pt" in repr(err.value.__cause__ or err.value) and "shape" in repr(err.value.__cause__ or err.value)


def test_check_properties_is_empty():
    wf = ConfigWorkflow(config_file=str(INFERENCE_CONFIG), workflow_type="infer", bundle_root=str(BUNDLE_ROOT))
    wf.initialize()
    assert wf.check_properties() == []


@pytest.mark.slow
def test_command_line(scans, tmp_path):
    """The documented command, as a subprocess from the bundle root."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.yaml",
        "--dataset_dir",
        str(scans["nifti_dir"]),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(scans["oracle_ckpt"]),
        "--network_def",
        repr(ORACLE_DEF),
        "--image_size",
        "24",
        "--num_workers",
        "0",
    ]
    res = subprocess.run(cmd, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert segmentations(tmp_path / "out") == ["flat2d_seg.nii.gz", "oblique_seg.nii.gz"]
    check_output(tmp_path / "out" / "oblique_seg.nii.gz", scans["labels"]["oblique"], scans["affines"]["oblique"])


def test_real_network_config_unchanged(scans, tmp_path):
    """configs/inference.yaml's own network_def (VQSegUNet, random weights, small codebook and slice size); every
    path in a temporary folder (never the checkout's models/: a model trained there by the README's first command
    must not change this test)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update({"bundle_root": str(tmp_path), "ckpt_path": str(tmp_path / "vq.pt"), "codebook_size": 16})
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "vq.pt")
    run(
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(BUNDLE_ROOT),
        dataset_dir=str(scans["nifti_dir"]),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "vq.pt"),
        codebook_size=16,
        image_size=32,
        num_workers=0,
    )
    for name in ("oblique", "flat2d"):
        pred = check_output(tmp_path / "out" / f"{name}_seg.nii.gz", scans["labels"][name], scans["affines"][name])
        assert pred.max() < NUM_CLASSES
