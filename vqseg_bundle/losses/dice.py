"""Soft Dice with an ignore mask, over the whole batch: the pseudo-label Dice of UniMatch (medical).

Why written here: ``monai.losses.MaskedDiceLoss`` multiplies the *label map* by the mask before its
one-hot encoding, so an ignored pixel becomes a background target (and, with the background class
included, is counted); here ignored pixels are removed from every sum, for every class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_dice_loss"]


def masked_dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor | None = None,
    include_background: bool = True,
    squared: bool = True,
    batch: bool = True,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """``1 - Dice`` of ``softmax(logits)`` against integer labels, over the kept pixels only.

    Per class c: ``D_c = (2 sum p_c y_c + smooth) / (sum p_c^k + sum y_c^k + smooth)`` with ``k = 2`` when
    ``squared`` (UniMatch / SSL4MIS) else 1; sums run over the kept pixels of the whole batch (``batch``)
    or of each sample; the loss is ``1 - mean_c D_c`` (averaged over samples when not ``batch``).

    Args:
        logits: ``(B, C, H, W)`` (any ``(B, C, *spatial)``).
        labels: ``(B, H, W)`` or ``(B, 1, H, W)`` integer classes in ``[0, C)``.
        keep: ``(B, H, W)`` bool / 0-1 mask of the pixels that count (``None``: all). Pixels outside it get
            no gradient.
        include_background: average over class 0 too (UniMatch does).
        squared: squared probabilities and labels in the denominator.
        batch: one Dice per class over the batch (UniMatch) instead of one per sample.
        smooth: added to numerator and denominator (a class absent from prediction and target scores 1).

    Returns:
        Scalar loss (float32).
    """
    if logits.ndim < 3:
        raise ValueError(f"masked_dice_loss: expected logits (B, C, H, W), got {tuple(logits.shape)}.")
    if labels.ndim == logits.ndim:
        labels = labels[:, 0]
    spatial = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != spatial:
        raise ValueError(f"masked_dice_loss: labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}.")
    if keep is None:
        keep = torch.ones(spatial, dtype=torch.bool, device=logits.device)
    elif keep.ndim == logits.ndim:
        keep = keep[:, 0]
    if tuple(keep.shape) != spatial:
        raise ValueError(f"masked_dice_loss: keep {tuple(keep.shape)} does not match logits {tuple(logits.shape)}.")
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    weight = keep.unsqueeze(1).to(probs.dtype)
    safe = torch.where(keep.bool(), labels.long(), torch.zeros_like(labels, dtype=torch.long))
    target = F.one_hot(safe, num_classes).movedim(-1, 1).to(probs.dtype) * weight
    probs = probs * weight
    dims = tuple(range(2, logits.ndim))
    if batch:
        dims = (0, *dims)
    inter = (probs * target).sum(dims)
    if squared:
        denom = (probs * probs).sum(dims) + (target * target).sum(dims)
    else:
        denom = probs.sum(dims) + target.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    if not include_background:
        dice = dice[..., 1:]
    return 1.0 - dice.mean()
