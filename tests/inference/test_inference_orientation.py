"""One anatomical orientation for every reader (issue 18): the same scan in another array order, through
another reader or file format gives the same segmentation in world space, written back in each input's
own array order and affine; the ACDC HDF5 copy and its challenge-style NIfTI give the network the same
input."""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from inference_helpers import BUNDLE_ROOT, INFERENCE_CONFIG, NUM_CLASSES, rotation
from monai.bundle import ConfigParser, run

ACDC_DIR = BUNDLE_ROOT.parent / "shared" / "data" / "acdc"
#: a network that is not invariant to transposes or flips: a 3 x 3 convolution (weights: asymmetric_ckpt)
ASYMMETRIC_DEF = {
    "_target_": "torch.nn.Conv2d",
    "in_channels": 1,
    "out_channels": NUM_CLASSES,
    "kernel_size": 3,
    "padding": 1,
}
LPS = np.diag([-1.0, -1.0, 1.0])


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(0.3, -0.25, 0.5) @ np.diag([1.3, 1.6, 8.0])
    affine[:3, 3] = [-20.0, 35.5, 4.0]
    return affine


def _volume(shape=(26, 19, 4), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    return (100 + 300 * x + 150 * y**2 + 40 * rng.random(shape)).astype(np.float32)


def _write_mha(array_xyz: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """The same scan as a MetaImage: ITK's (z, y, x) array, LPS direction / origin from the RAS affine."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img = itk.image_from_array(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin((LPS @ affine[:3, 3]).tolist())
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(LPS @ affine[:3, :3] / spacing)))
    itk.imwrite(img, str(path))


@pytest.fixture(scope="module")
def asymmetric_ckpt(tmp_path_factory) -> Path:
    """Logits: a horizontal (column-axis) gradient detector plus an intensity term per class, so the
    decision depends on which array axis runs along the slice's columns."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    centre = torch.zeros(3, 3)
    centre[1, 1] = 1.0
    gradient = torch.tensor([-4.0, -1.0, 1.0, 4.0]).view(-1, 1, 1)
    intensity = torch.tensor([0.0, 1.0, 1.5, 0.0]).view(-1, 1, 1)
    weight = (gradient * sobel + intensity * centre)[:, None]
    path = tmp_path_factory.mktemp("asym") / "asym.pt"
    torch.save({"weight": weight, "bias": torch.tensor([0.0, -0.2, -0.9, 0.0])}, path)
    return path


def _segment(folder: Path, out: Path, ckpt: Path, pattern: str = "*.nii.gz", **override) -> Path:
    run(
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(BUNDLE_ROOT),
        dataset_dir=str(folder),
        input_glob=str(folder / pattern),
        output_dir=str(out),
        ckpt_path=str(ckpt),
        network_def=dict(ASYMMETRIC_DEF),
        image_size=24,
        num_workers=0,
        **override,
    )
    (result,) = out.glob("*_seg.nii.gz")
    return result


def test_same_scan_in_any_array_order_or_reader_gives_one_world_space_segmentation(tmp_path, asymmetric_ckpt):
    """(X, Y, Z) with affine A, (Y, X, Z) with A's first two columns swapped, the same file through ITK and
    as a MetaImage: one segmentation in world space, each written in its input's order and affine."""
    volume, affine = _volume(), _oblique_affine()
    swapped = affine[:, [1, 0, 2, 3]]
    forms = {
        "xyz": (volume, affine, "*.nii.gz", {}),
        "yxz": (np.ascontiguousarray(volume.transpose(1, 0, 2)), swapped, "*.nii.gz", {}),
        "xyz_itk": (volume, affine, "*.nii.gz", {"image_reader": "ITKReader"}),
        "xyz_mha": (volume, affine, "*.mha", {}),
    }
    preds = {}
    for name, (array, aff, pattern, override) in forms.items():
        folder = tmp_path / name
        folder.mkdir()
        if pattern == "*.mha":
            _write_mha(array, aff, folder / "scan.mha")
        else:
            nib.save(nib.Nifti1Image(array, aff), folder / "scan.nii.gz")
        img = nib.load(_segment(folder, tmp_path / f"out_{name}", asymmetric_ckpt, pattern, **override))
        assert img.shape == array.shape  # the input's own array order ...
        np.testing.assert_allclose(img.affine, aff, atol=1e-4)  # ... and affine
        preds[name] = np.asarray(img.dataobj)
    reference = preds["xyz"]
    assert len(np.unique(reference)) >= 3  # not a trivial prediction
    # voxel (i, j, k) of "yxz" is voxel (j, i, k) of "xyz": the same world point
    np.testing.assert_array_equal(preds["yxz"].transpose(1, 0, 2), reference)
    np.testing.assert_array_equal(preds["xyz_itk"], reference)
    np.testing.assert_array_equal(preds["xyz_mha"], reference)

    # the control: without the reorientation the network sees transposed slices and disagrees
    unoriented = {}
    for name in ("xyz", "yxz"):
        unoriented[name] = np.asarray(
            nib.load(_segment(tmp_path / name, tmp_path / f"raw_{name}", asymmetric_ckpt, orientation="none")).dataobj
        )
    assert (unoriented["yxz"].transpose(1, 0, 2) != unoriented["xyz"]).mean() > 0.01


def _inference_input(path: Path) -> np.ndarray:
    """What configs/inference.yaml hands the inferer for ``path``: ``(H, W, D)``."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    item = parser.get_parsed_content("preprocessing")({"image": str(path)})
    return item["image"][0].numpy()


@pytest.mark.acdc
def test_acdc_hdf5_and_challenge_nifti_give_identical_network_inputs(tmp_path):
    """A real validation volume: the HDF5 reader (training / evaluation), the NIfTI reader of the
    challenge-style file (written by ITK from the HDF5 array, as SSL4MIS read it with SimpleITK) and the
    inference preprocessing all hand the network the same (H, W, D) volume."""
    if not (ACDC_DIR / "val.list").is_file():
        pytest.skip(f"{ACDC_DIR} not present")
    import json

    import h5py
    from vqseg_bundle.data.acdc import load_acdc_splits
    from vqseg_bundle.data.nifti import load_nifti_splits

    name = (ACDC_DIR / "val.list").read_text().split()[0]
    with h5py.File(ACDC_DIR / "data" / f"{name}.h5", "r") as f:
        image_zyx, label_zyx = f["image"][()], f["label"][()]
    # the challenge's form: ITK's GetImageFromArray of the (Z, Y, X) array, identity (LPS) direction
    for sub, array in (("images", image_zyx.astype(np.float32)), ("labels", label_zyx.astype(np.uint8))):
        (tmp_path / sub).mkdir()
        itk.imwrite(itk.image_from_array(np.ascontiguousarray(array)), str(tmp_path / sub / f"{name}.nii.gz"))
    nii = nib.load(tmp_path / "images" / f"{name}.nii.gz")
    assert nii.shape == image_zyx.shape[::-1]  # nibabel reads (X, Y, Z) ...
    assert "".join(nib.aff2axcodes(nii.affine)) == "LPS"  # ... with the challenge's affine signs

    # the HDF5 reader of the training / evaluation configs
    h5 = load_acdc_splits(ACDC_DIR, labeled="labeled_3_cases")
    record = next(v for v in h5.validation if v.name == name)
    assert record.image.shape == image_zyx.shape[1:] + image_zyx.shape[:1]  # (Y, X, Z): slices as stored
    # the dataset.json reader of the same case
    entry = {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"}
    other = {"image": "images/case000.nii.gz", "label": "labels/case000.nii.gz"}  # build_splits needs one
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.float32), np.eye(4)), tmp_path / other["image"])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.uint8), np.eye(4)), tmp_path / other["label"])
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [other], "validation": [entry]}))
    case = load_nifti_splits(tmp_path, labeled="all").validation[0]
    np.testing.assert_array_equal(case.image, record.image)
    np.testing.assert_array_equal(case.label, record.label)
    # the inference config (min-max, as the training data; equal up to float rounding of the rescale)
    inference_input = _inference_input(tmp_path / "images" / f"{name}.nii.gz")
    np.testing.assert_allclose(inference_input, record.image, atol=1e-6)
