"""ACDC (HDF5) and dataset.json (NIfTI) readers on small generated files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from vqseg_bundle.data import normalize_intensity
from vqseg_bundle.data.acdc import load_acdc_splits, select_acdc_labeled
from vqseg_bundle.data.nifti import load_datalist, load_nifti_splits, to_slices_last


def _patients(names):
    return list(dict.fromkeys(n.split("_")[0] for n in names))


# --------------------------------------------------------------------------- ACDC


@pytest.mark.parametrize(
    "labeled, patients",
    [
        ("labeled_2_cases", ["patient009", "patient003"]),  # the list file
        (2, ["patient009", "patient003"]),  # first 2 patients in list order (not sorted)
        ("3", ["patient009", "patient003", "patient007"]),
        ("labeled_4_cases", ["patient009", "patient003", "patient007", "patient001"]),  # no list file: first 4
    ],
)
def test_acdc_labeled_subset_by_patient(tiny_acdc, labeled, patients):
    raw = load_acdc_splits(tiny_acdc, labeled=labeled)
    train = (tiny_acdc / "train_slices.list").read_text().split()
    assert _patients(raw.labeled_names) == patients
    assert set(_patients(raw.unlabeled_names)).isdisjoint(patients)
    assert sorted(raw.labeled_names + raw.unlabeled_names) == sorted(train)
    assert len(raw.labeled_names) == 6 * len(patients)  # 2 frames x 3 slices per patient
    assert len(raw.labeled_labels) == len(raw.labeled_images) == len(raw.labeled_names)


def test_acdc_all_labeled(tiny_acdc):
    names, _ = select_acdc_labeled(tiny_acdc, (tiny_acdc / "train_slices.list").read_text().split(), "all")
    assert len(names) == 30


def test_acdc_bad_labeled_argument(tiny_acdc):
    with pytest.raises(ValueError, match=r"labeled='five'.*labeled_2_cases"):
        load_acdc_splits(tiny_acdc, labeled="five")
    with pytest.raises(ValueError, match=r"asked for 9 labeled patients but .* has only 5"):
        load_acdc_splits(tiny_acdc, labeled=9)
    with pytest.raises(ValueError, match=r"at least 1 patient"):
        load_acdc_splits(tiny_acdc, labeled=0)
    with pytest.raises(ValueError, match=r"normalization must be one of"):
        load_acdc_splits(tiny_acdc, normalization="unit")


def test_acdc_arrays_and_validation_layout(tiny_acdc):
    raw = load_acdc_splits(tiny_acdc, labeled=2, normalization="none")
    name = raw.labeled_names[0]
    with h5py.File(tiny_acdc / "data" / "slices" / f"{name}.h5") as f:
        np.testing.assert_array_equal(raw.labeled_images[0], f["image"][()])
        np.testing.assert_array_equal(raw.labeled_labels[0], f["label"][()])
    assert [v.name for v in raw.validation] == (tiny_acdc / "val.list").read_text().split()
    with h5py.File(tiny_acdc / "data" / "patient021_frame02.h5") as f:
        image, label = f["image"][()], f["label"][()]  # (D, H, W)
    record = raw.validation[3]
    assert record.image.shape == (20, 24, 4) == image.shape[1:] + image.shape[:1]
    np.testing.assert_array_equal(record.image, np.transpose(image, (1, 2, 0)))
    np.testing.assert_array_equal(record.label, np.transpose(label, (1, 2, 0)))
    assert record.label.dtype == np.int64


def test_acdc_normalisation_is_per_volume(tiny_acdc):
    raw = load_acdc_splits(tiny_acdc, labeled=2, normalization="zscore")
    volume = [
        im
        for n, im in zip(raw.unlabeled_names, raw.unlabeled_images, strict=True)
        if n.startswith("patient001_frame01")
    ]
    stacked = np.stack(volume)
    assert len(volume) == 3
    assert abs(stacked.mean()) < 1e-5 and abs(stacked.std() - 1) < 1e-4
    # a single slice is not standardised on its own
    assert max(abs(v.mean()) for v in volume) > 1e-3


# --------------------------------------------------------------------------- NIfTI


def test_datalist_paths_and_string_unlabeled(nifti_factory, tmp_path):
    root = nifti_factory(tmp_path / "d", unlabeled_as_strings=True)
    lists = load_datalist(root)
    assert lists["unlabeled"][0] == {"image": str(root / "images_unlabeled" / "case02_frame01.nii.gz")}
    assert lists["training"][1]["label"] == str(root / "labels_training" / "case01_frame01.nii.gz")
    assert lists["test"] == []
    # the json file itself is accepted too
    assert load_datalist(root / "dataset.json") == lists


def test_unlabeled_needs_no_label_file(nifti_factory, tmp_path):
    root = nifti_factory(tmp_path / "d", unlabeled_as_strings=True)
    assert not (root / "labels_unlabeled").exists()
    raw = load_nifti_splits(root, labeled="all")
    assert len(raw.unlabeled_images) == 2 * 5
    assert raw.unlabeled_names[0] == "case02_frame01_slice_0"


def test_nifti_slices_along_last_axis(nifti_dataset, canonical):
    """Slices of the volume in the canonical orientation (an identity affine is "RAS": (X, Y, Z) becomes
    (Y, X, Z), both in-plane axes reversed)."""
    raw = load_nifti_splits(nifti_dataset, labeled="all", normalization="none")
    import nibabel as nib

    image = np.asarray(nib.load(nifti_dataset / "images_training" / "case01_frame01.nii.gz").dataobj)
    label = np.asarray(nib.load(nifti_dataset / "labels_training" / "case01_frame01.nii.gz").dataobj)
    assert len(raw.labeled_images) == 10
    assert raw.labeled_images[5].shape == (12, 16)
    np.testing.assert_array_equal(canonical(image), image.transpose(1, 0, 2)[::-1, ::-1])
    for k in range(5):
        np.testing.assert_array_equal(raw.labeled_images[5 + k], canonical(image)[..., k])
        np.testing.assert_array_equal(raw.labeled_labels[5 + k], canonical(label)[..., k])
    assert raw.validation[0].image.shape == (12, 16, 5)


def test_nifti_stored_order_without_orientation(nifti_dataset):
    """``orientation=None``: the files' voxel order, as before the canonical orientation."""
    raw = load_nifti_splits(nifti_dataset, labeled="all", normalization="none", orientation=None)
    import nibabel as nib

    image = np.asarray(nib.load(nifti_dataset / "images_training" / "case01_frame01.nii.gz").dataobj)
    for k in range(5):
        np.testing.assert_array_equal(raw.labeled_images[5 + k], image[..., k])
    with pytest.raises(ValueError, match=r"orientation must"):
        load_nifti_splits(nifti_dataset, orientation="XYZ")


