"""Image reconstruction loss of VQ-Seg's dual branch (L1)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._reduction import check_reduction, reduce

__all__ = ["reconstruction_l1_loss", "ReconstructionL1Loss"]


def reconstruction_l1_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """L1 distance between the reconstruction decoder's output and the input image.

    Args:
        reconstruction: ``(B, C, H, W)`` decoder output.
        target: ``(B, C, H, W)`` image it should reproduce (the network input, detached here).
        mask: optional ``(B, 1 or C, H, W)`` weights (1 = counted); ``"mean"`` then divides by the weight
            sum over the broadcast shape.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (element-wise ``(B, C, H, W)``).

    Returns:
        The loss in float32.

    Raises:
        ValueError: shape mismatch or unknown reduction.
    """
    check_reduction(reduction, "reconstruction_l1_loss")
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction_l1_loss: reconstruction {tuple(reconstruction.shape)} and target "
            f"{tuple(target.shape)} must have the same shape."
        )
    per_elem = F.l1_loss(reconstruction.float(), target.detach().float(), reduction="none")
    if mask is None:
        return reduce(per_elem, reduction)
    try:
        weights = mask.float().expand_as(per_elem)
    except RuntimeError as err:
        raise ValueError(
            f"reconstruction_l1_loss: mask {tuple(mask.shape)} does not broadcast to {tuple(per_elem.shape)}."
        ) from err
    per_elem = per_elem * weights
    if reduction == "mean":
        return per_elem.sum() / weights.sum().clamp_min(1e-12)
    return reduce(per_elem, reduction)


class ReconstructionL1Loss(nn.Module):
    """Stateless module form of :func:`reconstruction_l1_loss`:
    ``forward(reconstruction, target, mask=None)``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, "ReconstructionL1Loss")

    def forward(
        self, reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return reconstruction_l1_loss(reconstruction, target, mask, self.reduction)
