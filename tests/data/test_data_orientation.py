"""The canonical orientation of the readers (issue 18): vqseg_bundle.data.orientation, the NIfTI / ITK
reader and the ACDC HDF5 reader agree on what the network sees."""

from __future__ import annotations

import json

import h5py
import itk
import nibabel as nib
import numpy as np
import pytest
from vqseg_bundle.data import build_splits
from vqseg_bundle.data.acdc import load_acdc_splits
from vqseg_bundle.data.convert import convert_acdc_to_nifti
from vqseg_bundle.data.integrity import DataIntegrityError
from vqseg_bundle.data.nifti import load_nifti_splits, read_volume
from vqseg_bundle.data.orientation import (
    ACDC_H5_AFFINE,
    CANONICAL_AXCODES,
    acdc_h5_to_canonical,
    check_orientation,
    orientation_codes,
    reorient,
)

LPS = np.diag([-1.0, -1.0, 1.0])


def test_convention_constants():
    assert CANONICAL_AXCODES == "PLS"
    assert orientation_codes(ACDC_H5_AFFINE) == "LPS"  # the challenge files' codes


@pytest.mark.parametrize("value, expected", [("pls", "PLS"), ("RAS", "RAS"), (None, None), ("none", None)])
def test_check_orientation(value, expected):
    assert check_orientation(value) == expected


@pytest.mark.parametrize("value", ["PL", "PPS", "XYZ", 3])
def test_check_orientation_rejects(value):
    with pytest.raises(ValueError, match="orientation must"):
        check_orientation(value)


def test_acdc_h5_arrays_keep_their_layout_in_the_canonical_orientation():
    """HDF5 (Z, Y, X) -> (Y, X, Z), a slice (Y, X) unchanged: the layout the models were trained on."""
    volume = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    np.testing.assert_array_equal(acdc_h5_to_canonical(volume), volume.transpose(1, 2, 0))
    np.testing.assert_array_equal(acdc_h5_to_canonical(volume[0]), volume[0])
    np.testing.assert_array_equal(acdc_h5_to_canonical(volume, None), volume.transpose(1, 2, 0))
    # another convention moves them too: "RAS" is the challenge file's (X, Y, Z), both in-plane axes reversed
    np.testing.assert_array_equal(acdc_h5_to_canonical(volume, "RAS"), volume.transpose(2, 1, 0)[::-1, ::-1])


def test_reorient_of_a_challenge_file_and_the_inverse_geometry():
    xyz = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    affine = np.diag([-1.5, -1.5, 10.0, 1.0])
    out, out_affine = reorient(xyz, affine)
    np.testing.assert_array_equal(out, xyz.transpose(1, 0, 2))
    assert orientation_codes(out_affine) == "PLS"
    # every voxel keeps its world position
    ijk = np.array([1, 3, 2, 1.0])
    np.testing.assert_allclose(out_affine @ ijk, affine @ ijk[[1, 0, 2, 3]])
    same, same_affine = reorient(xyz, affine, None)
    assert same is xyz and np.array_equal(same_affine, affine)


def _write_mha(array_xyz: np.ndarray, ras_affine: np.ndarray, path) -> None:
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    img = itk.image_from_array(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin((LPS @ ras_affine[:3, 3]).tolist())
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(LPS @ ras_affine[:3, :3] / spacing)))
    itk.imwrite(img, str(path))


def test_readers_agree_on_one_scan_in_three_files(tmp_path):
    """One scan as NIfTI (X, Y, Z), NIfTI (Y, X, Z) with the affine's first two columns swapped, and as a
    MetaImage read through ITK: one array in the canonical orientation."""
    from vqseg_bundle.data.integrity import IntegrityReport

    xyz = np.random.default_rng(1).random((7, 6, 3)).astype(np.float32)
    affine = np.diag([1.25, 0.8, 6.0, 1.0])
    affine[:3, 3] = [4.0, -3.0, 2.0]
    nib.save(nib.Nifti1Image(xyz, affine), tmp_path / "xyz.nii.gz")
    nib.save(nib.Nifti1Image(xyz.transpose(1, 0, 2).copy(), affine[:, [1, 0, 2, 3]]), tmp_path / "yxz.nii.gz")
    _write_mha(xyz, affine, tmp_path / "xyz.mha")
    report = IntegrityReport("test")
    names = ("xyz.nii.gz", "yxz.nii.gz", "xyz.mha")
    volumes = {name: read_volume(str(tmp_path / name), report) for name in names}
    report.raise_if_any()
    reference = volumes["xyz.nii.gz"]
    assert reference.codes == "RAS" and volumes["yxz.nii.gz"].codes == "ARS"
    assert reference.array.shape == (6, 7, 3)
    for v in volumes.values():
        np.testing.assert_array_equal(v.array, reference.array)
        assert v.spacing == pytest.approx((0.8, 1.25, 6.0))  # along the reoriented axes


