"""The 8 in-plane dihedral transforms of an image (4 quarter turns x mirror) and their inverses.

One element ``(quarter_turns, mirrored)`` is ``torch.rot90(x, quarter_turns, dims)`` (counter-clockwise in the
``(dims[0], dims[1])`` plane, as ``torch.rot90``) followed, when ``mirrored``, by a flip of ``dims[0]``: exact,
no resampling, on any rectangular grid (a quarter turn swaps the two sizes). Used by the test-time
augmentation of :class:`vqseg_bundle.inferers.ResizedSliceInferer` (``dihedral_tta``) and by
``scripts/benchmark_dihedral.py``, which scores a model on inputs in each of the 8 orientations.

Why written here: MONAI's ``Rotate90`` / ``Flip`` act on one channel-first item; these act on any tensor
layout (slice batches ``(N, C, H, W)``, volumes ``(C, H, W, D)``) given the two in-plane dims.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["DihedralTransform", "DIHEDRAL_TRANSFORMS", "dihedral_transform", "in_plane_dims"]


class DihedralTransform(NamedTuple):
    """One in-plane dihedral transform: ``quarter_turns`` (0..3) counter-clockwise, then a mirror when ``mirrored``."""

    quarter_turns: int
    mirrored: bool

    @property
    def name(self) -> str:
        """``"identity"``, ``"rot90"``, ``"rot180"``, ``"rot270"``, and ``"<that>+mirror"`` (``"mirror"`` alone)."""
        turn = "identity" if self.quarter_turns == 0 else f"rot{90 * self.quarter_turns}"
        if not self.mirrored:
            return turn
        return "mirror" if self.quarter_turns == 0 else f"{turn}+mirror"

    def apply(self, x: torch.Tensor, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
        """``x`` transformed in the ``dims`` plane (any shape; the two sizes swap for an odd number of turns)."""
        y = torch.rot90(x, self.quarter_turns, dims=tuple(dims)) if self.quarter_turns else x
        return torch.flip(y, dims=(dims[0],)) if self.mirrored else y

    def invert(self, y: torch.Tensor, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
        """The inverse of :meth:`apply`: ``invert(apply(x)) == x``."""
        x = torch.flip(y, dims=(dims[0],)) if self.mirrored else y
        return torch.rot90(x, -self.quarter_turns, dims=tuple(dims)) if self.quarter_turns else x


#: the 8 transforms, identity first: rotations 0, 90, 180, 270 degrees, each without and with the mirror
DIHEDRAL_TRANSFORMS: tuple[DihedralTransform, ...] = tuple(
    DihedralTransform(k, m) for m in (False, True) for k in range(4)
)


def dihedral_transform(name: str) -> DihedralTransform:
    """The transform called ``name`` (see :attr:`DihedralTransform.name`).

    Raises:
        ValueError: for an unknown name, listing the 8.
    """
    for t in DIHEDRAL_TRANSFORMS:
        if t.name == name:
            return t
    raise ValueError(f"unknown dihedral transform {name!r}; one of {[t.name for t in DIHEDRAL_TRANSFORMS]}")


def in_plane_dims(slice_axis: int, spatial_ndim: int = 3) -> tuple[int, int]:
    """The two in-plane dims of a channel-first item ``(C, *spatial)``.

    Args:
        slice_axis: the spatial axis slices are taken along (``-3..2``; ignored for 2D items).
        spatial_ndim: 3 for volumes ``(C, H, W, D)``, 2 for images ``(C, H, W)``.

    Raises:
        ValueError: for a slice axis outside the volume's axes or an item that is neither 2D nor 3D.
    """
    if spatial_ndim == 2:
        return 1, 2
    if spatial_ndim != 3:
        raise ValueError(f"items must be (C, H, W) images or (C, H, W, D) volumes, got {spatial_ndim} spatial axes")
    if not -3 <= int(slice_axis) <= 2:
        raise ValueError(f"slice_axis must be in -3..2, got {slice_axis}")
    axes = [a for a in range(3) if a != int(slice_axis) % 3]
    return 1 + axes[0], 1 + axes[1]
