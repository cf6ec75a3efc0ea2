"""U-Net decoder used for both segmentation and image reconstruction (VQ-Seg dual branch).

Built from MONAI's ``BasicUNet`` blocks (``UpCat``), which already pad odd sizes after upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
import torch.nn as nn
from monai.networks.nets.basic_unet import UpCat

__all__ = ["UNetDecoder"]


class UNetDecoder(nn.Module):
    """Decoder of an SSL4MIS / UniMatch-style 2D U-Net.

    Args:
        features: encoder widths, shallow to deep, e.g. ``(16, 32, 64, 128, 256)``.
        out_channels: output channels (classes for segmentation, image channels for reconstruction).
        act, norm, bias: MONAI layer factories' arguments.
        dropout: dropout inside the decoder blocks (SSL4MIS: 0).
        upsample: ``"nontrainable"`` (1 x 1 conv + bilinear, SSL4MIS's default block), ``"deconv"``
            (transposed conv) or ``"pixelshuffle"``.
        head_kernel_size: kernel of the final conv (3 as in SSL4MIS).

    ``forward(features: list[(B, features[l], H / 2^l, W / 2^l)]) -> (B, out_channels, H, W)`` (TorchScript-able).
    """

    def __init__(
        self,
        features: Sequence[int],
        out_channels: int,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        norm: str | tuple = ("batch", {"affine": True}),
        bias: bool = True,
        dropout: float = 0.0,
        upsample: str = "nontrainable",
        head_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ValueError(f"UNetDecoder: needs at least 2 levels, got features={features}.")
        self.ups = nn.ModuleList(
            UpCat(2, features[l], features[l - 1], features[l - 1], act, norm, bias, dropout, upsample=upsample)
            for l in range(len(features) - 1, 0, -1)
        )
        self.head = nn.Conv2d(features[0], int(out_channels), head_kernel_size, padding=head_kernel_size // 2)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.ups) + 1:
            raise ValueError(f"UNetDecoder: expected {len(self.ups) + 1} feature maps, got {len(features)}.")
        x = features[-1]
        # deep to shallow; indexed rather than zip(ups, reversed(skips)): TorchScript has neither zip(strict=)
        # nor reversed() of a list (the lengths are checked above)
        n = len(features)
        for i, up in enumerate(self.ups):
            x = up(x, features[n - 2 - i])
        return self.head(x)
