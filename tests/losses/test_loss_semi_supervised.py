"""Masked batch Dice, the pseudo-label loss and the semi-supervised composition (vqseg_bundle.losses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vqseg_bundle.losses import (
    PseudoLabelLoss,
    SemiSupervisedLoss,
    SupervisedSegLoss,
    confidence_masked_cross_entropy,
    masked_dice_loss,
)


def _reference_dice(probs, labels, keep, num_classes, smooth=1e-5):
    """UniMatch medical's pseudo-label Dice, written out: per class over the kept pixels of the batch,
    squared denominators, background included."""
    total = 0.0
    for c in range(num_classes):
        p, t = probs[:, c][keep], (labels == c).float()[keep]
        total += 1 - (2 * (p * t).sum() + smooth) / ((p * p).sum() + (t * t).sum() + smooth)
    return total / num_classes


def test_masked_dice_matches_the_reference_and_ignores_masked_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (3, 8, 8), generator=g)
    keep = torch.rand(3, 8, 8, generator=g) > 0.4
    loss = masked_dice_loss(logits, labels, keep)
    ref = _reference_dice(torch.softmax(logits, 1), labels, keep, 4)
    assert torch.allclose(loss, ref, atol=1e-6)
    loss.backward()
    assert logits.grad[~keep.unsqueeze(1).expand_as(logits)].abs().max() == 0
    # labels at ignored pixels do not matter (MONAI's MaskedDiceLoss would count them as background)
    other = torch.where(keep, labels, (labels + 1) % 4)
    assert torch.allclose(masked_dice_loss(logits, other, keep), loss)
    # nothing kept: no loss, no NaN
    empty = masked_dice_loss(logits, labels, torch.zeros_like(keep))
    assert torch.isfinite(empty) and float(empty) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        masked_dice_loss(logits, labels[:, :4], keep)


def test_batch_dice_does_not_punish_a_class_missing_from_one_slice():
    """Per-sample Dice scores ~1 loss for any false positive on a slice without the class; batch Dice
    pools the batch, so the same prediction costs less (what made early labeled-only training collapse)."""
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1  # class 1 only in the first slice
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 0] = 4.0
    logits[:, 0, 2:6, 2:6] = 0.0
    logits[:, 1, 2:6, 2:6] = 4.0  # predicted in both slices
    per_sample = SupervisedSegLoss(lambda_ce=0.0, lambda_dice=1.0, include_background=False, batch=False)(
        logits, labels
    )
    batch = SupervisedSegLoss(lambda_ce=0.0, lambda_dice=1.0, include_background=False, batch=True)(logits, labels)
    assert float(per_sample) > float(batch) + 0.1


def test_pseudo_label_loss_terms():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    pl = torch.randint(0, 4, (2, 8, 8), generator=g)
    conf = torch.rand(2, 8, 8, generator=g)
    ce = PseudoLabelLoss(ce_weight=1.0, dice_weight=0.0, threshold=0.5)(logits, pl, conf)
    ref = confidence_masked_cross_entropy(logits, pl, conf, 0.5, denominator="valid")
    assert torch.allclose(ce.loss, ref.loss) and torch.allclose(ce.kept_ratio, ref.kept_ratio)
    dice = PseudoLabelLoss(ce_weight=0.0, dice_weight=1.0, threshold=0.5)(logits, pl, conf)
    assert torch.allclose(dice.loss, masked_dice_loss(logits, pl, conf >= 0.5))
    both = PseudoLabelLoss(ce_weight=0.5, dice_weight=2.0, threshold=0.5)(logits, pl, conf)
    assert torch.allclose(both.loss, 0.5 * ce.loss + 2.0 * dice.loss)
    with pytest.raises(ValueError, match="not both 0"):
        PseudoLabelLoss(ce_weight=0.0, dice_weight=0.0)
    with pytest.raises(ValueError, match="threshold"):
        PseudoLabelLoss(threshold=1.5)


def test_composition_weights_streams_and_rampup():
    g = torch.Generator().manual_seed(2)
    sup_logits, labels = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)

    def target():
        return (
            torch.randn(2, 4, 8, 8, generator=g),
            torch.randint(0, 4, (2, 8, 8), generator=g),
            torch.rand(2, 8, 8, generator=g),
        )

    s1, s2, fp = target(), target(), target()
    pl_loss = PseudoLabelLoss(ce_weight=0.0, dice_weight=1.0, threshold=0.3)
    loss = SemiSupervisedLoss(
        SupervisedSegLoss(),
        pl_loss,
        sup_weight=0.5,
        unsup_weight=0.5,
        strong_weight=0.5,
        fp_weight=0.5,
        rampup_iterations=10,
        rampup_shape="linear",
        align_weight=0.0,
    )
    assert loss.pseudo_label_streams == ("strong", "fp")
    out = loss(5, sup_logits, labels, strong=[s1, s2], fp=fp)
    l_s = (pl_loss(*s1).loss + pl_loss(*s2).loss) / 2
    l_fp = pl_loss(*fp).loss
    l_x = SupervisedSegLoss()(sup_logits, labels)
    # UniMatch: (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2, here with a ramp-up factor 0.5
    assert torch.allclose(out["loss"], 0.5 * l_x + 0.5 * 0.5 * (0.5 * l_s + 0.5 * l_fp), atol=1e-6)
    assert out["unsup_rampup"] == pytest.approx(0.5)
    assert torch.allclose(out["loss_unsup_strong"], l_s) and torch.allclose(out["loss_unsup_fp"], l_fp)
    assert 0.0 <= float(out["mask_ratio"]) <= 1.0
    # labeled-only: no stream, the total is the supervised term
    only = SemiSupervisedLoss(unsup_weight=0.0, align_weight=0.0)
    assert only.pseudo_label_streams == ()
    assert torch.allclose(only(0, sup_logits, labels, strong=[s1])["loss"], SupervisedSegLoss()(sup_logits, labels))
    for bad in (
        dict(fp_weight=-1.0),
        dict(align_temperature=0.0),
        dict(rampup_iterations=-1),
        dict(rampup_shape="step"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SemiSupervisedLoss(**bad)


def test_composition_reconstruction_alignment_and_vq_terms():
    x = torch.rand(2, 1, 8, 8)
    rec = x + 0.1
    loss = SemiSupervisedLoss(unsup_weight=0.0, recon_weight=2.0, align_weight=0.0, vq_weight=3.0)
    out = loss(
        0,
        torch.randn(2, 4, 8, 8),
        torch.zeros(2, 8, 8, dtype=torch.long),
        reconstructions=[(rec, x), (rec, x)],
        vq_losses=[torch.tensor(1.0), torch.tensor(3.0)],
    )
    assert torch.allclose(out["loss_rec"], torch.tensor(0.2), atol=1e-6)
    assert torch.allclose(out["loss_vq"], torch.tensor(2.0))
    assert torch.allclose(out["loss"], out["loss_sup"] + 2.0 * 0.2 + 3.0 * 2.0, atol=1e-5)
    feats = F.normalize(torch.randn(2, 8, 3, 3), dim=1)
    aligned = SemiSupervisedLoss(unsup_weight=0.0, align_weight=5.0)(
        0, torch.randn(2, 4, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long), aligned=(feats, feats)
    )
    assert "loss_align" in aligned and float(aligned["loss_align"]) >= 0
