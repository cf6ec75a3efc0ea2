"""A small CNN that tells which of the 8 in-plane dihedral transforms turned a slice away from the training
orientation (self-supervised: the labels are the transforms the trainer applied itself, no annotation).

Why written here: no MONAI / timm network is this size (a few hundred thousand weights, 64 x 64 input) with a
flattened (position-keeping) head; global average pooling would discard the very layout that tells a turn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["OrientationClassifier"]


def _stage(in_ch: int, out_ch: int) -> nn.Sequential:
    """conv 3x3 -> BN -> ReLU -> conv 3x3 stride 2 -> BN -> ReLU: halves the grid."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class OrientationClassifier(nn.Module):
    """Logits over the 8 dihedral transforms (:data:`vqseg_bundle.transforms.DIHEDRAL_TRANSFORMS` order).

    Args:
        in_channels: image channels.
        image_size: the square input size ``S`` (a multiple of ``2 ** len(channels)``).
        channels: output channels of each stride-2 stage.
        dropout: dropout before the linear head.

    Shapes: ``forward(x (N, in_channels, S, S)) -> (N, 8)``.

    Raises:
        ValueError: for an ``image_size`` the stages do not divide, or empty ``channels``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        channels: Sequence[int] = (16, 32, 64, 64),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
        stride = 2 ** len(channels)
        if int(image_size) < stride or int(image_size) % stride:
            raise ValueError(
                f"image_size must be a positive multiple of {stride} for {len(channels)} stages, got {image_size}"
            )
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        widths = [self.in_channels, *channels]
        self.features = nn.Sequential(*(_stage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        grid = self.image_size // stride
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(float(dropout)), nn.Linear(channels[-1] * grid * grid, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"OrientationClassifier expects (N, {self.in_channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        return self.head(self.features(x))
