"""Supervised segmentation loss for labeled images: MONAI's Dice + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceCELoss

__all__ = ["SupervisedSegLoss"]


class SupervisedSegLoss(nn.Module):
    """``lambda_ce * CE + lambda_dice * Dice`` on softmax logits (the UniMatch / SSL4MIS U-Net recipe is
    ``(CE + Dice) / 2``, the defaults). Wraps ``monai.losses.DiceCELoss`` and accepts integer label maps with
    or without a channel axis.

    Args:
        lambda_ce: weight of the cross-entropy term, >= 0.
        lambda_dice: weight of the Dice term, >= 0.
        include_background: whether the Dice term averages over the background class too.
        reduction: ``"mean"`` or ``"sum"`` (DiceCELoss supports no ``"none"`` reduction).
        smooth: Dice smoothing added to numerator and denominator.
        batch: one Dice per class over the whole batch (UniMatch / SSL4MIS) instead of one per sample and
            class. Per-sample Dice scores a class absent from a slice as ~0 for any false positive, which on
            ACDC (many slices without RV or Myo) pulls early training towards all-background.
        squared_pred: squared probabilities and labels in the Dice denominator (UniMatch / SSL4MIS).

    ``forward(logits (B, C, H, W), labels (B, H, W) or (B, 1, H, W) int) -> scalar``.
    """

    def __init__(
        self,
        lambda_ce: float = 0.5,
        lambda_dice: float = 0.5,
        include_background: bool = True,
        reduction: str = "mean",
        smooth: float = 1e-5,
        batch: bool = True,
        squared_pred: bool = True,
    ) -> None:
        super().__init__()
        if lambda_ce < 0 or lambda_dice < 0:
            raise ValueError(f"SupervisedSegLoss: weights must be >= 0, got ce={lambda_ce}, dice={lambda_dice}.")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"SupervisedSegLoss: reduction must be 'mean' or 'sum', got {reduction!r}.")
        self.loss = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            reduction=reduction,
            lambda_ce=lambda_ce,
            lambda_dice=lambda_dice,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=batch,
            squared_pred=squared_pred,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == logits.ndim - 1:
            labels = labels[:, None]
        if labels.shape[0] != logits.shape[0] or labels.shape[2:] != logits.shape[2:] or labels.shape[1] != 1:
            raise ValueError(
                f"SupervisedSegLoss: labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}; "
                "expected (B, H, W) or (B, 1, H, W)."
            )
        return self.loss(logits.float(), labels)
