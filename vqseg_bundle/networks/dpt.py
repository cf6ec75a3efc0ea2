"""DPT-style dense prediction head (Ranftl et al. 2021) over four ViT levels, as used by Depth Anything /
UniMatch V2 / VQ-Seg. No installed library ships it as a reusable head (timm has the backbone only), so it
is written here from the paper's description: reassemble (project + resample each level to strides 4, 8, 16,
32 of the token grid), a 3 x 3 conv to a common width, RefineNet-style fusion from deep to shallow, and a
small output head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DPTHead", "DPT_DEFAULTS"]

# (fusion width, per-level reassemble channels) per DINOv2 size, as in Depth Anything / UniMatch V2
DPT_DEFAULTS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "small": (64, (48, 96, 192, 384)),
    "base": (128, (96, 192, 384, 768)),
    "large": (256, (256, 512, 1024, 1024)),
    "giant": (384, (1536, 1536, 1536, 1536)),
}


class _ResidualConvUnit(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3 x 3 convs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """Fuse the coarser path with a lateral map, refine, upsample to ``size``, 1 x 1 conv."""

    def __init__(self, channels: int, has_lateral: bool) -> None:
        super().__init__()
        self.lateral = _ResidualConvUnit(channels) if has_lateral else None
        self.refine = _ResidualConvUnit(channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, lateral: Optional[torch.Tensor], size: List[int]) -> torch.Tensor:
        if lateral is not None and self.lateral is not None:
            x = x + self.lateral(lateral)
        x = self.refine(x)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """DPT head: four ``(B, in_channels, h, w)`` token maps -> ``(B, out_channels, H, W)``.

    Args:
        in_channels: ViT embedding width (the channels of every level).
        out_channels: classes (segmentation) or image channels (reconstruction).
        features: fusion width.
        level_channels: reassemble channels of the four levels (shallow to deep).

    ``forward(levels, out_size)``: level 0 is upsampled x4, level 1 x2, level 2 kept, level 3 downsampled x2
    (relative to the ``h x w`` token grid), fused deep to shallow, and the result is bilinearly resized to
    ``out_size``. Any grid size works (odd ones included): every fusion step resizes to the next level's size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: int = 64,
        level_channels: Sequence[int] = (48, 96, 192, 384),
    ) -> None:
        super().__init__()
        level_channels = [int(c) for c in level_channels]
        if len(level_channels) != 4:
            raise ValueError(f"DPTHead: level_channels must have 4 entries, got {level_channels}.")
        if int(features) < 1 or int(in_channels) < 1:
            raise ValueError(f"DPTHead: in_channels and features must be >= 1, got {in_channels}, {features}.")
        self.project = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in level_channels)
        self.resample = nn.ModuleList(
            [
                nn.ConvTranspose2d(level_channels[0], level_channels[0], 4, stride=4),
                nn.ConvTranspose2d(level_channels[1], level_channels[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(level_channels[3], level_channels[3], 3, stride=2, padding=1),
            ]
        )
        self.to_features = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in level_channels)
        self.fusion = nn.ModuleList(_FusionBlock(features, has_lateral=i < 3) for i in range(4))
        self.head = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(features, out_channels, 1)
        )

    def forward(self, levels: List[torch.Tensor], out_size: List[int]) -> torch.Tensor:
        if len(levels) != 4:
            raise ValueError(f"DPTHead: expected 4 feature levels, got {len(levels)}.")
        # written for TorchScript too: no zip(strict=) or comprehension over module lists, sizes as lists (the
        # four lengths are checked above and fixed by construction)
        maps: List[torch.Tensor] = []
        for i, (proj, res, feat) in enumerate(zip(self.project, self.resample, self.to_features)):  # noqa: B905
            maps.append(feat(res(proj(levels[i]))))
        # deep to shallow: fusion[3] takes the deepest map alone, the others add a lateral map
        path = self.fusion[3](maps[3], None, _size(maps[2]))
        path = self.fusion[2](path, maps[2], _size(maps[1]))
        path = self.fusion[1](path, maps[1], _size(maps[0]))
        path = self.fusion[0](path, maps[0], [2 * maps[0].shape[-2], 2 * maps[0].shape[-1]])
        out = self.head(path)
        return F.interpolate(out, size=[int(s) for s in out_size], mode="bilinear", align_corners=False)


def _size(x: torch.Tensor) -> List[int]:
    """``[h, w]`` of ``x (B, C, h, w)``."""
    return [x.shape[-2], x.shape[-1]]
