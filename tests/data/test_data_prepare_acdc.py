"""scripts/prepare_acdc.py (HDF5 -> NIfTI + dataset.json) and the real ACDC copy when present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from vqseg_bundle.data import build_splits
from vqseg_bundle.data.acdc import load_acdc_splits, read_list, select_acdc_labeled
from vqseg_bundle.data.convert import choose_labeled_patients, convert_acdc_to_nifti
from vqseg_bundle.data.nifti import load_nifti_splits

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_acdc.py"


def _by_volume_slice(names, arrays, one_based):
    """Map (volume, 1-based slice number) -> array; the NIfTI reader numbers slices from 0."""
    out = {}
    for name, array in zip(names, arrays, strict=True):
        volume, z = name.rsplit("_slice_", 1)
        out[(volume, int(z) + (0 if one_based else 1))] = array
    return out


def assert_identical(h5, nii):
    for images, labels, names in (
        ("labeled_images", "labeled_labels", "labeled_names"),
        ("unlabeled_images", None, "unlabeled_names"),
    ):
        a = _by_volume_slice(getattr(h5, names), getattr(h5, images), True)
        b = _by_volume_slice(getattr(nii, names), getattr(nii, images), False)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
        if labels:
            la = _by_volume_slice(getattr(h5, names), getattr(h5, labels), True)
            lb = _by_volume_slice(getattr(nii, names), getattr(nii, labels), False)
            for key in la:
                np.testing.assert_array_equal(la[key], lb[key], err_msg=str(key))
    assert [v.name for v in h5.validation] == [v.name for v in nii.validation]
    for x, y in zip(h5.validation, nii.validation, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_acdc_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("normalization", ["none", "minmax"])
def test_tiny_conversion_gives_identical_arrays(tiny_acdc, tmp_path, normalization):
    out = convert_acdc_to_nifti(tiny_acdc, tmp_path / "nii", labeled="labeled_2_cases")
    h5 = load_acdc_splits(tiny_acdc, labeled="labeled_2_cases", normalization=normalization)
    nii = load_nifti_splits(out, labeled="all", normalization=normalization)
    assert len(nii.labeled_images) == 12 and len(nii.unlabeled_images) == 18 and len(nii.validation) == 4
    assert_identical(h5, nii)


def test_tiny_conversion_layout(tiny_acdc, tmp_path):
    out = convert_acdc_to_nifti(tiny_acdc, tmp_path / "nii", labeled=3, compress=False)
    data = json.loads((out / "dataset.json").read_text())
    assert data["labeled_patients"] == ["patient009", "patient003", "patient007"]
    assert [e["image"] for e in data["training"]][:2] == [
        "imagesTr/patient009_frame01.nii",
        "imagesTr/patient009_frame02.nii",
    ]
    assert len(data["training"]) == 6 and len(data["unlabeled"]) == 4 and len(data["validation"]) == 4
    assert all(set(e) == {"image"} for e in data["unlabeled"]) and not any((out / "labelsUnl").glob("*"))
    img = nib.load(out / "imagesTr" / "patient009_frame01.nii")
    # as the challenge distributes it: (X, Y, Z) for HDF5 slices (Y, X) = (20, 24), the challenge's affine
    # signs, spacing 1 (the HDF5 stores none, said so)
    assert img.shape == (24, 20, 3)
    np.testing.assert_array_equal(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert "(X, Y, Z)" in data["description"] and "spacing 1" in data["description"]
    with pytest.raises(FileExistsError, match=r"dataset\.json exists"):
        convert_acdc_to_nifti(tiny_acdc, out)


def test_labeled_subset_by_patient_and_reproducible(tiny_acdc):
    names = read_list(tiny_acdc / "train_slices.list")
    assert choose_labeled_patients(tiny_acdc, names, "labeled_2_cases") == ["patient009", "patient003"]
    assert choose_labeled_patients(tiny_acdc, names, "all") == [
        "patient009",
        "patient003",
        "patient007",
        "patient001",
        "patient005",
    ]
    drawn = choose_labeled_patients(tiny_acdc, names, 3, seed=7)
    assert drawn == choose_labeled_patients(tiny_acdc, names, 3, seed=7) and len(drawn) == 3
    draws = {tuple(choose_labeled_patients(tiny_acdc, names, 2, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ValueError, match=r"asked for 6 labeled patients"):
        choose_labeled_patients(tiny_acdc, names, 6)


def test_script_cli_entry_point(tiny_acdc, tmp_path, capsys):
    module = _load_script()
    module.main(src=str(tiny_acdc), dst=str(tmp_path / "out"), labeled=1, compress=False)
    assert "dataset.json" in capsys.readouterr().out
    splits = build_splits(str(tmp_path / "out"), labeled="all", image_size=(8, 8))
    assert splits.labeled.patients() == ["patient009"] and len(splits.validation) == 4


# --------------------------------------------------------------------------- real data (skipped when absent)


@pytest.fixture(scope="module")
def acdc_raw(acdc_dir):
    return load_acdc_splits(acdc_dir, labeled="labeled_3_cases")


@pytest.mark.acdc
def test_real_acdc_counts(acdc_dir):
    splits = build_splits(str(acdc_dir), labeled="labeled_3_cases", image_size=(64, 64))
    assert len(splits.labeled) == 68 and len(splits.unlabeled) == 1312 - 68
    assert len(splits.labeled.patients()) == 3
    assert len(splits.validation) == 20
    assert set(torch.unique(splits.labeled.labels).tolist()) == {0, 1, 2, 3}
    assert set(torch.unique(torch.cat([v["label"].flatten() for v in splits.validation])).tolist()) == {0, 1, 2, 3}
    train = read_list(acdc_dir / "train_slices.list")
    seven, _ = select_acdc_labeled(acdc_dir, train, "labeled_7_cases")
    assert len(seven) == 136
    # the benchmark's list files are exactly "the first N patients in list order"
    assert select_acdc_labeled(acdc_dir, train, 7)[0] == seven
    assert select_acdc_labeled(acdc_dir, train, 3)[0] == splits.labeled.names


@pytest.mark.acdc
def test_real_acdc_conversion_identical(acdc_dir, acdc_raw, tmp_path):
    out = convert_acdc_to_nifti(acdc_dir, tmp_path / "acdc_nii", labeled="labeled_3_cases", compress=False)
    nii = load_nifti_splits(out, labeled="all")
    assert len(nii.labeled_images) == 68 and len(nii.unlabeled_images) == 1244 and len(nii.validation) == 20
    assert_identical(acdc_raw, nii)
