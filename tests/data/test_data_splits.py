"""build_splits: the training configs' entry point (items, resizing, transforms, workers, demo data)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.transforms import Lambdad, RandFlipd
from vqseg_bundle.data import InMemorySliceDataset, SemiSupervisedSplits, build_splits, resize_slices
from vqseg_bundle.data.nifti import load_nifti_splits


@pytest.fixture(scope="module")
def demo_splits(tmp_path_factory) -> SemiSupervisedSplits:
    from vqseg_bundle.data.phantoms import make_demo_dataset

    root = make_demo_dataset(tmp_path_factory.mktemp("demo_splits"), 3, 4, 2, shape=(48, 40, 4), seed=1)
    return build_splits(str(root), labeled=2, image_size=(32, 32))


def test_items_follow_the_contract(demo_splits):
    item = demo_splits.labeled[0]
    assert set(item) == {"image", "label"}
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 32, 32) and item["label"].dtype == torch.int64
    unlabeled = demo_splits.unlabeled[0]
    assert set(unlabeled) == {"image"} and unlabeled["image"].shape == (1, 32, 32)
    assert len(demo_splits.labeled) == 2 * 4 and len(demo_splits.unlabeled) == (1 + 4) * 4
    assert len(demo_splits.validation) == 2
    val = demo_splits.validation[0]
    # the phantoms are NIfTI files, so the voxel size comes along (mm, slice axis last)
    assert set(val) == {"image", "label", "name", "spacing"} and val["name"] == "phantom_007"
    assert val["spacing"].shape == (3,) and bool((val["spacing"] > 0).all())
    # original in-plane size, in the canonical orientation ("RAS" phantoms of (48, 40, 4) become (40, 48, 4))
    assert val["image"].shape == val["label"].shape == (1, 40, 48, 4)
    assert val["image"].dtype == torch.float32 and val["label"].dtype == torch.int64
    assert set(torch.unique(val["label"]).tolist()) == {0, 1, 2, 3}


def test_contiguous_tensors(demo_splits):
    assert demo_splits.labeled.images.shape == (8, 1, 32, 32) and demo_splits.labeled.images.is_contiguous()
    assert demo_splits.labeled.labels.shape == (8, 1, 32, 32)
    assert demo_splits.unlabeled.labels is None
    # items are copies: writing into one never changes the dataset
    item = demo_splits.labeled[0]
    item["image"].fill_(-5)
    assert demo_splits.labeled.images[0].min() >= 0


def test_summary_and_patients(demo_splits):
    text = demo_splits.summary()
    assert "labeled: 8 slices from 2 patient(s)" in text
    assert "unlabeled: 20 slices from 5 patient(s)" in text
    assert "validation: 2 volumes from 2 patient(s)" in text
    assert demo_splits.patients()["labeled"] == ["phantom_000", "phantom_001"]


def test_resize_once_image_nearest_or_bilinear_label_nearest(nifti_factory, tmp_path):
    root = nifti_factory(tmp_path / "d", shape=(16, 12, 3))
    raw = load_nifti_splits(root, labeled="all", normalization="minmax")
    same = build_splits(str(root), labeled="all", image_size=(12, 16))  # (16, 12, 3) reoriented: (12, 16, 3)
    np.testing.assert_array_equal(same.labeled.images[:, 0].numpy(), np.stack(raw.labeled_images))
    np.testing.assert_array_equal(same.labeled.labels[:, 0].numpy(), np.stack(raw.labeled_labels))
    double = build_splits(str(root), labeled="all", image_size=(24, 32), image_resize_mode="bilinear")
    # nearest-exact upsampling by 2 repeats every label pixel
    expected = np.stack(raw.labeled_labels).repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(double.labeled.labels[:, 0].numpy(), expected)
    # bilinear: new values in between, same range
    assert double.labeled.images.min() >= 0 and double.labeled.images.max() <= 1
    assert len(torch.unique(double.labeled.images)) > len(np.unique(np.stack(raw.labeled_images)))
    # nearest-exact (the default, as UniMatch): images sampled at the label's points, no new values
    nearest = build_splits(str(root), labeled="all", image_size=(24, 32))
    expected = np.stack(raw.labeled_images).repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(nearest.labeled.images[:, 0].numpy(), expected)
    with pytest.raises(ValueError, match="mode"):
        build_splits(str(root), labeled="all", image_size=(24, 32), image_resize_mode="bicubic")


def test_resize_slices_of_different_shapes():
    slices = [np.ones((4, 6)), np.zeros((6, 4)), np.full((4, 6), 2.0)]
    out = resize_slices(slices, (8, 8), "bilinear")
    assert out.shape == (3, 1, 8, 8)
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([1.0, 0.0, 2.0]))  # order kept across shape groups


def test_transform_is_applied(demo_splits):
    flip = RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=1)
    flipped = demo_splits.labeled.with_transform(flip)
    assert flipped.images.data_ptr() == demo_splits.labeled.images.data_ptr()  # shared, not copied
    a, b = demo_splits.labeled[3], flipped[3]
    torch.testing.assert_close(torch.as_tensor(b["image"]), a["image"].flip(-1))
    torch.testing.assert_close(torch.as_tensor(b["label"]), a["label"].flip(-1))
    assert demo_splits.labeled.transform is None


def test_build_splits_transform_arguments(small_demo):
    mark = Lambdad(keys="image", func=lambda x: x + 100.0)
    splits = build_splits(str(small_demo), labeled=1, image_size=(16, 16), unlabeled_transform=mark)
    assert splits.unlabeled[0]["image"].min() >= 100 and splits.labeled[0]["image"].max() <= 1


def test_several_workers(demo_splits):
    loader = torch.utils.data.DataLoader(demo_splits.labeled, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(4, 1, 32, 32)] * 2
    torch.testing.assert_close(torch.cat([b["image"] for b in batches]), demo_splits.labeled.images)
    torch.testing.assert_close(torch.cat([b["label"] for b in batches]), demo_splits.labeled.labels.long())


def test_demo_default_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    splits = build_splits("demo", image_size=(64, 64))
    assert os.path.isfile(tmp_path / ".cache" / "demo_data" / "dataset.json")
    # the default labeled subset "labeled_3_cases": 3 of the 4 labeled phantoms, 8 slices each
    assert len(splits.labeled) == 24 and len(splits.unlabeled) == (1 + 16) * 8 and len(splits.validation) == 4
    assert splits.validation[0]["image"].shape == (1, 128, 128, 8)


def test_demo_in_cache_dir(tmp_path):
    splits = build_splits("", cache_dir=str(tmp_path / "cache"), image_size=(16, 16), labeled="all")
    assert (tmp_path / "cache" / "dataset.json").is_file() and len(splits.labeled) == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset_format": "dicom"}, r"dataset_format must be one of"),
        ({"image_size": (0, 8)}, r"image_size must be two positive integers"),
        ({"image_size": (8, 8, 8)}, r"image_size must be two positive integers"),
        ({"num_classes": 1}, r"num_classes must be an int >= 2"),
        ({"normalization": "std"}, r"normalization must be one of"),
        ({"labeled": True}, r"labeled must be"),
    ],
)
def test_bad_arguments(small_demo, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_splits(str(small_demo), **kwargs)


def test_forced_format_mismatch(small_demo):
    with pytest.raises(ValueError, match=r"dataset_format='acdc_h5' but there is no train_slices\.list"):
        build_splits(str(small_demo), dataset_format="acdc_h5")


def test_dataset_argument_validation():
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, H, W\)"):
        InMemorySliceDataset(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor"):
        InMemorySliceDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"transform must be callable"):
        InMemorySliceDataset(torch.zeros(2, 1, 4, 4), transform="flip")
    with pytest.raises(IndexError):
        InMemorySliceDataset(torch.zeros(2, 1, 4, 4))[2]


def test_tiny_acdc_through_build_splits(tiny_acdc):
    splits = build_splits(str(tiny_acdc), labeled="labeled_2_cases", image_size=(16, 16))
    assert splits.format == "acdc_h5"
    assert len(splits.labeled) == 12 and len(splits.unlabeled) == 18 and len(splits.validation) == 4
    assert splits.validation[0]["image"].shape == (1, 20, 24, 4)
    assert splits.labeled.patients() == ["patient009", "patient003"]


def test_validation_fingerprint_covers_names_and_contents_not_the_folder(demo_splits, tmp_path):
    """Issue 23 item 3: what a validation score was measured on, recorded in models/model.json. The same files read
    from another folder compare equal; one voxel, one label or one name changed does not."""
    import shutil

    from vqseg_bundle.data import validation_fingerprint

    fp = demo_splits.validation_fingerprint()
    assert fp["volumes"] == len(demo_splits.validation) and len(fp["sha256"]) == 64
    assert fp["data"] == os.path.abspath(demo_splits.source)
    copy = tmp_path / "copy"
    shutil.copytree(os.path.dirname(demo_splits.source), copy)
    moved = build_splits(str(copy), labeled=2, image_size=(32, 32)).validation_fingerprint()
    assert moved["sha256"] == fp["sha256"] and moved["data"] != fp["data"]
    items = [dict(v) for v in demo_splits.validation]
    assert validation_fingerprint(items, demo_splits.source) == fp
    voxel = [dict(v) for v in items]
    voxel[0]["image"] = voxel[0]["image"].clone()
    voxel[0]["image"][0, 0, 0, 0] += 0.5
    label = [dict(v) for v in items]
    label[-1]["label"] = label[-1]["label"].clone()
    label[-1]["label"][0, 1, 1, 0] = 3 - label[-1]["label"][0, 1, 1, 0]
    renamed = [dict(v) for v in items]
    renamed[0]["name"] = "other_case"
    for changed in (voxel, label, renamed, items[1:]):
        assert validation_fingerprint(changed, demo_splits.source)["sha256"] != fp["sha256"]
