"""Patch-wise InfoNCE on hand-computed cases."""

import math

import pytest
import torch
from vqseg_bundle.losses import PatchInfoNCELoss, patch_infonce_loss


def _maps(vectors):
    """(N, C) vectors -> one image (1, C, 1, N)."""
    return torch.tensor(vectors, dtype=torch.float32).t()[None, :, None, :]


def test_orthogonal_matching_patches():
    t = 0.5
    s = _maps([[1.0, 0.0], [0.0, 1.0]])
    # each anchor: positive cosine 1, one negative cosine 0 -> -log(e^{1/T} / (e^{1/T} + e^0))
    expected = math.log(1 + math.exp(-1 / t))
    assert patch_infonce_loss(s, s.clone(), temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_cosine_is_scale_invariant_and_uses_same_location_positive():
    s = _maps([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    teacher = _maps([[5.0, 0.0], [0.0, 0.1], [-1.0, -1.0]])
    t = 0.1
    per_patch = patch_infonce_loss(s, teacher, temperature=t, reduction="none")[0]
    # anchor 2 = (1, 1)/sqrt2; candidates cos: (1/sqrt2, 1/sqrt2, -1); positive is the third (cos -1)
    c = 1 / math.sqrt(2)
    logits = torch.tensor([c, c, -1.0]) / t
    assert per_patch[2].item() == pytest.approx((torch.logsumexp(logits, 0) - logits[2]).item(), rel=1e-5)
    scaled = patch_infonce_loss(3 * s, 0.5 * teacher, temperature=t, reduction="none")
    torch.testing.assert_close(scaled[0], per_patch)


def test_negatives_come_from_the_same_image_only_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    teacher = torch.randn(2, 4, 3, 3, requires_grad=True)
    base = patch_infonce_loss(s, teacher, reduction="none")
    other = teacher.detach().clone()
    other[1] = torch.randn(4, 3, 3)
    changed = patch_infonce_loss(s, other, reduction="none")
    torch.testing.assert_close(changed[0], base[0])
    assert not torch.allclose(changed[1], base[1])
    base.mean().backward()
    assert teacher.grad is None and s.grad is not None
    assert patch_infonce_loss(s, teacher, reduction="sum").item() == pytest.approx(base.sum().item(), rel=1e-5)


def test_valid_mask_restricts_anchors_and_negatives():
    s = _maps([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[[True, True, False]]])
    t = 0.5
    # patch 2 is excluded: two patches remain, the orthogonal case
    expected = math.log(1 + math.exp(-1 / t))
    assert patch_infonce_loss(s, s, t, valid_mask=mask).item() == pytest.approx(expected, rel=1e-6)
    none_valid = patch_infonce_loss(s, s, t, valid_mask=torch.zeros(1, 1, 3, dtype=torch.bool))
    assert none_valid.item() == 0.0


def test_validation():
    with pytest.raises(ValueError, match="same shape"):
        patch_infonce_loss(torch.randn(1, 2, 2, 2), torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="at least 2 patches"):
        patch_infonce_loss(torch.randn(1, 2, 1, 1), torch.randn(1, 2, 1, 1))
    with pytest.raises(ValueError, match="temperature"):
        PatchInfoNCELoss(temperature=0)
