"""Confidence-masked pseudo-label cross-entropy (FixMatch / UniMatch unlabeled loss).

MONAI's ``MaskedLoss`` multiplies input and target by the mask, which is not a per-pixel confidence mask for
cross-entropy, so this is written here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._reduction import check_reduction
from .dice import masked_dice_loss

__all__ = [
    "MaskedCEResult",
    "pseudo_labels_from_logits",
    "confidence_masked_cross_entropy",
    "ConfidenceMaskedCrossEntropy",
    "PseudoLabelLoss",
]

DENOMINATORS = ("kept", "valid")


class MaskedCEResult(NamedTuple):
    """Result of :func:`confidence_masked_cross_entropy`.

    Attributes:
        loss: the reduced loss (scalar), or per-pixel ``(B, H, W)`` with zeros at excluded pixels.
        kept_ratio: scalar tensor (no gradient), kept pixels / valid pixels (1.0 when no pixel is valid):
            the share of pseudo-labels above the threshold, worth logging.
    """

    loss: torch.Tensor
    kept_ratio: torch.Tensor


def pseudo_labels_from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher pseudo-labels and confidences from logits.

    Args:
        logits: ``(B, C, *spatial)`` (any float dtype).

    Returns:
        ``(labels (B, *spatial) int64, confidence (B, *spatial) float32)``: argmax and max softmax
        probability, computed in float32 without gradient.
    """
    if logits.ndim < 2:
        raise ValueError(f"pseudo_labels_from_logits: expected logits (B, C, ...), got {tuple(logits.shape)}.")
    with torch.no_grad():
        conf, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
    return labels, conf


def _check_options(caller: str, threshold: float, reduction: str, denominator: str) -> None:
    """Validate the options shared by the function and module forms; errors name ``caller``."""
    check_reduction(reduction, caller)
    if denominator not in DENOMINATORS:
        raise ValueError(f"{caller}: denominator must be one of {DENOMINATORS}, got {denominator!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{caller}: threshold must be in [0, 1], got {threshold}.")


def confidence_masked_cross_entropy(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float = 0.95,
    ignore_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    denominator: str = "kept",
) -> MaskedCEResult:
    """Cross-entropy against pseudo-labels, only where the teacher is confident.

    A pixel is *valid* unless ``ignore_mask`` marks it (e.g. padding, or CutMix regions whose label is
    unknown), and *kept* when it is valid and ``confidence >= threshold``. Excluded pixels contribute
    nothing and receive no gradient.

    Args:
        logits: student logits ``(B, C, H, W)`` (or any ``(B, C, *spatial)``).
        pseudo_labels: ``(B, H, W)`` integer class indices (a singleton channel ``(B, 1, H, W)`` is accepted).
        confidence: ``(B, H, W)`` teacher confidence in [0, 1] (singleton channel accepted).
        threshold: keep pixels with ``confidence >= threshold``; 0 keeps every valid pixel.
        ignore_mask: optional ``(B, H, W)`` bool (True = ignore) or 0/1 tensor (1 = ignore).
        reduction: ``"mean"`` (see ``denominator``), ``"sum"`` over kept pixels, or ``"none"``: per-pixel
            ``(B, H, W)`` losses, zero where excluded.
        denominator: for ``"mean"``: ``"kept"`` divides by the number of kept pixels (the mean over kept
            pixels), ``"valid"`` by the number of valid pixels (UniMatch's choice: low-confidence pixels
            count as zero loss). A mean over zero pixels is 0 (with a zero gradient, never NaN).

    Returns:
        :class:`MaskedCEResult` ``(loss, kept_ratio)``.

    Raises:
        ValueError: mismatched shapes, threshold outside [0, 1], unknown reduction / denominator.
    """
    _check_options("confidence_masked_cross_entropy", threshold, reduction, denominator)
    if logits.ndim < 3:
        raise ValueError(f"confidence_masked_cross_entropy: expected logits (B, C, H, W), got {tuple(logits.shape)}.")
    target_shape = (logits.shape[0], *logits.shape[2:])

    def _squeeze(t: torch.Tensor, name: str) -> torch.Tensor:
        if t.ndim == logits.ndim and t.shape[1] == 1:
            t = t[:, 0]
        if tuple(t.shape) != target_shape:
            raise ValueError(
                f"confidence_masked_cross_entropy: {name} must have shape {target_shape} to match logits "
                f"{tuple(logits.shape)}, got {tuple(t.shape)}."
            )
        return t

    pseudo_labels = _squeeze(pseudo_labels, "pseudo_labels").long()
    confidence = _squeeze(confidence, "confidence")
    valid = torch.ones(target_shape, dtype=torch.bool, device=logits.device)
    if ignore_mask is not None:
        valid = ~_squeeze(ignore_mask, "ignore_mask").bool()
    kept = valid & (confidence >= threshold)

    # kept pixels may hold any label; excluded ones are set to 0 so CE never indexes out of range there
    safe_labels = torch.where(kept, pseudo_labels, torch.zeros_like(pseudo_labels))
    per_pixel = F.cross_entropy(logits.float(), safe_labels, reduction="none") * kept

    n_valid = valid.sum()
    n_kept = kept.sum()
    one = torch.ones((), dtype=torch.float32, device=logits.device)
    kept_ratio = torch.where(n_valid > 0, n_kept.float() / n_valid.clamp_min(1).float(), one).detach()
    if reduction == "none":
        return MaskedCEResult(per_pixel, kept_ratio)
    total = per_pixel.sum()
    if reduction == "sum":
        return MaskedCEResult(total, kept_ratio)
    denom = n_kept if denominator == "kept" else n_valid
    return MaskedCEResult(total / denom.clamp_min(1).to(total.dtype), kept_ratio)


