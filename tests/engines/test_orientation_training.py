"""Training of the orientation classifier (vqseg_bundle.engines.orientation_training): the self-supervised views,
learning on images with an unmistakable orientation, the validation record, and the files training writes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from vqseg_bundle.engines import (
    fit_orientation_classifier,
    random_orientation_views,
    train_orientation_classifier,
    validate_orientation_classifier,
)
from vqseg_bundle.inferers import load_orientation_classifier
from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS

S = 16
NETWORK = {"in_channels": 1, "image_size": S, "channels": [8, 16], "dropout": 0.0}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, S, S): an L-shaped mark (a long bar down, a short bar right) at a random place in the top-left half,
    plus noise: which of the 8 transforms turned one is never ambiguous."""
    g = torch.Generator().manual_seed(seed)
    out = torch.rand((n, 1, S, S), generator=g) * 0.1
    for i in range(n):
        r, c = (int(v) for v in torch.randint(1, 5, (2,), generator=g))
        out[i, 0, r : r + 9, c : c + 2] = 1.0
        out[i, 0, r + 7 : r + 9, c : c + 6] = 1.0
    return out


def test_views_without_augmentation_are_the_drawn_transforms():
    images = _images(12)
    views, labels = random_orientation_views(
        images,
        torch.Generator().manual_seed(3),
        max_rotation_degrees=0.0,
        scale_range=0.0,
        max_shift=0.0,
        gamma_range=0.0,
    )
    assert views.shape == images.shape and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 8
    for image, view, k in zip(images, views, labels, strict=True):
        assert torch.allclose(view, DIHEDRAL_TRANSFORMS[int(k)].apply(image), atol=1e-5)
    again, labels_again = random_orientation_views(images, torch.Generator().manual_seed(3), 0.0, 0.0, 0.0, 0.0)
    assert torch.equal(labels, labels_again) and torch.equal(views, again)


def test_views_with_augmentation_differ_but_keep_the_label_range():
    images = _images(64)
    views, labels = random_orientation_views(images, torch.Generator().manual_seed(0))
    plain = torch.stack([DIHEDRAL_TRANSFORMS[int(k)].apply(x) for x, k in zip(images, labels, strict=True)])
    assert not torch.allclose(views, plain)
    assert set(labels.tolist()) == set(range(8))  # 64 uniform draws cover the 8


def _volumes(n: int, depth: int = 4) -> list[dict]:
    return [{"image": _images(depth, seed=100 + i)[:, 0].permute(1, 2, 0)[None], "name": f"vol{i}"} for i in range(n)]


def test_training_learns_the_orientation_of_asymmetric_images():
    classifier = train_orientation_classifier(_images(256), NETWORK, iterations=200, batch_size=32, lr=0.01)
    record = validate_orientation_classifier(classifier, _volumes(4))
    assert record["volumes"] == 4
    assert record["consistency"] == 1.0 and record["identity_accuracy"] == 1.0, record
    untrained = train_orientation_classifier(_images(16), NETWORK, iterations=1, batch_size=4, lr=1e-6)
    assert validate_orientation_classifier(untrained, _volumes(4))["consistency"] < 1.0


def test_training_rejects_bad_images():
    with pytest.raises(ValueError, match="N >= 1"):
        train_orientation_classifier(torch.zeros(0, 1, S, S), NETWORK, iterations=1)
    with pytest.raises(ValueError, match="channels"):
        train_orientation_classifier(torch.zeros(4, 3, S, S), NETWORK, iterations=1)


def _splits() -> SimpleNamespace:
    return SimpleNamespace(
        labeled=SimpleNamespace(images=_images(8, seed=1)),
        unlabeled=SimpleNamespace(images=_images(120, seed=2)),
        validation=_volumes(3),
    )


def test_fit_writes_weights_and_record_and_restores_the_random_state(tmp_path):
    path = tmp_path / "models" / "orientation.pt"
    path.parent.mkdir()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    record = fit_orientation_classifier(_splits(), path, NETWORK, {"iterations": 150, "batch_size": 32, "lr": 0.01})
    assert torch.equal(torch.rand(3), expected)  # the segmentation training after it draws the same numbers
    saved = json.loads((tmp_path / "models" / "orientation.json").read_text())
    assert saved == record and saved["network"] == NETWORK and saved["validation"]["volumes"] == 3
    assert saved["reliable"] == (saved["validation"]["consistency"] >= 0.9)
    assert saved["inference"] == {"min_confidence": 0.5, "max_slices": None}  # read by evaluation / inference
    classifier, _ = load_orientation_classifier(path)
    assert classifier(torch.zeros(2, 1, S, S)).shape == (2, 8)
    assert not list(path.parent.glob("*.tmp*"))  # written atomically, nothing left behind
    # resume keeps the classifier (the string form of the command line included); no resume trains again
    before = path.stat().st_mtime_ns
    assert fit_orientation_classifier(_splits(), path, NETWORK, {"iterations": 1}, reuse="true") == record
    assert path.stat().st_mtime_ns == before
    fit_orientation_classifier(_splits(), path, NETWORK, {"iterations": 1}, reuse="false")
    assert json.loads((tmp_path / "models" / "orientation.json").read_text())["training"] == {"iterations": 1}


def test_fit_needs_training_images(tmp_path):
    empty = SimpleNamespace(
        labeled=SimpleNamespace(images=torch.zeros(0, 1, S, S)),
        unlabeled=SimpleNamespace(images=torch.zeros(0, 1, S, S)),
        validation=[],
    )
    with pytest.raises(ValueError, match="no images"):
        fit_orientation_classifier(empty, tmp_path / "orientation.pt", NETWORK, {"iterations": 1})
    assert not (tmp_path / "orientation.pt").exists()
