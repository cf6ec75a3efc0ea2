"""Patch-wise InfoNCE between adapted post-VQ features and frozen foundation-model features (VQ-Seg PFA).

No library ships a patch-wise (dense, same-image negatives) InfoNCE, so it is written here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._reduction import check_reduction, reduce

__all__ = ["patch_infonce_loss", "PatchInfoNCELoss"]


def patch_infonce_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 0.1,
    reduction: str = "mean",
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch-wise InfoNCE with cosine similarity.

    For image b and patch n, the anchor is the student feature ``s[b, :, n]``; the positive is the teacher
    (foundation-model) feature at the same location ``t[b, :, n]``; the negatives are the teacher features at
    every other location of the same image. With cosine similarities ``S[b, n, m] = <s_bn, t_bm> / T`` (unit
    vectors), the per-patch loss is ``-log softmax_m(S[b, n, :])[n]``. The teacher is detached (frozen FM).

    Args:
        student: ``(B, C, h, w)`` adapter output (the PFA adapter already resized it to the FM grid).
        teacher: ``(B, C, h, w)`` foundation-model features.
        temperature: > 0; the paper leaves it open, 0.1 is this bundle's default.
        reduction: ``"mean"`` over patches (and images), ``"sum"``, or ``"none"`` giving ``(B, h * w)``.
        valid_mask: optional ``(B, h, w)`` bool, True where a patch takes part (as anchor and as negative);
            ``None`` = all patches. Excluded anchors give 0 and are left out of ``"mean"``.

    Returns:
        The loss, scalar or ``(B, h * w)``. Computed in float32; memory ``O(B (h w)^2)``.

    Raises:
        ValueError: shape mismatch, fewer than 2 patches, non-positive temperature, unknown reduction.
    """
    check_reduction(reduction, "patch_infonce_loss")
    if student.ndim != 4 or student.shape != teacher.shape:
        raise ValueError(
            "patch_infonce_loss: student and teacher must both be (B, C, h, w) of the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"patch_infonce_loss: temperature must be > 0, got {temperature}.")
    b, c, h, w = student.shape
    n = h * w
    if n < 2:
        raise ValueError(f"patch_infonce_loss: needs at least 2 patches per image for negatives, got {h}x{w}.")
    s = F.normalize(student.float().reshape(b, c, n), dim=1)
    t = F.normalize(teacher.detach().float().reshape(b, c, n), dim=1)
    logits = torch.einsum("bcn,bcm->bnm", s, t) / temperature  # (B, N anchors, N candidates)
    if valid_mask is not None:
        if valid_mask.shape != (b, h, w):
            raise ValueError(f"patch_infonce_loss: valid_mask must be {(b, h, w)}, got {tuple(valid_mask.shape)}.")
        valid = valid_mask.reshape(b, n).bool()
        # negatives restricted to valid patches; rows of invalid anchors stay unmasked (finite) and are
        # zeroed below, so an image without valid patches gives 0 and no NaN gradient
        logits = logits.masked_fill(valid[:, :, None] & ~valid[:, None, :], float("-inf"))
    target = torch.arange(n, device=student.device).expand(b, n)
    per_patch = F.cross_entropy(logits.reshape(b * n, n), target.reshape(-1), reduction="none").reshape(b, n)
    if valid_mask is None:
        return reduce(per_patch, reduction)
    per_patch = torch.where(valid, per_patch, torch.zeros_like(per_patch))
    if reduction == "mean":
        return per_patch.sum() / valid.sum().clamp_min(1)
    return reduce(per_patch, reduction)


class PatchInfoNCELoss(nn.Module):
    """Stateless module form of :func:`patch_infonce_loss`: ``forward(student, teacher, valid_mask=None)``."""

    def __init__(self, temperature: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction, "PatchInfoNCELoss")
        if temperature <= 0:
            raise ValueError(f"PatchInfoNCELoss: temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.reduction = reduction

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, valid_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return patch_infonce_loss(student, teacher, self.temperature, self.reduction, valid_mask)
