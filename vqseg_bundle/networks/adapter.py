"""Post-VQ Feature Adapter (PFA) of VQ-Seg."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PFAAdapter"]


class PFAAdapter(nn.Module):
    """Resize a post-VQ feature map to the foundation model's token grid, then a 1 x 1 conv to its channels.

    Args:
        in_channels: channels of the post-VQ map.
        out_channels: channels of the foundation-model features.
        mode: interpolation mode of the resize (``"bilinear"`` or ``"nearest"``, ``"area"``, ...).

    ``forward(x (B, in_channels, h, w), size: (h', w')) -> (B, out_channels, h', w')``. Resize and 1 x 1 conv
    commute, so the conv runs on the smaller of the two grids.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"PFAAdapter: channels must be >= 1, got in={in_channels}, out={out_channels}.")
        self.proj = nn.Conv2d(int(in_channels), int(out_channels), kernel_size=1)
        self.mode = mode

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        kwargs = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
        return F.interpolate(x, size=size, mode=self.mode, **kwargs)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"PFAAdapter: expected (B, {self.proj.in_channels}, h, w), got {tuple(x.shape)}.")
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"PFAAdapter: size must be (h, w) with positive entries, got {size}.")
        if size[0] * size[1] < x.shape[-2] * x.shape[-1]:
            return self._resize(self.proj(x), size)
        return self.proj(self._resize(x, size))
