"""Confidence-masked pseudo-label cross-entropy on hand-computed cases."""

import math

import pytest
import torch
from vqseg_bundle.losses import ConfidenceMaskedCrossEntropy, confidence_masked_cross_entropy, pseudo_labels_from_logits

# one image, 2 classes, 1 x 3 pixels; logits chosen so that softmax probabilities are easy to write down
LOGITS = torch.tensor([[[[0.0, math.log(3.0), 0.0]], [[0.0, 0.0, math.log(4.0)]]]])  # (1, 2, 1, 3)
LABELS = torch.tensor([[[0, 0, 1]]])
CE = torch.tensor([math.log(2.0), -math.log(3 / 4), -math.log(4 / 5)])  # -log p(label) per pixel


def test_all_pixels_kept_is_plain_mean_ce():
    res = confidence_masked_cross_entropy(LOGITS, LABELS, torch.ones(1, 1, 3), threshold=0.95)
    assert res.loss.item() == pytest.approx(CE.mean().item(), rel=1e-6)
    assert res.kept_ratio.item() == 1.0


def test_low_confidence_and_ignored_pixels_are_excluded():
    conf = torch.tensor([[[0.99, 0.5, 0.96]]])
    ignore = torch.tensor([[[False, False, True]]])
    res = confidence_masked_cross_entropy(LOGITS, LABELS, conf, threshold=0.95, ignore_mask=ignore)
    assert res.loss.item() == pytest.approx(CE[0].item(), rel=1e-6)  # only pixel 0 is kept
    assert res.kept_ratio.item() == pytest.approx(1 / 2)  # 1 kept of 2 valid
    valid = confidence_masked_cross_entropy(LOGITS, LABELS, conf, 0.95, ignore, denominator="valid")
    assert valid.loss.item() == pytest.approx(CE[0].item() / 2, rel=1e-6)
    total = confidence_masked_cross_entropy(LOGITS, LABELS, conf, 0.95, ignore, reduction="sum")
    assert total.loss.item() == pytest.approx(CE[0].item(), rel=1e-6)
    per_pixel = confidence_masked_cross_entropy(LOGITS, LABELS, conf, 0.95, ignore, reduction="none").loss
    torch.testing.assert_close(per_pixel, torch.tensor([[[CE[0].item(), 0.0, 0.0]]]))


def test_excluded_pixels_get_no_gradient_and_empty_mask_is_zero_not_nan():
    logits = LOGITS.clone().requires_grad_(True)
    conf = torch.tensor([[[0.99, 0.1, 0.1]]])
    confidence_masked_cross_entropy(logits, LABELS, conf, 0.95).loss.backward()
    assert logits.grad[..., 0].abs().sum() > 0
    assert logits.grad[..., 1:].abs().sum() == 0
    logits.grad = None
    res = confidence_masked_cross_entropy(logits, LABELS, torch.zeros(1, 1, 3), 0.95)
    res.loss.backward()
    assert res.loss.item() == 0.0 and torch.isfinite(logits.grad).all() and res.kept_ratio.item() == 0.0


def test_channel_axis_labels_and_out_of_range_labels_at_excluded_pixels():
    labels = torch.tensor([[[[0, 255, 1]]]])  # 255 at an ignored pixel must not break CE
    conf = torch.ones(1, 1, 1, 3)
    ignore = torch.tensor([[[0, 1, 0]]])
    res = confidence_masked_cross_entropy(LOGITS, labels, conf, 0.5, ignore_mask=ignore)
    assert res.loss.item() == pytest.approx((CE[0] + CE[2]).item() / 2, rel=1e-6)


def test_pseudo_labels_from_logits():
    labels, conf = pseudo_labels_from_logits(LOGITS)
    assert labels.tolist() == [[[0, 0, 1]]]
    torch.testing.assert_close(conf, torch.tensor([[[0.5, 0.75, 0.8]]]))


def test_module_form_and_validation():
    loss = ConfidenceMaskedCrossEntropy(threshold=0.7)
    assert loss(LOGITS, LABELS, torch.tensor([[[0.6, 0.8, 0.9]]])).loss.item() == pytest.approx(CE[1:].mean().item())
    with pytest.raises(ValueError, match="shape"):
        confidence_masked_cross_entropy(LOGITS, LABELS[..., :2], torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="threshold"):
        ConfidenceMaskedCrossEntropy(threshold=1.5)
    with pytest.raises(ValueError, match="reduction"):
        ConfidenceMaskedCrossEntropy(reduction="avg")
    with pytest.raises(ValueError, match="denominator"):
        confidence_masked_cross_entropy(LOGITS, LABELS, torch.ones(1, 1, 3), denominator="all")
