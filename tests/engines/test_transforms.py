"""Weak / strong augmentation pipelines and batch CutMix."""

from __future__ import annotations

import pytest
import torch
from monai.utils import set_determinism
from vqseg_bundle.transforms import BatchCutMix, labeled_transforms, random_box_masks, unlabeled_transforms


def test_unlabeled_views_are_aligned_intensity_copies():
    set_determinism(0)
    image = torch.rand(1, 24, 20)
    # without intensity transforms the strong views equal the weak (geometrically transformed) view
    no_strong = dict(contrast_prob=0.0, blur_prob=0.0, noise_prob=0.0)
    out = unlabeled_transforms(weak=dict(rotate_prob=1.0, flip_prob=1.0), strong=no_strong)({"image": image})
    assert set(out) == {"image", "image_s1", "image_s2"}
    assert not torch.allclose(out["image"], image)  # weak view is augmented
    assert torch.equal(out["image_s1"], out["image"]) and torch.equal(out["image_s2"], out["image"])
    # with intensity transforms the two strong views differ from each other
    all_strong = dict(contrast_prob=1.0, blur_prob=1.0, noise_prob=1.0)
    out = unlabeled_transforms(strong=all_strong)({"image": image})
    for k in ("image", "image_s1", "image_s2"):
        assert out[k].shape == (1, 24, 20) and out[k].dtype == torch.float32
    assert not torch.allclose(out["image_s1"], out["image_s2"])


def test_labeled_transform_keeps_label_values():
    set_determinism(1)
    label = torch.zeros(1, 32, 32, dtype=torch.long)
    label[:, 8:20, 10:24] = 3
    label[:, 12:16, 12:16] = 1
    out = labeled_transforms(rotate_prob=1.0, zoom_prob=1.0)({"image": label.float() / 3, "label": label})
    assert out["label"].dtype == torch.int64 and out["label"].shape == (1, 32, 32)
    assert set(out["label"].unique().tolist()) <= {0, 1, 3}  # nearest interpolation: no new classes


def test_invalid_augmentation_arguments():
    with pytest.raises(ValueError, match="rotate_prob"):
        labeled_transforms(rotate_prob=1.5)
    with pytest.raises(ValueError, match="must not set"):
        unlabeled_transforms(weak={"keys": ("image",)})


def test_box_masks_area_and_probability():
    g = torch.Generator().manual_seed(0)
    boxes = random_box_masks(2000, (40, 50), prob=0.5, area_range=(0.02, 0.4), generator=g)
    areas = boxes.float().mean(dim=(1, 2))
    applied = areas > 0
    assert 0.45 < applied.float().mean() < 0.55
    assert areas[applied].min() >= 0.01 and areas[applied].max() <= 0.41
    # each mask is one axis-aligned rectangle
    b = boxes[applied][0]
    rows, cols = b.any(1).nonzero().flatten(), b.any(0).nonzero().flatten()
    assert b[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


@pytest.mark.parametrize("mode", ["box", "monai"])
def test_cutmix_moves_targets_with_the_image(mode):
    # images carry their sample index, so a mixed pixel reveals its source; targets must agree everywhere
    b, h, w = 8, 16, 16
    ids = torch.arange(b).view(b, 1, 1, 1).float().expand(b, 1, h, w).clone()
    labels = ids[:, 0].long() * 10
    conf = ids[:, 0] / 100
    cm = BatchCutMix(mode=mode, prob=1.0)
    g = torch.Generator().manual_seed(3)
    mixed, (lab_m, conf_m) = cm(ids, [labels, conf], generator=g)
    assert lab_m.dtype == torch.long and conf_m.dtype == conf.dtype
    assert torch.equal(lab_m, mixed[:, 0].long() * 10)
    assert torch.allclose(conf_m, mixed[:, 0] / 100)
    assert (mixed != ids).any()


def test_cutmix_none_and_invalid():
    x = torch.rand(4, 1, 8, 8)
    out, (t,) = BatchCutMix(mode="none")(x, [x[:, 0]])
    assert out is x
    with pytest.raises(ValueError, match="mode"):
        BatchCutMix(mode="mixup")
    with pytest.raises(ValueError, match="target 0"):
        BatchCutMix()(x, [torch.rand(3, 8, 8)])


def test_cutmix_with_a_partner_batch_and_deferred_targets():
    """UniMatch V1 mixes each sample with the same index of a second batch; draw + mix gives the same result as
    one call, so pseudo-labels computed after the student's forward can follow the boxes."""
    b, h, w = 6, 16, 16
    ids = torch.arange(b).view(b, 1, 1, 1).float().expand(b, 1, h, w).clone()
    partner = ids + 100
    cm = BatchCutMix(prob=1.0)
    mixed, (lab,) = cm(
        ids, [ids[:, 0].long()], generator=torch.Generator().manual_seed(4), partner=(partner, [partner[:, 0].long()])
    )
    inside = mixed[:, 0] >= 100
    assert inside.any(1).any(1).all()  # every sample got a box (prob 1) ...
    assert torch.equal(mixed[:, 0][inside], (ids[:, 0] + 100)[inside])  # ... filled from its own partner
    assert torch.equal(lab, mixed[:, 0].long())
    g = torch.Generator().manual_seed(4)
    d = cm.draw(b, (h, w), g, second_batch=True)
    assert d.perm is None and torch.equal(cm.mix(d, ids, partner), mixed)
    # in-batch draws equal the one-call form too
    one, _ = cm(ids, [], generator=torch.Generator().manual_seed(5))
    d = cm.draw(b, (h, w), torch.Generator().manual_seed(5))
    assert torch.equal(cm.mix(d, ids), one)
    with pytest.raises(ValueError, match="partner"):
        cm.mix(d, ids, partner)
    with pytest.raises(ValueError, match="partner batch"):
        cm(ids, [], partner=(partner[:3], []))
