"""Issue 15, inference side: every input checked before anything is written, each bad one named, the good ones
all segmented, unique output names with a mapping CSV, no silent overwrite, a writable output folder, literal
paths, and one clear last line from the bundle CLI.

The cases measured in the issue (each failed on the code before it):

* one NaN voxel -> background, exit 0: ``test_nan_voxel_is_rejected_and_named``
* site1/scan + site2/scan -> one output: ``test_same_base_name_from_two_folders_gives_two_outputs``
* existing outputs overwritten in place: ``test_existing_outputs_are_not_overwritten_unless_asked``
* truncated .nii.gz: a 321-line traceback without the file; one bad file aborts the rest:
  ``test_bad_files_are_named_and_good_ones_still_segmented``
* 4D volume: raw ValueError without the file: ``test_bad_files_are_named_and_good_ones_still_segmented``
* unwritable output folder found after the first volume: ``test_unwritable_output_folder_fails_before_inference``
* a folder named [v1]: "No input image found": ``test_folder_with_brackets_is_taken_literally``
* errors buried under MONAI's wrapper: ``test_cli_last_line_names_the_file`` (inference and training)
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_helpers import BUNDLE_ROOT, INFERENCE_CONFIG, ORACLE_DEF
from monai.bundle import run
from vqseg_bundle.inferers import InferenceInputError, literal_glob, output_names


def _scan(path: Path, shape=(24, 20, 3), nan: bool = False, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32) * 100
    if nan:
        data[2, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _infer(output_dir: Path, ckpt: Path, **override) -> None:
    run(
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(BUNDLE_ROOT),
        output_dir=str(output_dir),
        ckpt_path=str(ckpt),
        network_def=dict(ORACLE_DEF),
        image_size=16,
        num_workers=0,
        **override,
    )


def _chain(err: BaseException) -> str:
    out, e = [], err
    while e is not None:
        out.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def _segs(folder: Path) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".nii.gz"))


def _mapping(folder: Path) -> list[dict]:
    with open(folder / "segmentations.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_nan_voxel_is_rejected_and_named(scans, tmp_path):
    inp = tmp_path / "in"
    _scan(inp / "a_good.nii.gz")
    bad = _scan(inp / "b_nan.nii.gz", nan=True)
    with pytest.raises(Exception) as err:
        _infer(tmp_path / "out", scans["oracle_ckpt"], dataset_dir=str(inp))
    text = _chain(err.value)
    assert "InferenceInputError" in text and str(bad) in text and "NaN" in text
    assert _segs(tmp_path / "out") == ["a_good_seg.nii.gz"]  # the good file was still segmented
    rows = {Path(r["input"]).name: r for r in _mapping(tmp_path / "out")}
    assert rows["b_nan.nii.gz"]["status"] == "rejected" and rows["a_good.nii.gz"]["status"] == "written"
    # the configurable policy: replace non-finite voxels (with a warning) and segment the scan
    _infer(tmp_path / "out2", scans["oracle_ckpt"], dataset_dir=str(inp), nonfinite="replace")
    assert _segs(tmp_path / "out2") == ["a_good_seg.nii.gz", "b_nan_seg.nii.gz"]


def test_bad_files_are_named_and_good_ones_still_segmented(scans, tmp_path):
    inp = tmp_path / "in"
    good = _scan(inp / "z_last_good.nii.gz")
    full = _scan(inp / "a_trunc.nii.gz")
    full.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    four = _scan(inp / "b_4d.nii.gz", shape=(16, 16, 3, 2))
    with pytest.raises(Exception) as err:
        _infer(tmp_path / "out", scans["oracle_ckpt"], dataset_dir=str(inp))
    root = err.value
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    assert isinstance(root, InferenceInputError)
    message = str(root)
    assert str(full) in message and str(four) in message and "4D" in message
    assert _segs(tmp_path / "out") == ["z_last_good_seg.nii.gz"]  # the file after the bad ones was processed
    assert {Path(r["input"]).name: r["status"] for r in _mapping(tmp_path / "out")} == {
        "a_trunc.nii.gz": "rejected",
        "b_4d.nii.gz": "rejected",
        good.name: "written",
    }


def test_same_base_name_from_two_folders_gives_two_outputs(scans, tmp_path):
    a = _scan(tmp_path / "in" / "site1" / "scan.nii.gz", seed=1)
    b = _scan(tmp_path / "in" / "site2" / "scan.nii.gz", seed=2)
    _infer(tmp_path / "out", scans["oracle_ckpt"], input_glob=str(tmp_path / "in" / "*" / "scan.nii.gz"))
    assert _segs(tmp_path / "out") == ["site1_scan_seg.nii.gz", "site2_scan_seg.nii.gz"]
    mapping = {r["input"]: Path(r["output"]).name for r in _mapping(tmp_path / "out")}
    assert mapping == {str(a): "site1_scan_seg.nii.gz", str(b): "site2_scan_seg.nii.gz"}
    # the two results differ (the second did not overwrite the first)
    x, y = (np.asarray(nib.load(str(tmp_path / "out" / n)).dataobj) for n in _segs(tmp_path / "out"))
    assert not np.array_equal(x, y)


def test_output_names_are_unique():
    assert output_names(["/d/a.nii.gz", "/e/b.nii"]) == ["a_seg.nii.gz", "b_seg.nii.gz"]
    assert output_names(["/d/s1/x.nii.gz", "/d/s2/x.nii.gz", "/d/s1_x.nii.gz"]) == [
        "s1_x_seg.nii.gz",
        "s2_x_seg.nii.gz",
        "s1_x_2_seg.nii.gz",
    ]


def test_existing_outputs_are_not_overwritten_unless_asked(scans, tmp_path):
    inp = tmp_path / "in"
    _scan(inp / "scan.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan_seg.nii.gz").write_bytes(b"previous result")
    with pytest.raises(Exception) as err:
        _infer(out, scans["oracle_ckpt"], dataset_dir=str(inp))
    assert "FileExistsError" in _chain(err.value) and "--overwrite" in _chain(err.value)
    assert (out / "scan_seg.nii.gz").read_bytes() == b"previous result"
    _infer(out, scans["oracle_ckpt"], dataset_dir=str(inp), overwrite=True)
    assert nib.load(str(out / "scan_seg.nii.gz")).shape == (24, 20, 3)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary file left


def test_unwritable_output_folder_fails_before_inference(scans, tmp_path):
    inp = tmp_path / "in"
    _scan(inp / "scan.nii.gz")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(Exception) as err:
        _infer(blocker / "out", scans["oracle_ckpt"], dataset_dir=str(inp))
    text = _chain(err.value)
    assert "not writable" in text and str(blocker / "out") in text
    assert "suitable writer" not in text


def test_folder_with_brackets_is_taken_literally(scans, tmp_path):
    inp = tmp_path / "scans[v1]"
    _scan(inp / "scan.nii.gz")
    _infer(tmp_path / "out", scans["oracle_ckpt"], dataset_dir=str(inp))
    assert _segs(tmp_path / "out") == ["scan_seg.nii.gz"]
    assert literal_glob(str(inp)) == [str(inp)]
    assert literal_glob(str(inp / "scan.nii.gz")) == [str(inp / "scan.nii.gz")]
    assert literal_glob(str(inp / "*.nii.gz")) == [str(inp / "scan.nii.gz")]


@pytest.mark.slow
def test_cli_last_line_names_the_file(scans, tmp_path):
    """python -m monai.bundle: exit non-zero, the last line names the file and the problem (no MONAI wrapper)."""
    inp = tmp_path / "in"
    _scan(inp / "good.nii.gz")
    bad = _scan(inp / "nan.nii.gz", nan=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VQSEG_TRACEBACK", None)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(INFERENCE_CONFIG),
        "--dataset_dir",
        str(inp),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(scans["oracle_ckpt"]),
        "--network_def",
        repr(ORACLE_DEF),
        "--image_size",
        "16",
        "--num_workers",
        "0",
    ]
    res = subprocess.run(cmd, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: InferenceInputError") and str(bad) in last, res.stderr[-2000:]
    assert "Failed to" not in res.stderr  # MONAI's wrapper chain is not printed
    assert (tmp_path / "out" / "good_seg.nii.gz").is_file()
    # a configuration-time check of training: the bad dataset folder
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "configs/train.yaml",
        "--bundle_root",
        str(tmp_path / "bundle"),
        "--dataset_dir",
        str(empty),
    ]
    res = subprocess.run(cmd, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DataIntegrityError") and str(empty) in last, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) <= 3
    shutil.rmtree(tmp_path / "bundle", ignore_errors=True)