def test_label_with_another_orientation_is_an_integrity_error(nifti_dataset):
    path = nifti_dataset / "labels_training" / "case01_frame01.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-1.0, 1.0, 1.0, 1.0])), path)
    with pytest.raises(DataIntegrityError, match=r"label orientation LAS differs from its image's RAS"):
        load_nifti_splits(nifti_dataset)
    load_nifti_splits(nifti_dataset, labeled="all", orientation=None)  # no reorientation: nothing to check


def test_tiny_acdc_hdf5_and_its_challenge_nifti_give_identical_network_inputs(tiny_acdc, tmp_path):
    out = convert_acdc_to_nifti(tiny_acdc, tmp_path / "nii", labeled="labeled_2_cases", compress=False)
    img = nib.load(out / "imagesVal" / "patient020_frame01.nii")
    with h5py.File(tiny_acdc / "data" / "patient020_frame01.h5") as f:
        image = f["image"][()]
    np.testing.assert_array_equal(np.asarray(img.dataobj), image.transpose(2, 1, 0))  # challenge (X, Y, Z)
    h5 = build_splits(tiny_acdc, labeled="labeled_2_cases", image_size=(16, 16))
    nii = build_splits(out, labeled="all", image_size=(16, 16))

    def by_slice(ds, one_based):  # the HDF5 names slices from 1 in list order, the NIfTI reader from 0
        shift = 0 if one_based else 1
        keys = [(n.rsplit("_slice_", 1)[0], int(n.rsplit("_", 1)[1]) + shift) for n in ds.names]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return [keys[i] for i in order], order

    for split in ("labeled", "unlabeled"):
        a, b = getattr(h5, split), getattr(nii, split)
        (ka, ia), (kb, ib) = by_slice(a, True), by_slice(b, False)
        assert ka == kb
        np.testing.assert_array_equal(a.images.numpy()[ia], b.images.numpy()[ib])
        if a.labels is not None:
            np.testing.assert_array_equal(a.labels.numpy()[ia], b.labels.numpy()[ib])
    for a, b in zip(h5.validation, nii.validation, strict=True):
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())
    # and the HDF5 reader's volumes are the stored arrays with the slice axis last
    record = load_acdc_splits(tiny_acdc, labeled=2, normalization="none").validation[0]
    np.testing.assert_array_equal(record.image, image.transpose(1, 2, 0))


def test_dataset_json_of_metaimages(tmp_path):
    """The ITK path of the dataset.json reader: MetaImage volumes in the canonical orientation too."""
    rng = np.random.default_rng(2)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK's identity direction
    data = {"training": [], "validation": []}
    for key, name in (("training", "case00"), ("validation", "case01")):
        image = rng.random((9, 6, 2)).astype(np.float32)
        label = rng.integers(0, 4, (9, 6, 2)).astype(np.uint8)
        _write_mha(image, affine, tmp_path / f"{name}.mha")
        _write_mha(label, affine, tmp_path / f"{name}_seg.mha")
        data[key].append({"image": f"{name}.mha", "label": f"{name}_seg.mha"})
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    raw = load_nifti_splits(tmp_path, labeled="all", normalization="none")
    assert raw.labeled_images[0].shape == (6, 9)  # (Y, X): ITK's array slice
    assert raw.validation[0].image.shape == (6, 9, 2)
    assert raw.validation[0].spacing == pytest.approx((1.0, 1.0, 1.0))


def test_the_training_volumes_stored_axis_codes_are_recorded(nifti_dataset, tiny_acdc):
    """Issue 27 item 4: inference compares each input's stored axes with the training volumes' (models/model.json
    records them from the splits): the usual codes of the training volumes, not the validation ones."""
    assert load_nifti_splits(nifti_dataset).stored_axcodes == "RAS"
    for sub in ("images_validation", "labels_validation"):
        path = next((nifti_dataset / sub).iterdir())
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    assert load_nifti_splits(nifti_dataset).stored_axcodes == "RAS"
    for sub in ("images_training", "labels_training", "images_unlabeled", "labels_unlabeled"):
        for path in (nifti_dataset / sub).glob("*.nii.gz"):
            img = nib.load(path)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    assert load_nifti_splits(nifti_dataset).stored_axcodes == "LPS"
    assert load_acdc_splits(tiny_acdc, labeled="labeled_2_cases").stored_axcodes == "LPS"
