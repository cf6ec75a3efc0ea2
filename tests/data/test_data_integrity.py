"""Every bad-input case gives a DataIntegrityError naming the file and the problem, before training."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from vqseg_bundle.data import DataIntegrityError, build_splits, patient_id_from_name
from vqseg_bundle.data.acdc import load_acdc_splits
from vqseg_bundle.data.nifti import load_nifti_splits


def _dataset_json(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _write_json(root: Path, data: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("patient001_frame12_slice_3", "patient001"),
        ("/data/slices/patient100_frame01_slice_10.h5", "patient100"),
        ("patient042_frame02.nii.gz", "patient042"),
        ("case07_frame01.nii.gz", "case07"),
        ("la_003_slice_4", "la_003"),
        ("imagesTr/la_003.nii.gz", "la_003"),
        ("heart.nii", "heart"),
        ("phantom_004.nii.gz", "phantom_004"),
    ],
)
def test_patient_id_rule(name, expected):
    assert patient_id_from_name(name) == expected


def test_error_is_value_error():
    assert issubclass(DataIntegrityError, ValueError)


# --------------------------------------------------------------------------- NIfTI reader


def test_missing_image_file(nifti_dataset):
    (nifti_dataset / "images_training" / "case00_frame01.nii.gz").unlink()
    with pytest.raises(DataIntegrityError, match=r"case00_frame01\.nii\.gz: missing labeled image file"):
        build_splits(str(nifti_dataset), labeled="all", image_size=(8, 8))


def test_missing_label_file(nifti_dataset):
    (nifti_dataset / "labels_validation" / "case04_frame01.nii.gz").unlink()
    with pytest.raises(
        DataIntegrityError, match=r"labels_validation/case04_frame01\.nii\.gz: missing validation label"
    ):
        load_nifti_splits(nifti_dataset)


def test_all_missing_files_reported_together(nifti_dataset):
    (nifti_dataset / "images_training" / "case00_frame01.nii.gz").unlink()
    (nifti_dataset / "images_unlabeled" / "case03_frame01.nii.gz").unlink()
    with pytest.raises(DataIntegrityError, match=r"2 data integrity problem") as info:
        load_nifti_splits(nifti_dataset)
    assert "case00_frame01" in str(info.value) and "case03_frame01" in str(info.value)


def test_unreadable_image_file(nifti_dataset):
    (nifti_dataset / "images_unlabeled" / "case02_frame01.nii.gz").write_bytes(b"this is not a NIfTI file")
    with pytest.raises(DataIntegrityError, match=r"case02_frame01\.nii\.gz: unreadable image file"):
        load_nifti_splits(nifti_dataset)


def test_unreadable_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataIntegrityError, match=r"dataset\.json: unreadable dataset description"):
        load_nifti_splits(tmp_path)


def test_training_entry_without_label(nifti_dataset):
    data = _dataset_json(nifti_dataset)
    del data["training"][1]["label"]
    _write_json(nifti_dataset, data)
    with pytest.raises(
        DataIntegrityError, match=r"'training'\[1\] \(images_training/case01_frame01\.nii\.gz\) has no 'label'"
    ):
        load_nifti_splits(nifti_dataset)


def test_shape_mismatch(nifti_dataset, nifti_saver):
    nifti_saver(nifti_dataset / "labels_training" / "case01_frame01.nii.gz", np.zeros((16, 12, 4), np.uint8))
    with pytest.raises(
        DataIntegrityError,
        match=r"case01_frame01\.nii\.gz: label shape \(16, 12, 4\) does not match image shape \(16, 12, 5\)",
    ):
        load_nifti_splits(nifti_dataset)


def test_label_outside_range(nifti_dataset, nifti_saver):
    label = np.zeros((16, 12, 5), np.uint8)
    label[0, 0, 0] = 7
    nifti_saver(nifti_dataset / "labels_validation" / "case04_frame01.nii.gz", label)
    with pytest.raises(DataIntegrityError, match=r"case04_frame01\.nii\.gz: label values \{7\} are outside 0\.\.3"):
        load_nifti_splits(nifti_dataset, num_classes=4)


def test_negative_label(nifti_dataset, nifti_saver):
    label = np.zeros((16, 12, 5), np.int16)
    label[1, 1, 1] = -1
    nifti_saver(nifti_dataset / "labels_training" / "case00_frame01.nii.gz", label)
    with pytest.raises(DataIntegrityError, match=r"case00_frame01\.nii\.gz: label values \{-1\} are outside 0\.\.3"):
        load_nifti_splits(nifti_dataset)


def test_label_range_follows_num_classes(nifti_dataset):
    # the fixture's labels use 0..3: fine with 4 classes, out of range with 3
    load_nifti_splits(nifti_dataset, num_classes=4)
    with pytest.raises(DataIntegrityError, match=r"label values \{3\} are outside 0\.\.2 \(num_classes=3\)"):
        load_nifti_splits(nifti_dataset, num_classes=3)


def test_non_integer_label(nifti_dataset, nifti_saver):
    label = np.zeros((16, 12, 5), np.float32)
    label[2, 2, 2] = 1.5
    nifti_saver(nifti_dataset / "labels_training" / "case01_frame01.nii.gz", label)
    with pytest.raises(
        DataIntegrityError, match=r"case01_frame01\.nii\.gz: label has non-integer values \(e\.g\. 1\.5\)"
    ):
        load_nifti_splits(nifti_dataset)


def test_integral_float_label_is_accepted(nifti_dataset, nifti_saver):
    nifti_saver(nifti_dataset / "labels_training" / "case01_frame01.nii.gz", np.full((16, 12, 5), 2.0, np.float32))
    raw = load_nifti_splits(nifti_dataset, labeled="all")
    assert {int(v) for s in raw.labeled_labels[5:] for v in np.unique(s)} == {2}


@pytest.mark.parametrize("bad, word", [(np.nan, r"1 NaN, 0 Inf"), (np.inf, r"0 NaN, 1 Inf")])
def test_non_finite_image(nifti_dataset, nifti_saver, bad, word):
    image = np.ones((16, 12, 5), np.float32)
    image[3, 3, 3] = bad
    nifti_saver(nifti_dataset / "images_unlabeled" / "case03_frame01.nii.gz", image)
    with pytest.raises(DataIntegrityError, match=rf"case03_frame01\.nii\.gz: image has non-finite voxels \({word}\)"):
        load_nifti_splits(nifti_dataset)


def test_4d_volume(nifti_dataset, nifti_saver):
    nifti_saver(nifti_dataset / "images_training" / "case00_frame01.nii.gz", np.ones((16, 12, 5, 2), np.float32))
    with pytest.raises(
        DataIntegrityError, match=r"case00_frame01\.nii\.gz: image is a 4D volume of shape \(16, 12, 5, 2\)"
    ):
        load_nifti_splits(nifti_dataset)


def test_trailing_singleton_dimension_is_not_4d(nifti_dataset, nifti_saver):
    nifti_saver(nifti_dataset / "images_training" / "case00_frame01.nii.gz", np.ones((16, 12, 5, 1), np.float32))
    raw = load_nifti_splits(nifti_dataset, labeled="all")
    assert raw.labeled_images[0].shape == (12, 16)  # (X, Y) of an identity affine, in "PLS": (Y, X)


@pytest.mark.parametrize(
    "key, message", [("training", r"the training split is empty"), ("validation", r"the validation split is empty")]
)
def test_empty_split(nifti_dataset, key, message):
    data = _dataset_json(nifti_dataset)
    data[key] = []
    _write_json(nifti_dataset, data)
    with pytest.raises(DataIntegrityError, match=rf"dataset\.json {key!r}: {message}"):
        load_nifti_splits(nifti_dataset)


def test_empty_unlabeled_split(nifti_dataset):
    data = _dataset_json(nifti_dataset)
    data["unlabeled"] = []
    _write_json(nifti_dataset, data)
    # 2 training patients, both labeled: nothing left to be unlabeled
    with pytest.raises(DataIntegrityError, match=r"dataset\.json 'unlabeled': the unlabeled split is empty"):
        load_nifti_splits(nifti_dataset, labeled=2)
    # the fully supervised reference ("all") needs no unlabeled data
    assert load_nifti_splits(nifti_dataset, labeled="all").unlabeled_images == []


def test_patient_in_labeled_and_validation(nifti_dataset, nifti_saver):
    data = _dataset_json(nifti_dataset)
    # a second frame of the labeled patient case00 used for validation
    nifti_saver(nifti_dataset / "images_validation" / "case00_frame02.nii.gz", np.ones((16, 12, 5), np.float32))
    nifti_saver(nifti_dataset / "labels_validation" / "case00_frame02.nii.gz", np.zeros((16, 12, 5), np.uint8))
    data["validation"].append(
        {"image": "images_validation/case00_frame02.nii.gz", "label": "labels_validation/case00_frame02.nii.gz"}
    )
    _write_json(nifti_dataset, data)
    with pytest.raises(
        DataIntegrityError,
        match=r"case00_frame02\.nii\.gz: patient 'case00' is in both the labeled set .* and the validation set",
    ):
        load_nifti_splits(nifti_dataset, labeled="all")


def test_patient_in_unlabeled_and_validation(nifti_dataset):
    data = _dataset_json(nifti_dataset)
    data["unlabeled"].append(data["validation"][0]["image"])
    _write_json(nifti_dataset, data)
    with pytest.raises(DataIntegrityError, match=r"patient 'case04' is in both the unlabeled set"):
        load_nifti_splits(nifti_dataset)


def test_unknown_layout(tmp_path):
    with pytest.raises(DataIntegrityError, match=r"unknown dataset layout"):
        build_splits(str(tmp_path))
    with pytest.raises(DataIntegrityError, match=r"does not exist"):
        build_splits(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- ACDC reader


def test_acdc_missing_slice(tiny_acdc):
    (tiny_acdc / "data" / "slices" / "patient007_frame01_slice_2.h5").unlink()
    with pytest.raises(DataIntegrityError, match=r"patient007_frame01_slice_2\.h5: missing training slice file"):
        load_acdc_splits(tiny_acdc, labeled="labeled_2_cases")


def test_acdc_missing_list(tiny_acdc):
    (tiny_acdc / "val.list").unlink()
    with pytest.raises(DataIntegrityError, match=r"val\.list: missing list file"):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_unreadable_h5(tiny_acdc):
    (tiny_acdc / "data" / "patient020_frame02.h5").write_bytes(b"\x00garbage")
    with pytest.raises(DataIntegrityError, match=r"patient020_frame02\.h5: unreadable HDF5 file"):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_missing_dataset_key(tiny_acdc):
    path = tiny_acdc / "data" / "slices" / "patient009_frame02_slice_1.h5"
    with h5py.File(path, "w") as f:
        f["img"] = np.zeros((20, 24), np.float32)
    with pytest.raises(
        DataIntegrityError, match=r"patient009_frame02_slice_1\.h5: HDF5 file has no dataset\(s\) \['image', 'label'\]"
    ):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_shape_mismatch_and_bad_label(tiny_acdc):
    with h5py.File(tiny_acdc / "data" / "slices" / "patient003_frame01_slice_3.h5", "r+") as f:
        del f["label"]
        f["label"] = np.zeros((20, 23), np.uint8)
    with h5py.File(tiny_acdc / "data" / "patient021_frame01.h5", "r+") as f:
        label = f["label"][()]
        label[0, 0, 0] = 4
        del f["label"]
        f["label"] = label
    with pytest.raises(DataIntegrityError) as info:
        load_acdc_splits(tiny_acdc, labeled=2)
    message = str(info.value)
    assert "patient003_frame01_slice_3.h5: label shape (20, 23) does not match image shape" in message
    assert "patient021_frame01.h5: label values {4} are outside 0..3" in message


def test_acdc_nan_slice(tiny_acdc):
    path = tiny_acdc / "data" / "slices" / "patient001_frame02_slice_2.h5"  # an unlabeled slice
    with h5py.File(path, "r+") as f:
        image = f["image"][()]
        image[5, 5] = np.nan
        del f["image"]
        f["image"] = image
    with pytest.raises(
        DataIntegrityError, match=r"patient001_frame02_slice_2\.h5: image has non-finite voxels \(1 NaN"
    ):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_3d_slice(tiny_acdc):
    path = tiny_acdc / "data" / "slices" / "patient005_frame01_slice_1.h5"
    with h5py.File(path, "r+") as f:
        del f["image"]
        f["image"] = np.zeros((2, 20, 24), np.float32)
    with pytest.raises(
        DataIntegrityError,
        match=r"patient005_frame01_slice_1\.h5: image is a 3D array of shape \(2, 20, 24\), expected 2D",
    ):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_4d_validation_volume(tiny_acdc):
    with h5py.File(tiny_acdc / "data" / "patient020_frame01.h5", "r+") as f:
        del f["image"]
        f["image"] = np.zeros((2, 4, 20, 24), np.float32)
    with pytest.raises(DataIntegrityError, match=r"patient020_frame01\.h5: image is a 4D volume"):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_patient_in_labeled_and_validation(tiny_acdc):
    (tiny_acdc / "val.list").write_text("patient020_frame01\npatient009_frame01\n")
    with pytest.raises(
        DataIntegrityError, match=r"patient009_frame01: patient 'patient009' is in both the labeled set"
    ):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_empty_validation(tiny_acdc):
    (tiny_acdc / "val.list").write_text("\n")
    with pytest.raises(DataIntegrityError, match=r"val\.list: the validation split is empty"):
        load_acdc_splits(tiny_acdc, labeled=2)


def test_acdc_empty_unlabeled(tiny_acdc):
    with pytest.raises(DataIntegrityError, match=r"the unlabeled split is empty"):
        load_acdc_splits(tiny_acdc, labeled=5)


def test_acdc_labeled_list_with_unknown_slice(tiny_acdc):
    (tiny_acdc / "labeled_1_cases.list").write_text("patient009_frame01_slice_1\npatient999_frame01_slice_1\n")
    with pytest.raises(DataIntegrityError, match=r"labeled_1_cases\.list: 1 slice\(s\) not in train_slices\.list"):
        load_acdc_splits(tiny_acdc, labeled="labeled_1_cases")