class ConfidenceMaskedCrossEntropy(nn.Module):
    """Stateless module form of :func:`confidence_masked_cross_entropy` (configurable from YAML).

    ``forward(logits, pseudo_labels, confidence, ignore_mask=None) -> MaskedCEResult``.
    """

    def __init__(self, threshold: float = 0.95, reduction: str = "mean", denominator: str = "kept") -> None:
        super().__init__()
        _check_options("ConfidenceMaskedCrossEntropy", threshold, reduction, denominator)
        self.threshold = float(threshold)
        self.reduction = reduction
        self.denominator = denominator

    def forward(
        self,
        logits: torch.Tensor,
        pseudo_labels: torch.Tensor,
        confidence: torch.Tensor,
        ignore_mask: torch.Tensor | None = None,
    ) -> MaskedCEResult:
        return confidence_masked_cross_entropy(
            logits, pseudo_labels, confidence, self.threshold, ignore_mask, self.reduction, self.denominator
        )


class PseudoLabelLoss(nn.Module):
    """The loss of one student stream against (CutMixed) pseudo-labels: confidence-masked CE, Dice, or both.

    ``loss = ce_weight * CE + dice_weight * Dice`` where both see only the pixels with
    ``confidence >= threshold``: CE is :func:`confidence_masked_cross_entropy` (``denominator`` as there),
    Dice is :func:`~vqseg_bundle.losses.dice.masked_dice_loss` over the kept pixels (batch-level,
    background included, squared denominators: UniMatch medical's unlabeled loss).

    Args:
        ce_weight, dice_weight: weights of the two terms (>= 0, not both 0).
        threshold: confidence threshold in [0, 1].
        denominator: CE normalisation, ``"valid"`` (all pixels) or ``"kept"``.
        dice_batch: one Dice over the batch (True) or per sample.

    ``forward(logits (B, C, H, W), pseudo_labels (B, H, W), confidence (B, H, W)) -> MaskedCEResult``
    (``loss`` scalar, ``kept_ratio`` the share of pixels above the threshold).
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        threshold: float = 0.95,
        denominator: str = "valid",
        dice_batch: bool = True,
    ) -> None:
        super().__init__()
        _check_options("PseudoLabelLoss", threshold, "mean", denominator)
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight <= 0:
            raise ValueError(
                f"PseudoLabelLoss: ce_weight and dice_weight must be >= 0 and not both 0, got {ce_weight}, {dice_weight}."
            )
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.threshold = float(threshold)
        self.denominator = denominator
        self.dice_batch = bool(dice_batch)

    def forward(self, logits: torch.Tensor, pseudo_labels: torch.Tensor, confidence: torch.Tensor) -> MaskedCEResult:
        keep = confidence >= self.threshold
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight > 0:
            ce = confidence_masked_cross_entropy(
                logits, pseudo_labels, confidence, self.threshold, None, "mean", self.denominator
            )
            loss = loss + self.ce_weight * ce.loss
        if self.dice_weight > 0:  # checks the shapes itself
            loss = loss + self.dice_weight * masked_dice_loss(logits, pseudo_labels, keep, batch=self.dice_batch)
        # no ignore mask here, so every pixel is valid: the kept share is the mean of the mask
        return MaskedCEResult(loss, keep.float().mean().detach())