@pytest.mark.parametrize("axis, n_slices, shape", [(0, 12, (16, 5)), (1, 16, (12, 5)), (-3, 12, (16, 5))])
def test_nifti_slice_axis(nifti_dataset, canonical, axis, n_slices, shape):
    """``slice_axis`` is an axis of the reoriented (12, 16, 5) volume."""
    raw = load_nifti_splits(nifti_dataset, labeled="all", slice_axis=axis, normalization="none")
    import nibabel as nib

    image = np.asarray(nib.load(nifti_dataset / "images_training" / "case00_frame01.nii.gz").dataobj)
    assert len(raw.labeled_images) == 2 * n_slices
    assert raw.labeled_images[0].shape == shape
    np.testing.assert_array_equal(raw.labeled_images[3], np.take(canonical(image), 3, axis=axis))
    # validation volumes keep every slice, with the slice axis moved last
    assert raw.validation[0].image.shape == (*shape, n_slices)


def test_nifti_bad_slice_axis(nifti_dataset):
    with pytest.raises(ValueError, match=r"slice_axis must be an int in -3\.\.2"):
        load_nifti_splits(nifti_dataset, slice_axis=3)


def test_nifti_labeled_by_patient_moves_rest_to_unlabeled(nifti_factory, tmp_path):
    root = nifti_factory(tmp_path / "d", training=3, unlabeled=1)
    raw = load_nifti_splits(root, labeled=1)
    assert _patients(raw.labeled_names) == ["case00"]
    assert _patients(raw.unlabeled_names) == ["case01", "case02", "case03"]
    raw = load_nifti_splits(root, labeled="labeled_2_cases")
    assert _patients(raw.labeled_names) == ["case00", "case01"]
    with pytest.raises(ValueError, match=r"not understood for a dataset\.json dataset"):
        load_nifti_splits(root, labeled="my_split")


