"""The built-in demo dataset: structure, determinism, idempotence, anatomy, geometry, speed."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from vqseg_bundle.data.phantoms import make_demo_dataset, make_phantom_volume


def _load(path):
    return np.asarray(nib.load(path).dataobj)


def test_layout_and_dataset_json(small_demo):
    data = json.loads((small_demo / "dataset.json").read_text())
    assert len(data["training"]) == 3 and len(data["unlabeled"]) == 4 and len(data["validation"]) == 2
    assert all(set(e) == {"image", "label"} for e in data["training"] + data["validation"])
    assert all(set(e) == {"image"} for e in data["unlabeled"])
    assert data["test"] == [e["image"] for e in data["validation"]]
    for entry in data["training"] + data["validation"] + data["unlabeled"]:
        for path in entry.values():
            assert not path.startswith("/") and (small_demo / path).is_file()
    # no label file is written for the unlabeled part
    assert sorted(p.name for p in small_demo.iterdir() if p.name.startswith("labels")) == ["labelsTr", "labelsVal"]
    names = [e["image"].split("/")[-1] for e in data["training"] + data["unlabeled"] + data["validation"]]
    assert len(set(names)) == 9  # one phantom = one patient, never shared between parts


def test_volume_content(small_demo):
    image = _load(small_demo / "imagesTr" / "phantom_000.nii.gz")
    label = _load(small_demo / "labelsTr" / "phantom_000.nii.gz")
    assert image.shape == label.shape == (48, 40, 4)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
    assert image.min() >= 0 and image.max() > 100  # raw scanner-like range: normalisation matters


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomy_is_nested_and_contrasted(seed):
    image, label = make_phantom_volume((96, 96, 6), seed)
    image = image.astype(np.float64)
    for k in range(6):
        lv, myo, rv = label[..., k] == 3, label[..., k] == 2, label[..., k] == 1
        assert lv.sum() > 20 and myo.sum() > 20
        # LV blood pool fully enclosed by myocardium
        assert not (binary_dilation(lv) & ~(lv | myo)).any()
        if rv.any():  # RV touches the myocardium (septum), never the LV
            assert (binary_dilation(rv) & myo).any() and not (binary_dilation(rv) & lv).any()
    # the RV shrinks from base to apex
    assert (label[..., 0] == 1).sum() > (label[..., -1] == 1).sum()
    # learnable contrast: bright blood pools, dark myocardium
    means = {c: image[label == c].mean() for c in range(4)}
    assert means[3] > 2 * means[2] and means[1] > 2 * means[2]
    # heart position varies from slice to slice
    centres = [np.argwhere(label[..., k] == 3).mean(0) for k in range(6)]
    assert np.ptp(np.array(centres), axis=0).max() > 0.2


def test_noise_and_bias_field():
    image, label = make_phantom_volume((96, 96, 4), 3)
    lv = image[..., 0][label[..., 0] == 3].astype(float)
    assert lv.std() > 0.02 * lv.mean()  # noisy, not piecewise constant
    body = image[..., 0][30:66, 20:30].astype(float)
    assert body.std() > 0


def test_anisotropic_affines(small_demo):
    zooms = [
        tuple(np.round(nib.load(small_demo / d / f"phantom_{i:03d}.nii.gz").header.get_zooms(), 3))
        for d, i in [("imagesTr", 0), ("imagesTr", 1), ("imagesTr", 2)]
    ]
    assert zooms[0] == (1.0, 1.0, 1.0)
    assert zooms[1] == (1.5, 1.5, 8.0)
    assert zooms[2] == (1.25, 1.25, 10.0)
    label_affine = nib.load(small_demo / "labelsTr" / "phantom_001.nii.gz").affine
    np.testing.assert_array_equal(label_affine, nib.load(small_demo / "imagesTr" / "phantom_001.nii.gz").affine)


def test_deterministic(tmp_path):
    a = make_demo_dataset(tmp_path / "a", 1, 1, 1, shape=(32, 32, 2), seed=5)
    b = make_demo_dataset(tmp_path / "b", 1, 1, 1, shape=(32, 32, 2), seed=5)
    c = make_demo_dataset(tmp_path / "c", 1, 1, 1, shape=(32, 32, 2), seed=6)
    for rel in ("imagesTr/phantom_000.nii.gz", "labelsTr/phantom_000.nii.gz", "imagesUnl/phantom_001.nii.gz"):
        np.testing.assert_array_equal(_load(a / rel), _load(b / rel))
    assert not np.array_equal(_load(a / "imagesTr/phantom_000.nii.gz"), _load(c / "imagesTr/phantom_000.nii.gz"))


def test_idempotent_and_regenerated_on_new_parameters(tmp_path):
    out = make_demo_dataset(tmp_path, 2, 2, 1, shape=(32, 32, 2))
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert make_demo_dataset(tmp_path, 2, 2, 1, shape=(32, 32, 2)) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamp
    # a removed file makes the dataset incomplete: it is rewritten
    (out / "imagesUnl" / "phantom_002.nii.gz").unlink()
    make_demo_dataset(tmp_path, 2, 2, 1, shape=(32, 32, 2))
    assert (out / "imagesUnl" / "phantom_002.nii.gz").is_file()
    # new parameters: regenerated, stale phantoms removed
    make_demo_dataset(tmp_path, 1, 1, 1, shape=(32, 32, 3))
    data = json.loads((out / "dataset.json").read_text())
    assert data["generator"]["shape"] == [32, 32, 3]
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == sorted(
        ["phantom_000.nii.gz"] * 2 + ["phantom_001.nii.gz", "phantom_002.nii.gz", "phantom_002.nii.gz"]
    )


def test_never_overwrites_a_foreign_dataset(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match=r"not made by make_demo_dataset"):
        make_demo_dataset(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_labeled": 0}, r"num_labeled must be an int >= 1"),
        ({"num_unlabeled": -1}, r"num_unlabeled must be an int >= 0"),
        ({"num_validation": 1.5}, r"num_validation must be an int >= 1"),
        ({"shape": (16, 64, 4)}, r"H, W >= 32"),
        ({"shape": (64, 64)}, r"shape must be \(H, W, D\)"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path, **kwargs)


def test_default_dataset_is_fast(tmp_path):
    start = time.perf_counter()
    out = make_demo_dataset(tmp_path)
    assert time.perf_counter() - start < 5.0
    data = json.loads((out / "dataset.json").read_text())
    assert (len(data["training"]), len(data["unlabeled"]), len(data["validation"])) == (4, 16, 4)
    assert _load(out / data["training"][0]["image"]).shape == (128, 128, 8)
