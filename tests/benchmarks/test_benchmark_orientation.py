"""scripts/benchmark_orientation.py: the challenge-style writer, the command it builds, and (slow, real
data and a trained model) the HDF5 / NIfTI Dice agreement of issue 18."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_orientation.py"
ACDC_DIR = REPO.parent / "shared" / "data" / "acdc"
RUN_JSON = REPO / "results" / "acdc_cpu_peer" / "labeled3" / "unimatch" / "run.json"
MODEL = REPO / "outputs" / "benchmark" / "cpu_peer" / "labeled3" / "unimatch" / "models" / "model.pt"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_orientation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_orientation"] = module
    spec.loader.exec_module(module)
    return module


bo = _load()


def _tiny_acdc(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "data" / "slices").mkdir(parents=True)
    names = []
    for z in (2, 1):
        name = f"patient001_frame01_slice_{z}"
        with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
            f["image"] = rng.random((6, 9), dtype=np.float32)
            f["label"] = rng.integers(0, 4, (6, 9)).astype(np.uint8)
        names.append(name)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    with h5py.File(root / "data" / "patient002_frame01.h5", "w") as f:
        f["image"] = rng.random((3, 7, 5), dtype=np.float32)  # (Z, Y, X)
        f["label"] = rng.integers(0, 4, (3, 7, 5)).astype(np.uint8)
    (root / "val.list").write_text("patient002_frame01\n")
    return root


def test_challenge_style_files_are_the_transpose_with_the_challenge_affine(tmp_path):
    from vqseg_bundle.data.nifti import load_nifti_splits
    from vqseg_bundle.data.orientation import acdc_h5_to_canonical

    src = _tiny_acdc(tmp_path / "acdc")
    out = bo.write_challenge_nifti(src, tmp_path / "nifti")
    img = nib.load(out / "imagesVal" / "patient002_frame01.nii.gz")
    with h5py.File(src / "data" / "patient002_frame01.h5") as f:
        image = f["image"][()]
    assert img.shape == (5, 7, 3)  # nibabel's (X, Y, Z)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"
    np.testing.assert_array_equal(np.asarray(img.dataobj), image.transpose(2, 1, 0))
    training = nib.load(out / "imagesTr" / "patient001_frame01.nii.gz")
    assert training.shape == (9, 6, 2)  # slices 1, 2 in order
    # read back by the bundle: the HDF5 reader's volume
    raw = load_nifti_splits(out, labeled="all", normalization="none")
    np.testing.assert_array_equal(raw.validation[0].image, acdc_h5_to_canonical(image))


def test_recorded_command_keeps_the_model_settings_and_replaces_the_data():
    cmd = (
        '/x/python -m monai.bundle run --config_file \'["configs/train.yaml","configs/evaluate.yaml"]\' '
        "--bundle_root /old --dataset_dir ../shared/data/acdc --labeled labeled_3_cases "
        "--output_dir /old/run "
        "--image_size 64 --vq_levels '[]' --ckpt_path /old/model.pt --data_cache_dir /old/cache"
    )
    args = bo._strip(shlex.split(cmd))
    assert args == ["--config_file", '["configs/train.yaml","configs/evaluate.yaml"]', "--image_size", "64",
                    "--vq_levels", "[]"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.acdc
def test_trained_model_scores_the_same_on_hdf5_and_challenge_nifti(tmp_path):
    """Issue 18's benchmark: within 0.5 Dice points (measured: identical, docs/results.md)."""
    if not (ACDC_DIR / "val.list").is_file():
        pytest.skip(f"{ACDC_DIR} not present")
    if not (MODEL.is_file() and RUN_JSON.is_file()):
        pytest.skip(f"no trained model at {MODEL} (run scripts/benchmark_acdc.py first)")
    result = bo.main(run_json=str(RUN_JSON), ckpt_path=str(MODEL), dataset_dir=str(ACDC_DIR), work_dir=str(tmp_path))
    assert abs(result["difference_points"]) <= 0.5, result
    assert json.loads((tmp_path / "result.json").read_text())["nifti"]["dice"]["mean"] > 40
