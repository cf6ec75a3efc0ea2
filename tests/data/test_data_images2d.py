"""2D image data sets (PNG / JPEG) through dataset.json: reading, grey conversion, label mapping, checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vqseg_bundle.data import DataIntegrityError, build_splits
from vqseg_bundle.data.images2d import check_label_mapping, to_grey
from vqseg_bundle.data.png_phantoms import PNG_LABEL_MAPPING, make_png_dataset

SIZE = (32, 32)


def _splits(root: Path, **kwargs):
    args = dict(labeled="all", image_size=SIZE, num_classes=2, label_mapping=PNG_LABEL_MAPPING)
    return build_splits(root, **{**args, **kwargs})


def test_png_dataset_loads_with_mapping_and_varying_sizes(tmp_path):
    make_png_dataset(tmp_path)
    splits = _splits(tmp_path)
    assert splits.format == "nifti"  # the dataset.json reader
    assert len(splits.labeled) == 4 and len(splits.unlabeled) == 4 and len(splits.validation) == 2
    assert tuple(splits.labeled.images.shape) == (4, 1, *SIZE)
    assert set(splits.labeled.labels.unique().tolist()) == {0, 1}
    # validation slices keep their own size (H, W, 1), labels mapped to 0 / 1, no physical spacing
    val = splits.validation[0]
    assert tuple(val["image"].shape) == (1, 40, 48, 1) and set(val["label"].unique().tolist()) == {0, 1}
    assert "spacing" not in val
    assert splits.validation[1]["image"].shape[1:3] == (52, 44)
    # each slice is its own case: the names are the file stems
    assert [v["name"] for v in splits.validation] == ["validation_000", "validation_001"]


def test_slice_matches_file_in_canonical_orientation(tmp_path):
    """The slice the network sees is the displayed image rotated by 180 degrees (the 2D "PL" canonical
    orientation of MONAI's (W, H) read), and the mask moves with it."""
    make_png_dataset(tmp_path, n_training=1, n_validation=1)
    splits = _splits(tmp_path)
    shown = np.asarray(Image.open(tmp_path / "labelsTr" / "validation_000.png")) // 255
    label = splits.validation[0]["label"][0, ..., 0].numpy()
    np.testing.assert_array_equal(label, shown[::-1, ::-1])
    image = np.asarray(Image.open(tmp_path / "imagesTr" / "validation_000.png")).astype(np.float32)
    np.testing.assert_allclose(
        splits.validation[0]["image"][0, ..., 0].numpy(), ((image - image.min()) / np.ptp(image))[::-1, ::-1], atol=1e-6
    )


def test_rgb_images_converted_deliberately(tmp_path):
    make_png_dataset(tmp_path, rgb_images=True)
    lum = _splits(tmp_path, color_to_grey="luminance")
    mean = _splits(tmp_path, color_to_grey="mean")
    assert tuple(lum.labeled.images.shape) == (4, 1, *SIZE)
    assert not np.allclose(lum.validation[0]["image"].numpy(), mean.validation[0]["image"].numpy())
    with pytest.raises(DataIntegrityError, match=r"imagesTr/training_000.png: .*colour image.*color_to_grey"):
        _splits(tmp_path, color_to_grey="error")


def test_to_grey_rules():
    grey = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    assert to_grey(grey, "error", "f.png").shape == (2, 3)
    same = np.repeat(grey, 3, axis=0)
    np.testing.assert_array_equal(to_grey(same, "error", "f.png"), grey[0])  # equal channels: no conversion
    rgba = np.concatenate([same, np.full_like(grey, 255)])
    np.testing.assert_array_equal(to_grey(rgba, "error", "f.png", label=True), grey[0])  # alpha dropped
    colour = np.stack([grey[0], grey[0] * 2, grey[0] * 0])
    np.testing.assert_allclose(to_grey(colour, "luminance", "f.png"), 0.299 * grey[0] + 0.587 * 2 * grey[0], rtol=1e-5)
    with pytest.raises(ValueError, match="f.png: a colour mask"):
        to_grey(colour, "luminance", "f.png", label=True)


def test_label_mapping_checked():
    assert check_label_mapping({"0": 0, "255": "1"}, 2) == {0: 0, 255: 1}
    assert check_label_mapping(None, 2) is None
    with pytest.raises(ValueError, match="outside 0..1"):
        check_label_mapping({0: 0, 255: 2}, 2)
    with pytest.raises(ValueError, match="integers"):
        check_label_mapping({"a": 0}, 2)


def test_mask_value_outside_mapping_names_the_file(tmp_path):
    make_png_dataset(tmp_path)
    mask = np.asarray(Image.open(tmp_path / "labelsTr" / "training_001.png")).copy()
    mask[0, 0] = 128
    Image.fromarray(mask).save(tmp_path / "labelsTr" / "training_001.png")
    with pytest.raises(DataIntegrityError, match=r"labelsTr/training_001.png: mask values \{128\} are not in"):
        _splits(tmp_path)


def test_without_mapping_255_is_out_of_range(tmp_path):
    make_png_dataset(tmp_path)
    with pytest.raises(DataIntegrityError, match=r"labelsTr/training_000.png: label values \{255\} are outside"):
        _splits(tmp_path, label_mapping=None)


def test_size_mismatch_names_both_files(tmp_path):
    make_png_dataset(tmp_path)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "labelsTr" / "training_002.png")
    with pytest.raises(
        DataIntegrityError, match=r"labelsTr/training_002.png: label shape \(10, 12\) does not match image shape"
    ) as err:
        _splits(tmp_path)
    assert "imagesTr/training_002.png" in str(err.value)


def test_unreadable_image_names_the_file(tmp_path):
    make_png_dataset(tmp_path)
    (tmp_path / "imagesUnl" / "unlabeled_001.png").write_bytes(b"not a png")
    with pytest.raises(DataIntegrityError, match=r"imagesUnl/unlabeled_001.png: unreadable image file"):
        _splits(tmp_path)


def test_test_split_validation_needs_labels(tmp_path):
    path = make_png_dataset(tmp_path)
    splits = _splits(tmp_path, validation_split="test")
    assert [v["name"] for v in splits.validation] == ["test_000", "test_001"]
    data = json.loads(path.read_text())
    data["test"] = [e["image"] for e in data["test"]]
    path.write_text(json.dumps(data))
    with pytest.raises(DataIntegrityError, match="'test' entries have no 'label'"):
        _splits(tmp_path, validation_split="test")
    with pytest.raises(ValueError, match="validation_split"):
        _splits(tmp_path, validation_split="train")