def test_nifti_two_frames_of_one_patient_stay_together(nifti_factory, tmp_path):
    root = nifti_factory(tmp_path / "d", training=3)
    data = json.loads((root / "dataset.json").read_text())
    # rename case01 -> case00_frame02: two volumes of one patient
    for sub in ("images_training", "labels_training"):
        (root / sub / "case01_frame01.nii.gz").rename(root / sub / "case00_frame02.nii.gz")
    data["training"][1] = {k: v.replace("case01_frame01", "case00_frame02") for k, v in data["training"][1].items()}
    (root / "dataset.json").write_text(json.dumps(data))
    raw = load_nifti_splits(root, labeled=1)
    assert len(raw.labeled_images) == 10  # both frames of case00
    assert _patients(raw.unlabeled_names)[0] == "case02"


@pytest.mark.parametrize("mode", ["minmax", "zscore", "percentile", "none"])
def test_nifti_normalisation_per_volume(nifti_dataset, canonical, mode):
    raw = load_nifti_splits(nifti_dataset, labeled="all", normalization=mode)
    import nibabel as nib

    original = canonical(np.asarray(nib.load(nifti_dataset / "images_training" / "case01_frame01.nii.gz").dataobj))
    volume = np.stack(raw.labeled_images[5:10], axis=-1)
    if mode == "minmax":
        assert volume.min() == 0.0 and volume.max() == pytest.approx(1.0)
        np.testing.assert_allclose(volume, (original - original.min()) / np.ptp(original), atol=1e-6)
    elif mode == "zscore":
        assert abs(volume.mean()) < 1e-4 and volume.std() == pytest.approx(1.0, abs=1e-4)
    elif mode == "percentile":
        assert volume.min() == 0.0 and volume.max() == pytest.approx(1.0)
        # 0.5 % of the voxels on each side are clipped
        assert (volume == 0).sum() >= int(0.005 * volume.size)
    else:
        np.testing.assert_array_equal(volume, original)


def test_normalize_intensity_edge_cases():
    flat = np.full((3, 4), 7.0)
    assert not normalize_intensity(flat, "minmax").any()
    assert not normalize_intensity(flat, "zscore").any()
    assert normalize_intensity(flat, "none").dtype == np.float32
    with pytest.raises(ValueError, match=r"normalization must be one of"):
        normalize_intensity(flat, "max")
    with pytest.raises(ValueError, match=r"percentiles"):
        normalize_intensity(flat, "percentile", percentiles=(99, 1))


def test_to_slices_last_of_2d_image():
    assert to_slices_last(np.zeros((5, 6)), -1).shape == (5, 6, 1)


@pytest.mark.parametrize("axis, expected", [(-1, (1.25, 1.5, 8.0)), (0, (1.5, 8.0, 1.25)), (1, (1.25, 8.0, 1.5))])
def test_nifti_validation_spacing_follows_the_slice_axis(nifti_factory, tmp_path, axis, expected):
    """Validation items carry the label file's voxel size along the reoriented axes (x 1.5, y 1.25, z 8
    in the file; "PLS" puts y first), slice axis last, so HD95 / ASD come in mm too."""
    import nibabel as nib
    from vqseg_bundle.data import build_splits

    root = nifti_factory(tmp_path / "ds")
    for sub in ("images_validation", "labels_validation"):
        for f in (root / sub).iterdir():
            img = nib.load(f)
            affine = np.diag([1.5, 1.25, 8.0, 1.0])
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), f)
    raw = load_nifti_splits(root, labeled="all", slice_axis=axis)
    assert raw.validation[0].spacing == pytest.approx(expected)
    splits = build_splits(root, labeled="all", image_size=(16, 16), slice_axis=axis)
    assert splits.validation[0]["spacing"].tolist() == pytest.approx(list(expected))


def test_acdc_validation_has_no_spacing(tiny_acdc):
    from vqseg_bundle.data import build_splits

    splits = build_splits(tiny_acdc, labeled="all", image_size=(16, 16))
    assert all("spacing" not in v for v in splits.validation)
